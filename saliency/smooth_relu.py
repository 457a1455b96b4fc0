r"""A reversible ReLU → Softplus(β) transform of a model, for second-order analysis.

.. math:: \mathrm{softplus}_\beta(x) = \tfrac{1}{\beta} \log\big(1 + e^{\beta x}\big)
          \xrightarrow[\beta \to \infty]{} \max(0, x)

ReLU networks are piecewise linear, so their input Hessian is zero almost everywhere and the
gradient map is piecewise constant: Hessian-vector products, Integrated Hessians and
explanation-fragility attacks see nothing. Dombrowski et al. (2019), "Explanations can be
manipulated and geometry is to blame", NeurIPS, arXiv:1906.07983, analyse and attack ReLU
networks through this β-smoothed surrogate.

What is replaced, while the transform is active:

* every ``nn.ReLU`` submodule (found through the parents' ``_modules``, so shared and nested
  ones too) is swapped, by attribute, for a :class:`SoftplusReLU` with the same ``inplace``
  flag; the original module objects are put back on restore;
* functional uses inside ``forward`` — ``F.relu`` (also ``inplace=True``), ``F.relu_``,
  ``torch.relu``, ``torch.relu_``, ``Tensor.relu`` and ``Tensor.relu_`` — are intercepted by the
  propagation mechanism (:mod:`saliency.propagation`) with :class:`SoftplusRule`. Its torch
  function mode is entered only around the ``forward`` of the model's modules (each module's
  ``forward`` is wrapped by an instance attribute, removed on restore), so nothing outside the
  model changes, and since torch function modes are thread-local, other threads running other
  code are unaffected.

Limitations: ReLUs written as ``clamp(min=0)``, ``F.threshold``, ``torch.maximum(x, 0)`` or raw
``torch.ops.aten.relu`` calls, ReLU6/Hardtanh, TorchScript modules and graphs compiled before the
transform are not intercepted; hooks registered on the original ReLU modules do not fire while
they are swapped out. Any thread that calls the model while the transform is active sees the
smooth model (the transform modifies the model in place).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from saliency.errors import InvalidOptionError

# Functional ReLUs are intercepted by the propagation mechanism, with a Softplus rule.
from saliency.propagation import RELU_FUNCTIONS, propagation, relu_is_inplace
from saliency.validation import require_float

_MISSING = object()


def softplus(x: Tensor, beta: float, inplace: bool = False) -> Tensor:
    """Softplus(β) of ``x``; ``inplace`` writes the result into ``x`` like ``relu_`` does."""
    if not inplace:
        return F.softplus(x, beta=beta)
    # Softplus needs its input for backward: compute it from a copy, then overwrite x.
    return x.copy_(F.softplus(x.clone(), beta=beta))


class SoftplusReLU(nn.Softplus):
    """``nn.Softplus(β)`` standing in for an ``nn.ReLU``; keeps its ``inplace`` flag."""

    def __init__(self, beta: float, inplace: bool = False) -> None:
        super().__init__(beta=beta)
        self.inplace = inplace

    def forward(self, input: Tensor) -> Tensor:
        return softplus(input, self.beta, self.inplace)

    def extra_repr(self) -> str:
        return f"beta={self.beta}, inplace={self.inplace}"


class SoftplusRule:
    """The propagation rule (:class:`saliency.propagation.Rule`) that evaluates functional ReLU
    calls as Softplus(β): forward value and backward both those of Softplus."""

    functions = RELU_FUNCTIONS

    def __init__(self, beta: float) -> None:
        self.beta = beta

    def apply(
        self, function: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        value = args[0] if args else kwargs.get("input")
        if not isinstance(value, Tensor):
            return function(*args, **kwargs)
        return softplus(value, self.beta, relu_is_inplace(function, args, kwargs))


class SmoothReLU:
    """Handle of an active ReLU → Softplus(β) transform; see :func:`smooth_relu`.

    Attributes:
        model: the transformed model.
        beta: the Softplus sharpness β.
        replaced: dotted names of the ``nn.ReLU`` modules that were swapped out.
    """

    def __init__(self, model: nn.Module, beta: float) -> None:
        self.model = model
        self.beta = float(beta)
        self.replaced: list[str] = []
        self._swapped: list[tuple[nn.Module, str, nn.Module]] = []
        self._wrapped: list[tuple[nn.Module, Any]] = []
        self._local = threading.local()
        self._active = True
        try:
            self._swap_modules()
            self._wrap_forwards()
        except BaseException:
            self.restore()
            raise

    def restore(self) -> None:
        """Put back the original ReLU modules and ``forward`` methods (idempotent)."""
        self._active = False
        while self._wrapped:
            module, previous = self._wrapped.pop()
            if previous is _MISSING:
                module.__dict__.pop("forward", None)
            else:
                module.__dict__["forward"] = previous
        while self._swapped:
            parent, name, original = self._swapped.pop()
            parent._modules[name] = original

    @property
    def active(self) -> bool:
        """Whether the transform is still applied."""
        return self._active

    def __enter__(self) -> SmoothReLU:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.restore()

    def _swap_modules(self) -> None:
        names = {id(m): n for n, m in self.model.named_modules(remove_duplicate=False)}
        for parent in list(self.model.modules()):
            for name, child in list(parent._modules.items()):
                if isinstance(child, nn.ReLU):
                    replacement = SoftplusReLU(self.beta, child.inplace).train(child.training)
                    self._swapped.append((parent, name, child))
                    parent._modules[name] = replacement
                    prefix = names.get(id(parent), "")
                    self.replaced.append(f"{prefix}.{name}" if prefix else name)

    def _wrap_forwards(self) -> None:
        for module in list(self.model.modules()):
            if isinstance(module, SoftplusReLU):
                continue
            if isinstance(module, torch.jit.ScriptModule):
                raise InvalidOptionError(
                    f"smooth_relu cannot transform the TorchScript module {type(module).__name__};"
                    " pass the eager model"
                )
            previous = module.__dict__.get("forward", _MISSING)
            module.__dict__["forward"] = self._wrap(module.forward)
            self._wrapped.append((module, previous))

    def _wrap(self, forward: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(forward)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            if getattr(self._local, "inside", False):
                return forward(*args, **kwargs)
            self._local.inside = True
            try:
                with propagation(SoftplusRule(self.beta)):
                    return forward(*args, **kwargs)
            finally:
                self._local.inside = False

        return wrapped


def smooth_relu(model: nn.Module, beta: float = 10.0) -> SmoothReLU:
    """Replace every ReLU of ``model`` by Softplus(β), reversibly.

    Usable as a context manager (restored on exit, also on exceptions) or as a handle::

        with saliency.smooth_relu(model, beta=10.0):
            hv = saliency.hvp(model, x, v)

        handle = saliency.smooth_relu(model)
        ...
        handle.restore()

    The transform is applied when this function is called. Afterwards the model holds exactly the
    same module objects and ``forward`` methods as before, so its outputs are unchanged. Nested
    transforms of the same model must be restored in reverse order (a ``with`` block does that).
    See the module docstring for what can and cannot be intercepted.

    Args:
        model: the ``nn.Module`` to transform in place.
        beta: Softplus sharpness β > 0; larger is closer to ReLU (and less smooth).

    Raises:
        InvalidOptionError: ``beta`` is not a positive number, or ``model`` is not an eager
            ``nn.Module``.
    """
    if not isinstance(model, nn.Module):
        raise InvalidOptionError(
            f"smooth_relu needs an nn.Module to transform, got {type(model).__name__}"
        )
    require_float("beta", beta, 0.0, exclusive=True)
    return SmoothReLU(model, beta)
