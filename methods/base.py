"""The base of every method plugin: a frozen dataclass whose fields are the method's options."""

from __future__ import annotations

import difflib
import inspect
import weakref
from abc import ABC, abstractmethod
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from torch import Tensor

from saliency.errors import InvalidOptionError, accepted

if TYPE_CHECKING:
    from typing_extensions import Self

    from saliency.engine import Engine, Share
    from saliency.forward_args import ForwardArgs
    from saliency.targets import Target

OutputSpace = Literal["input", "layer"]
# Options every method takes, handled by explain() and the engine rather than the method.
COMMON_OPTIONS = (
    "batch_size",
    "create_graph",
    "precision",
    "compile",
    "memory_budget",
    "forward_args",
)

_ATTACHED: dict[int, dict[str, Tensor]] = {}


@dataclass(frozen=True)
class Method(ABC):
    """A saliency method. Subclasses are frozen dataclasses; their fields are the options.

    Class attributes:
        output: ``"input"`` for maps shaped like the inputs ``(N, C, H, W)``; ``"layer"`` for
            maps of a hooked layer upsampled to ``(N, 1, H, W)`` (Grad-CAM family).
        paper: the reference, shown by the CLI and the gallery.
        derivative_order: the highest derivative of the model one attribution needs (0 for
            perturbation methods: no backward pass, apart from the one-point gradient probe
            of an automatic layer search; 1 for gradient methods, 2 for Integrated Hessians);
            differentiating the attributions again (``create_graph``, e.g. explanation
            fragility) needs one more.
        supports_create_graph: whether the attributions can be differentiated
            (``create_graph=True``; not for e.g. a path chosen by ranking gradients);
            :func:`saliency.explain` refuses it before any work otherwise.
        compiles: whether ``compile=True`` compiles the method's gradient passes (False where
            they must run eagerly, e.g. propagation rules that a compiled graph would bypass).
        needs_module: the method hooks or inspects the model's layers, so the model must be an
            ``nn.Module`` (layer methods need one too, whatever this flag says).

    Sharing a pass: a *one-pass* method, whose attributions come from a single forward and
    backward of the inputs themselves, opts into sharing that pass with other methods
    (:func:`saliency.explain_many`) by returning a :class:`~saliency.engine.Share` from
    :meth:`share`: what it needs from the pass (``layer=None``: ∂score/∂inputs; a module: that
    layer's activations and ∂score/∂activations), a ``contribution`` turning its view of an
    evaluated chunk into per-sample values, and a ``finish`` turning their sums into the
    attributions. Its :meth:`attribute` is then ``engine.share_pass(inputs, target,
    [self.share(engine, inputs)])[0]``, so that the shared and the separate results are the
    same computation. Methods that do not opt in (the default: ``share`` returns ``None``) run
    their own :meth:`attribute`, also inside :func:`~saliency.explain_many`.
    """

    output: ClassVar[OutputSpace] = "input"
    paper: ClassVar[str] = ""
    derivative_order: ClassVar[int] = 1
    supports_create_graph: ClassVar[bool] = True
    needs_module: ClassVar[bool] = False
    compiles: ClassVar[bool] = True

    @classmethod
    def create(cls, **options: Any) -> Self:
        """Build the method from keyword options, rejecting names it does not accept."""
        names = cls.option_names()
        unknown = sorted(set(options) - set(names))
        if unknown:
            close = difflib.get_close_matches(unknown[0], [*names, *COMMON_OPTIONS], n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            own = (
                f"accepted: {accepted(names)} and the common options"
                if names
                else f"{cls.__name__} has no options of its own; it accepts the common options"
            )
            raise InvalidOptionError(
                f"{cls.__name__} has no option {unknown[0]!r}{hint}; {own} "
                f"{accepted(COMMON_OPTIONS)}"
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

    def resolved_options(self, engine: Engine, inputs: Tensor) -> dict[str, Any]:
        """The options as a call on ``inputs`` used them (``Explanation.options``), e.g. an
        automatic layer by its name; by default :meth:`options`."""
        return self.options()

    @abstractmethod
    def attribute(self, engine: Engine, inputs: Tensor, target: Target) -> Tensor:
        """Raw, signed attributions for ``inputs`` (see :attr:`output` for the shape)."""

    @classmethod
    def shares_pass(cls) -> bool:
        """Whether the method opts into a shared pass: it defines :meth:`share`, and no subclass
        replaced :meth:`attribute` without replacing ``share`` (the inherited share would
        describe the parent's attributions)."""
        owners = [
            next(c for c in cls.__mro__ if attribute in vars(c))
            for attribute in ("share", "attribute")
        ]
        return owners[0] is not Method and issubclass(owners[0], owners[1])

    def share(self, engine: Engine, inputs: Tensor) -> Share | None:
        """What this method takes from a single pass shared with other one-pass methods, or
        ``None`` (the default) when it runs its own passes (see the class docstring).

        Called inside the evaluation (model in eval mode) before the shared pass; it may
        resolve what the pass needs (e.g. an automatic layer), but runs no gradient pass.
        """
        return None

    def extras(
        self, engine: Engine, inputs: Tensor, target: Target, attributions: Tensor
    ) -> dict[str, Tensor]:
        """Optional per-sample diagnostics computed after :meth:`attribute` (none by default)."""
        return {}

    def check_forward_args(self, forward_args: ForwardArgs) -> None:
        """Raise, before any work, if the method cannot pass these extra model inputs on. By
        default every form is fine: the engine slices them with the points."""
        return None


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
