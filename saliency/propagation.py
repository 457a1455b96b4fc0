r"""Modified backward rules (guided backpropagation, DeconvNet, ...), scoped to one block.

A *propagation rule* keeps the forward value of some torch functions and replaces their backward
pass. :func:`propagation` applies rules inside a ``with`` block through a
``torch.overrides.TorchFunctionMode``: every call of a ruled function (``F.relu`` and the other
ReLU spellings for the ReLU rules) is routed through a custom ``autograd.Function`` whose
backward is the rule's. Nothing is attached to the model — no module hooks, no swapped modules —
so the model is exactly as before afterwards, also when it raises, and the rules see every use:

* functional calls (``F.relu``, ``torch.relu``, ``Tensor.relu``) as well as ``nn.ReLU`` modules
  (whose ``forward`` calls ``F.relu``);
* in-place calls (``relu_``, ``F.relu(x, inplace=True)``, ``nn.ReLU(inplace=True)``): the input is
  still overwritten, as the model expects;
* one module (or function) used several times: each use records its own backward node.

captum's ``GuidedBackprop``/``Deconvolution`` hook ``nn.ReLU`` modules instead, so they miss
functional ReLUs. Torch function modes are thread-local, so other threads running the same model
at the same time are unaffected. A rule applies to the calls made while the block is active; the
backward pass may run later (the recorded nodes keep their rule).

The rules are thread-local: ``nn.DataParallel`` over several GPUs runs its replicas in other
threads (the propagation methods refuse it). Not intercepted: ReLUs written as ``clamp(min=0)``,
``F.threshold`` or ``torch.maximum(x, 0)``, ReLU6/Hardtanh (as in captum, whose rules only
replace ``nn.ReLU``), raw ``torch.ops.aten`` calls, TorchScript modules and ``torch.compile``
graphs (methods using rules run the model eagerly).

Further rules (e.g. the LRP ε/γ/z⁺ rules of linear layers) implement :class:`Rule`: the torch
functions they govern and how to evaluate one call with the modified backward;
:class:`ActivationRule` is the shortcut for elementwise activations.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.overrides import TorchFunctionMode

from saliency.errors import InvalidOptionError, accepted

RELU_FUNCTIONS: frozenset[Callable[..., Any]] = frozenset(
    {F.relu, F.relu_, torch.relu, torch.relu_, Tensor.relu, Tensor.relu_}
)
"""Every Python-level spelling of ReLU (``nn.ReLU.forward`` calls ``F.relu``)."""
INPLACE_RELU: frozenset[Callable[..., Any]] = frozenset({F.relu_, torch.relu_, Tensor.relu_})


@runtime_checkable
class Rule(Protocol):
    """A modified backward pass for a set of torch functions."""

    @property
    def functions(self) -> frozenset[Callable[..., Any]]:
        """The torch functions (as seen by ``__torch_function__``) this rule governs."""
        ...

    def apply(
        self, function: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        """``function(*args, **kwargs)``'s value, recorded with the rule's backward."""
        ...


class ActivationRule(ABC):
    """A rule for ReLU: the forward value is ReLU's, the backward is :meth:`backward`.

    Subclasses define ``backward(grad_output, output) -> grad_input``, written with
    differentiable torch operations so that ``create_graph=True`` can differentiate it again.
    """

    functions: ClassVar[frozenset[Callable[..., Any]]] = RELU_FUNCTIONS

    @abstractmethod
    def backward(self, grad_output: Tensor, output: Tensor) -> Tensor:
        """∂L/∂input given ∂L/∂output and the forward output (``output > 0`` ⇔ ``input > 0``)."""

    def apply(
        self, function: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        value = args[0] if args else kwargs.get("input")
        if not isinstance(value, Tensor):
            return function(*args, **kwargs)
        return _RuledActivation.apply(value, self, relu_is_inplace(function, args, kwargs))


def relu_is_inplace(
    function: Callable[..., Any], args: tuple[Any, ...], kwargs: Mapping[str, Any]
) -> bool:
    """Whether a call of one of :data:`RELU_FUNCTIONS` writes into its input."""
    return function in INPLACE_RELU or bool(
        args[1] if function is F.relu and len(args) > 1 else kwargs.get("inplace", False)
    )


class _RuledActivation(torch.autograd.Function):
    """ReLU forward; backward by ``rule.backward`` (the output is saved: it gives the mask)."""

    @staticmethod
    def forward(ctx: Any, value: Tensor, rule: ActivationRule, inplace: bool) -> Tensor:
        if inplace:
            ctx.mark_dirty(value)
            output = value.clamp_(min=0)
        else:
            output = torch.relu(value)
        ctx.rule = rule
        ctx.save_for_backward(output)
        return output

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor, None, None]:
        (output,) = ctx.saved_tensors
        return ctx.rule.backward(grad_output, output), None, None


class PlainReLU(ActivationRule):
    r"""The ordinary ReLU derivative: :math:`g_{in} = g_{out} \cdot 1[x > 0]` (for tests and
    for composing rules that change other functions only)."""

    def backward(self, grad_output: Tensor, output: Tensor) -> Tensor:
        return grad_output * (output > 0)


class GuidedReLU(ActivationRule):
    r"""Guided backpropagation: only positive gradients through active units,
    :math:`g_{in} = \max(0,\ g_{out} \cdot 1[x > 0])` (Springenberg et al. 2015)."""

    def backward(self, grad_output: Tensor, output: Tensor) -> Tensor:
        return (grad_output * (output > 0)).clamp(min=0)


class DeconvReLU(ActivationRule):
    r"""DeconvNet: the ReLU of the gradient, whatever the forward input,
    :math:`g_{in} = \max(0,\ g_{out})` (Zeiler & Fergus 2014)."""

    def backward(self, grad_output: Tensor, output: Tensor) -> Tensor:
        return grad_output.clamp(min=0)


RULES: dict[str, Rule] = {}
"""Named rules, for methods that name the rules they apply (see :func:`register_rule`)."""


def register_rule(name: str, rule: Rule) -> Rule:
    """Register ``rule`` under ``name``; raises :class:`InvalidOptionError` on a taken name."""
    if name in RULES:
        raise InvalidOptionError(f"a propagation rule named {name!r} is already registered")
    if not isinstance(rule, Rule):
        raise TypeError(f"{rule!r} is not a propagation rule (needs .functions and .apply)")
    RULES[name] = rule
    return rule


def get_rule(name: str) -> Rule:
    """The rule registered under ``name``."""
    if name not in RULES:
        raise InvalidOptionError(
            f"unknown propagation rule {name!r}; accepted: {accepted(sorted(RULES))}"
        )
    return RULES[name]


register_rule("relu", PlainReLU())
register_rule("guided_relu", GuidedReLU())
register_rule("deconv_relu", DeconvReLU())


class _RuleMode(TorchFunctionMode):
    """Routes the calls of ruled functions to their rule (on the entering thread only)."""

    def __init__(self, by_function: Mapping[Callable[..., Any], Rule]) -> None:
        super().__init__()
        self.by_function = by_function

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        # Inside this handler the mode is off, so the rule's own torch calls are not rerouted.
        rule = self.by_function.get(func)
        if rule is None:
            return func(*args, **(kwargs or {}))
        return rule.apply(func, args, kwargs or {})


@contextmanager
def propagation(*rules: Rule | str) -> Iterator[None]:
    """Apply propagation rules (objects or registered names) to the calls made in the block.

    Example::

        with propagation("guided_relu"):
            grads = torch.autograd.grad(model(x)[:, t].sum(), x)

    Raises:
        InvalidOptionError: an unknown rule name, or two rules governing the same function.
    """
    by_function: dict[Callable[..., Any], Rule] = {}
    for given in rules:
        rule = get_rule(given) if isinstance(given, str) else given
        for function in rule.functions:
            if function in by_function and by_function[function] is not rule:
                raise InvalidOptionError(
                    f"propagation rules {by_function[function]!r} and {rule!r} both govern "
                    f"{getattr(function, '__qualname__', function)}; give one rule per function"
                )
            by_function[function] = rule
    # The `with` statement pops the mode in every case: normal exit, exception, interrupt.
    with _RuleMode(by_function):
        yield
