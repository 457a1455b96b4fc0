"""The base of every method plugin: a frozen dataclass whose fields are the method's options."""

from __future__ import annotations

import inspect
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


@dataclass(frozen=True)
class Method(ABC):
    """A saliency method. Subclasses are frozen dataclasses; their fields are the options.

    Class attributes:
        output: ``"input"`` for maps shaped like the inputs ``(N, C, H, W)``; ``"layer"`` for
            maps of a hooked layer upsampled to ``(N, 1, H, W)`` (Grad-CAM family).
        paper: the reference, shown by the CLI and the gallery.
        derivative_order: the highest derivative of the model one attribution needs (0 for
            forward-only methods such as attention rollout, 1 for gradient methods, 2 for
            Integrated Hessians); differentiating the attributions again (``create_graph``,
            e.g. explanation fragility) needs one more.
    """

    output: ClassVar[OutputSpace] = "input"
    paper: ClassVar[str] = ""
    derivative_order: ClassVar[int] = 1

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
    def applies_to(cls, model: object) -> bool:
        """Whether the method can explain ``model``, from its structure without running it
        (attention methods need attention layers). Runs over "every method" skip the rest."""
        return True

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
