"""The base of every method plugin: a frozen dataclass whose fields are the method's options."""

from __future__ import annotations

import inspect
import weakref
from abc import ABC, abstractmethod
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from torch import Tensor

from saliency.errors import InvalidOptionError, accepted

if TYPE_CHECKING:
    from typing_extensions import Self

    from saliency.engine import Engine
    from saliency.targets import Target

OutputSpace = Literal["input", "layer"]

_ATTACHED: dict[int, dict[str, Tensor]] = {}


@dataclass(frozen=True)
class Method(ABC):
    """A saliency method. Subclasses are frozen dataclasses; their fields are the options.

    Class attributes:
        output: ``"input"`` for maps shaped like the inputs ``(N, C, H, W)``; ``"layer"`` for
            maps of a hooked layer upsampled to ``(N, 1, H, W)`` (Grad-CAM family).
        paper: the reference, shown by the CLI and the gallery.
        derivative_order: the highest derivative of the model one attribution needs (1 for
            gradient methods, 2 for Integrated Hessians); differentiating the attributions
            again (``create_graph``, e.g. explanation fragility) needs one more.
        supports_create_graph: False for methods whose attributions have no useful derivative
            (e.g. a path chosen by ranking gradients); they refuse ``create_graph=True``.
    """

    output: ClassVar[OutputSpace] = "input"
    paper: ClassVar[str] = ""
    derivative_order: ClassVar[int] = 1
    supports_create_graph: ClassVar[bool] = True

    @classmethod
    def create(cls, **options: Any) -> Self:
        """Build the method from keyword options, rejecting names it does not accept."""
        names = cls.option_names()
        unknown = sorted(set(options) - set(names))
        if unknown:
            raise InvalidOptionError(
                f"{cls.__name__} has no option {unknown[0]!r}; accepted: {accepted(names)} and "
                "the common options 'batch_size', 'create_graph', 'precision'"
            )
        return cls(**options)

    @classmethod
    def option_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls) if f.init)

    @classmethod
    def summary(cls) -> str:
        """The first line of the class docstring."""
        return (inspect.getdoc(cls) or cls.__name__).splitlines()[0]

    def options(self) -> dict[str, Any]:
        """The option values of this instance, by name."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.init}

    @abstractmethod
    def attribute(self, engine: Engine, inputs: Tensor, target: Target) -> Tensor:
        """Raw, signed attributions for ``inputs`` (see :attr:`output` for the shape)."""

    def extras(
        self, engine: Engine, inputs: Tensor, target: Target, attributions: Tensor
    ) -> dict[str, Tensor]:
        """Optional per-sample diagnostics computed after :meth:`attribute` (none by default)."""
        return {}


def attach_extras(attributions: Tensor, extras: dict[str, Tensor]) -> Tensor:
    """Keep diagnostics computed together with ``attributions`` (e.g. the passes an adaptive
    rule used) for :meth:`Method.extras`, which receives the same tensor; returns it.

    Kept by the tensor's identity until :func:`attached_extras` takes them or the tensor is freed.
    """
    key = id(attributions)
    _ATTACHED[key] = extras
    weakref.finalize(attributions, _ATTACHED.pop, key, None)
    return attributions


def attached_extras(attributions: Tensor) -> dict[str, Tensor]:
    """The diagnostics :func:`attach_extras` kept for ``attributions`` (empty if none)."""
    return _ATTACHED.pop(id(attributions), {})
