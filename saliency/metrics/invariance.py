"""Input invariance (Kindermans et al. 2019, "The (Un)reliability of Saliency Methods", in
Explainable AI, LNCS 11700, arXiv:1711.00867).

Shift every input by a constant :math:`m` and give the first linear layer the bias that undoes
it, :math:`b' = b - W m`: the shifted model :math:`f'` computes exactly the same function on the
shifted inputs, :math:`f'(x + m) = f(x)`, with the same gradients. A method is input invariant
when its map does not change either,

.. math:: \\text{score} = \\frac{\\lVert a(f', x + m) - a(f, x) \\rVert_2}
          {\\lVert a(f, x)\\rVert_2},

0 for an invariant method. The gradient is invariant; gradient × input and integrated gradients
with a zero baseline are not (their maps carry :math:`x + m`); integrated gradients with the
baseline shifted too (``shifted_options={"baseline": m}``) is again.

The compensation is exact for any layer reached through an affine map of the inputs (a
flatten, a normalisation, ...): the change :math:`\\Delta` that the shift makes to the layer's
input is measured, and the layer's output is corrected by :math:`W\\Delta` (its bias, per output
position where zero padding makes :math:`W\\Delta` differ at the borders). The shifted model's
outputs are checked against the original ones before any map is computed.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from saliency.engine import Engine
from saliency.errors import InvalidOptionError, LayerNotFoundError, accepted
from saliency.explain import check_inputs, explain
from saliency.methods.base import Method
from saliency.model_state import evaluation_state, model_lock
from saliency.targets import TargetSpec
from saliency.validation import is_real

__all__ = ["first_linear_layer", "input_invariance", "relative_change", "shift_compensation"]

_LINEAR = (nn.Linear, nn.modules.conv._ConvNd)


def _module_names(model: nn.Module) -> dict[nn.Module, str]:
    return {module: name for name, module in model.named_modules() if name}


def first_linear_layer(model: nn.Module, inputs: Tensor) -> str:
    """The dotted name of the first ``Linear``/``Conv*`` module that runs on ``inputs``."""
    names = _module_names(model)
    called: list[str] = []

    def record(module: nn.Module, args: Any) -> None:
        if not called:
            called.append(names[module])

    handles = [
        module.register_forward_pre_hook(record) for module in names if isinstance(module, _LINEAR)
    ]
    try:
        with evaluation_state(model, keep_parameter_grads=True), torch.no_grad():
            model(inputs[:1])
    finally:
        for handle in handles:
            handle.remove()
    if not called:
        raise LayerNotFoundError(
            f"{type(model).__name__} runs no Linear or Conv module on its inputs; input "
            "invariance needs a first linear layer whose bias absorbs the shift"
        )
    return called[0]


def _layer_input(model: nn.Module, layer: nn.Module, inputs: Tensor) -> Tensor:
    seen: list[Tensor] = []

    def record(module: nn.Module, args: Any) -> None:
        if not seen:
            seen.append(args[0].detach())

    handle = layer.register_forward_pre_hook(record)
    try:
        with torch.no_grad():
            model(inputs)
    finally:
        handle.remove()
    if not seen:
        raise LayerNotFoundError("the layer does not run when the model runs on the inputs")
    return seen[0]


@contextmanager
def shift_compensation(
    model: nn.Module, inputs: Tensor, shift: float | Tensor, layer: str | None = None
) -> Iterator[str]:
    """Make ``model`` compute on ``inputs + shift`` what it computed on ``inputs``, for the
    duration of the block (a forward hook on the first linear layer, removed in ``finally``).

    Yields the dotted name of the compensating layer. Raises
    :class:`~saliency.errors.InvalidOptionError` when the model's outputs change all the same
    (the layer is not reached through an affine map of the inputs alone).
    """
    name = layer if layer is not None else first_linear_layer(model, inputs)
    modules = dict(model.named_modules())
    if name not in modules or not name:
        raise LayerNotFoundError(
            f"layer={name!r} is not a module of the model; accepted: "
            f"{accepted(n for n in modules if n)}"
        )
    module = modules[name]
    shifted = inputs + shift
    with model_lock(model), evaluation_state(model, keep_parameter_grads=True):
        delta = _layer_input(model, module, shifted[:1]) - _layer_input(model, module, inputs[:1])
        with torch.no_grad():
            offset = module(delta) - module(torch.zeros_like(delta))  # W Δ, bias cancelled

        def compensate(hooked: nn.Module, args: Any, output: Tensor) -> Tensor:
            return output - offset.to(output.dtype)

        engine = Engine(model)
        reference = engine.predict(inputs)
        handle = module.register_forward_hook(compensate)
        try:
            moved = engine.predict(shifted)
            scale = float(reference.abs().max()) or 1.0
            error = float((moved - reference).abs().max())
            if error > 1e-4 * scale + 1e-6:
                raise InvalidOptionError(
                    f"shifting the inputs by {shift!r} and compensating in layer {name!r} "
                    f"changed the outputs by up to {error:.3g}: that layer is not reached "
                    "through an affine map of the inputs alone; pass layer= the first linear layer"
                )
            yield name
        finally:
            handle.remove()


def input_invariance(
    model: nn.Module,
    inputs: Tensor,
    method: str | Method = "gradient",
    *,
    shift: float | Tensor = -1.0,
    target: TargetSpec = None,
    layer: str | None = None,
    batch_size: int | None = None,
    shifted_options: Mapping[str, Any] | None = None,
    **options: Any,
) -> Tensor:
    """``(N,)`` relative change of the raw map under a compensated constant input shift.

    Args:
        model: The model (an ``nn.Module``; left exactly as it was).
        inputs: ``(N, C, H, W)`` inputs on the model's device.
        method: A registered method name or a Method instance.
        shift: The constant :math:`m` added to every input: a number, or a tensor broadcastable
            to one input (e.g. ``(C, 1, 1)`` per channel).
        target: The explained classes (None: the predictions); the shifted model explains the
            same classes.
        layer: The dotted name of the compensating layer (None: :func:`first_linear_layer`).
        batch_size: Passed to :func:`saliency.explain`.
        shifted_options: Options that replace ``options`` for the shifted explanation, e.g. a
            baseline moved with the inputs.
        **options: The method's options.

    Returns:
        ``(N,)`` float32 :math:`\\lVert a' - a\\rVert_2 / \\lVert a \\rVert_2`: 0 when invariant
        (0 also when both maps are zero; inf when only the original is).
    """
    if not isinstance(model, nn.Module):
        raise InvalidOptionError(
            f"input invariance needs an nn.Module (its first layer is compensated), got "
            f"{type(model).__name__}"
        )
    check_inputs(inputs)
    if isinstance(shift, Tensor):
        try:
            torch.broadcast_shapes(shift.shape, inputs.shape[1:])
        except RuntimeError as exc:
            raise InvalidOptionError(
                f"shift of shape {tuple(shift.shape)} does not broadcast to one input "
                f"{tuple(inputs.shape[1:])}"
            ) from exc
        shift = shift.to(inputs)
    elif not is_real(shift) or not math.isfinite(shift):
        raise InvalidOptionError(
            f"shift={shift!r}; accepted: a finite number, or a tensor broadcastable to one input"
        )
    original = explain(model, inputs, method, target, batch_size=batch_size, **options)
    targets = original.targets if original.targets is not None else target
    moved_options = {**options, **(shifted_options or {})}
    with shift_compensation(model, inputs, shift, layer):
        moved = explain(
            model, inputs + shift, method, targets, batch_size=batch_size, **moved_options
        )
    return relative_change(original.attributions, moved.attributions)


def relative_change(before: Tensor, after: Tensor) -> Tensor:
    """``(N,)`` float32 :math:`\\lVert a' - a\\rVert_2 / \\lVert a \\rVert_2` per sample, in
    float64: 0 when both maps are zero, inf when only ``before`` is."""
    first = before.detach().flatten(1).double()
    second = after.detach().flatten(1).double()
    change = (second - first).norm(dim=1)
    size = first.norm(dim=1)
    relative = torch.where(
        size > 0, change / size.clamp_min(1e-300), torch.where(change > 0, torch.inf, 0.0)
    )
    return relative.float()
