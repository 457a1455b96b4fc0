r"""Explanation-regularised training losses.

"Right for the Right Reasons" (Ross, Hughes & Doshi-Velez 2017, IJCAI, arXiv:1703.03717): a model
is trained to be insensitive to an annotated region A (e.g. a spurious marker) by penalising its
input gradients there,

.. math:: L(\theta) = \underbrace{\sum_n \mathrm{CE}(f_\theta(x_n), y_n)}_{\text{right answers}}
          + \lambda_1 \underbrace{\sum_n \sum_d \Big(A_{nd}\,
          \frac{\partial}{\partial x_{nd}} \sum_k \log \hat p_{nk}\Big)^2}_{\text{right reasons}}
          + \lambda_2 \|\theta\|^2

where the penalty's gradient with respect to θ needs a double backward (``create_graph``).

With a ``direction`` v, the penalty is instead the squared derivative of the score along v inside
the region, :math:`\big(\sum_d A_{nd} v_{nd}\,\partial_{x_{nd}} S_n\big)^2`. Taken at a random
point of the straight path from x̃ (the input with the region replaced) to x, with v = x − x̃, it
is an unbiased one-point estimate of :math:`\int_0^1 (\tfrac{d}{d\alpha} S)^2\,d\alpha \ge
(S(x) - S(\tilde x))^2` (Cauchy–Schwarz): it bounds how much the region changes the score,
the integrated-gradients attribution of the region (an attribution prior in the sense of Erion
et al. 2021, Nature Machine Intelligence 3:620). The per-feature penalty bounds that change
only through ``|v|``, so weakly: a gradient of small norm aligned with v still moves the score.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Literal, overload

import torch
from torch import Tensor

from saliency.attention import differentiable_attention
from saliency.errors import InvalidOptionError
from saliency.targets import TargetSpec, check_outputs, resolve_target
from saliency.validation import check_choice

Reduction = Literal["mean", "sum", "none"]


@overload
def input_gradient_penalty(
    model: Callable[[Tensor], Any],
    inputs: Tensor,
    targets: TargetSpec,
    mask: Tensor,
    *,
    direction: Tensor | None = ...,
    reduction: Reduction = ...,
    create_graph: bool = ...,
    return_outputs: Literal[False] = ...,
) -> Tensor: ...
@overload
def input_gradient_penalty(
    model: Callable[[Tensor], Any],
    inputs: Tensor,
    targets: TargetSpec,
    mask: Tensor,
    *,
    direction: Tensor | None = ...,
    reduction: Reduction = ...,
    create_graph: bool = ...,
    return_outputs: Literal[True],
) -> tuple[Tensor, Any]: ...
def input_gradient_penalty(
    model: Callable[[Tensor], Any],
    inputs: Tensor,
    targets: TargetSpec,
    mask: Tensor,
    *,
    direction: Tensor | None = None,
    reduction: Reduction = "mean",
    create_graph: bool = True,
    return_outputs: bool = False,
) -> Tensor | tuple[Tensor, Any]:
    r"""The RRR penalty :math:`\sum_d (A_{nd}\,\partial_{x_{nd}} S_n)^2` per sample, reduced.

    With ``direction`` v: :math:`(\sum_d A_{nd}\,v_{nd}\,\partial_{x_{nd}} S_n)^2` instead (see
    the module docstring).

    Unlike :func:`saliency.explain`, this is a training-time loss: the model is called once, **as
    it is** — its train/eval mode and its parameters' ``requires_grad`` are not touched (in
    train mode, dropout and batch-norm batch statistics apply, exactly as in the training
    step) — and the input gradient is taken directly with ``torch.autograd.grad(...,
    create_graph=True)``, so the penalty is differentiable with respect to the parameters (and
    ``loss.backward()`` fills their ``.grad`` as usual). Parameter ``.grad`` fields are never
    written by this function itself.

    Batch norm: in train mode the input gradient also flows through the batch mean and variance,
    and a network can learn to make it small *there* while staying sensitive with its running
    statistics (in :mod:`saliency.demo.rrr` the marker penalty of such a model was 20× larger in
    eval mode, and it still followed the marker). For models with batch norm, compute the penalty in
    a separate forward pass in eval mode, e.g. inside
    ``saliency.model_state.evaluation_state(model, keep_parameter_grads=True)``.

    Args:
        model: maps ``(N, C, H, W)`` inputs to ``(N, K)`` logits.
        inputs: ``(N, C, H, W)``; never modified.
        targets: which score S_n is differentiated: ``None`` → the sum of all log-probabilities
            Σ_k log p̂_nk (Ross et al.); an int, N ints or an ``(N,)`` tensor (e.g. the labels) →
            that class's log-probability log p̂_{n,y_n}; a callable ``outputs -> (N,)`` → its
            scores as they are.
        mask: A, the region where the model must not look; bool or float, broadcastable to the
            inputs (e.g. ``(N, 1, H, W)``). An empty mask gives a zero penalty.
        direction: v, broadcastable to the inputs: penalise the squared derivative of the score
            along A ⊙ v (one number per sample) instead of the squared gradient per feature.
        reduction: ``"mean"`` over samples (default), ``"sum"`` (Ross et al.'s formula) or
            ``"none"`` for the ``(N,)`` per-sample penalties.
        create_graph: keep the graph so the penalty can be back-propagated to the parameters.
        return_outputs: also return the model outputs of the same forward pass, so that the
            cross-entropy term needs no second forward (which would update batch-norm running
            statistics twice).

    Returns:
        The penalty (a scalar, or ``(N,)`` for ``reduction="none"``), float32 at least; with
        ``return_outputs=True`` a tuple ``(penalty, outputs)``.
    """
    check_choice("reduction", reduction, Reduction)
    if not isinstance(inputs, Tensor) or inputs.ndim < 2 or not inputs.is_floating_point():
        raise InvalidOptionError("inputs must be a floating-point (N, ...) tensor")
    weights = _broadcast("mask", mask, inputs)
    if direction is not None:
        weights = weights * _broadcast("direction", direction, inputs)
    x = inputs if inputs.requires_grad else inputs.detach().requires_grad_(True)
    # The penalty is differentiated again: attention through its twice-differentiable kernel.
    second_order: AbstractContextManager[Any] = (
        differentiable_attention() if create_graph else nullcontext()
    )
    with torch.enable_grad():
        with second_order:
            outputs = model(x)
        scores = _scores(outputs, targets, len(inputs))
        (grads,) = torch.autograd.grad(
            scores.sum(), x, create_graph=create_graph, materialize_grads=True
        )
    weighted = (weights * grads).flatten(1)
    penalty = weighted.sum(1).square() if direction is not None else weighted.square().sum(1)
    if reduction == "mean":
        penalty = penalty.mean()
    elif reduction == "sum":
        penalty = penalty.sum()
    return (penalty, outputs) if return_outputs else penalty


def _scores(outputs: Any, targets: TargetSpec, count: int) -> Tensor:
    if callable(targets) and not isinstance(targets, Tensor):
        return resolve_target(targets, None, count).scores(outputs, torch.arange(count))
    logits = check_outputs(outputs, count)
    log_probabilities = torch.log_softmax(
        logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=1
    )
    if targets is None:
        return log_probabilities.sum(1)
    target = resolve_target(targets, logits.detach(), count)
    return target.scores(log_probabilities, torch.arange(count, device=logits.device))


def _broadcast(name: str, value: object, inputs: Tensor) -> Tensor:
    """``value`` (a constant: detached) as a float tensor on the inputs' device."""
    if not isinstance(value, Tensor):
        raise InvalidOptionError(
            f"{name} must be a tensor broadcastable to the inputs' shape {tuple(inputs.shape)}; "
            f"got {type(value).__name__}"
        )
    try:
        shape = torch.broadcast_shapes(value.shape, inputs.shape)
    except RuntimeError:
        shape = None
    if shape != inputs.shape:
        raise InvalidOptionError(
            f"{name} of shape {tuple(value.shape)} does not broadcast to the inputs' shape "
            f"{tuple(inputs.shape)}"
        )
    dtype = torch.promote_types(inputs.dtype, torch.float32)
    return value.detach().to(device=inputs.device, dtype=dtype)
