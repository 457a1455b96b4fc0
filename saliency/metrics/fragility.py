r"""Explanation fragility: how far a small, label-preserving perturbation moves a saliency map.

Projected sign-gradient ascent, through the explanation itself (``create_graph=True``), on the
top-k attack objective of Ghorbani et al. — the share of saliency left on the original top-k
pixels B:

.. math:: x_{t+1} = \Pi_{\|x - x_0\|_\infty \le \epsilon}\Big(x_t - \eta_t\,
          \mathrm{sign}\,\nabla_x \frac{\sum_{p \in B} s_p(x_t)}{\sum_p s_p(x_t)}\Big),
          \qquad s_p = \sum_c |a_{c,p}|

A step that changes the predicted class is rejected and that sample's step size η halved, so
every reported perturbation keeps the prediction; the iterate with the smallest top-k
intersection is kept. Results: top-k intersection and Spearman rank correlation between the
original and the perturbed pixel maps, next to the same numbers for random sign noise of the
same L∞ size ε.

Ghorbani, Abid & Zou (2019), "Interpretation of Neural Networks Is Fragile", AAAI,
arXiv:1710.10547. Dombrowski et al. (2019), "Explanations can be manipulated and geometry is to
blame", NeurIPS, arXiv:1906.07983: ReLU networks have piecewise-constant gradient maps, so the
ascent runs on their Softplus(β) surrogate (``beta=``, see :func:`saliency.smooth_relu`) while
maps, metrics and predictions are those of the model itself.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from saliency.engine import Engine, EngineOptions, Precision
from saliency.errors import InvalidOptionError
from saliency.explain import check_inputs, explain
from saliency.methods.base import Method
from saliency.methods.registry import get_method
from saliency.metrics.sanity import spearman_correlation as spearman
from saliency.model_state import evaluation_state
from saliency.smooth_relu import smooth_relu
from saliency.targets import TargetSpec, check_outputs
from saliency.validation import is_real, require_float, require_int


@dataclass(frozen=True)
class FragilityResult:
    """Per-sample fragility of an explanation; all metric tensors are ``(N,)`` float32.

    Attributes:
        perturbed: the chosen perturbed inputs, ``‖perturbed − inputs‖_∞ ≤ ε``.
        original: attributions at the inputs.
        attacked: attributions at ``perturbed``.
        top_k_intersection: |top-k(original) ∩ top-k(attacked)| / k, in [0, 1].
        spearman: Spearman rank correlation of the original and attacked pixel maps.
        random_top_k_intersection: the same for random sign noise ±ε.
        random_spearman: the same for random sign noise ±ε.
        random_prediction_kept: whether the random noise kept the predicted class.
        predictions: the predicted classes, the same at ``inputs`` and ``perturbed``.
        k: pixels in the top-k sets.
        epsilon: the L∞ radius.
    """

    perturbed: Tensor
    original: Tensor
    attacked: Tensor
    top_k_intersection: Tensor
    spearman: Tensor
    random_top_k_intersection: Tensor
    random_spearman: Tensor
    random_prediction_kept: Tensor
    predictions: Tensor
    k: int
    epsilon: float

    def summary(self) -> dict[str, float]:
        """Batch means of the four metrics (e.g. for a robustness column)."""
        return {
            "top_k_intersection": float(self.top_k_intersection.mean()),
            "spearman": float(self.spearman.mean()),
            "random_top_k_intersection": float(self.random_top_k_intersection.mean()),
            "random_spearman": float(self.random_spearman.mean()),
        }


def fragility(
    model: Callable[[Tensor], Any],
    inputs: Tensor,
    method: str | Method = "gradient",
    epsilon: float = 8 / 255,
    steps: int = 10,
    *,
    target: TargetSpec = None,
    step_size: float | None = None,
    top_k: int | float = 0.1,
    beta: float | None = None,
    clamp: tuple[float, float] | None = None,
    seed: int = 0,
    batch_size: int | None = None,
    precision: Precision = "fp32",
    method_options: Mapping[str, Any] | None = None,
) -> FragilityResult:
    """Attack an explanation within an L∞ ball and compare with random noise of the same size.

    Args:
        model: maps ``(N, C, H, W)`` inputs to ``(N, K)`` scores; handled like
            :func:`saliency.explain` (eval mode, state restored afterwards).
        inputs: ``(N, C, H, W)``; never modified.
        method: any registered method name or a Method instance.
        epsilon: L∞ radius of the perturbation, in input units.
        steps: ascent steps (each costs one explanation with ``create_graph`` and its backward,
            one explanation without, and one forward).
        target: the explained class (default: the predicted class at the inputs, kept fixed);
            the constraint is always that the predicted class does not change.
        step_size: initial η (default 2.5 ε / steps), halved per sample on a rejected step.
        top_k: pixels in the top-k sets: an int, or a fraction of the H·W pixels in (0, 1].
        beta: if set, the ascent gradient is taken on ``smooth_relu(model, beta)`` (needed for
            ReLU networks); maps, metrics and predictions stay those of ``model``.
        clamp: the valid input range ``(low, high)``, if any.
        seed: seed of the random noise (and the method's ``seed`` option if it has one and it is
            not given, so that SmoothGrad compares maps with the same noise).
        batch_size: passed to every explanation.
        precision: passed to every explanation.
        method_options: the method's options, e.g. ``{"steps": 16}`` (a separate mapping:
            ``steps`` and ``seed`` are also options of this function).

    Returns:
        A :class:`FragilityResult`.
    """
    check_inputs(inputs)
    require_float("epsilon", epsilon, 0.0, exclusive=True)
    require_int("steps", steps, 1)
    step = 2.5 * epsilon / steps if step_size is None else step_size
    require_float("step_size", step, 0.0, exclusive=True)
    if beta is not None:
        require_float("beta", beta, 0.0, exclusive=True)
    if clamp is not None and not (len(clamp) == 2 and clamp[0] < clamp[1]):
        raise InvalidOptionError(f"clamp={clamp!r}; accepted: None or (low, high), low < high")
    options = _with_seed(method, dict(method_options or {}), seed)
    x0 = inputs.detach()
    pixels = x0.shape[-2] * x0.shape[-1]
    k = _top_k(top_k, pixels)
    engine = Engine(model, EngineOptions(batch_size=batch_size, precision=precision))

    def maps(x: Tensor, create_graph: bool = False) -> Tensor:
        return explain(
            model,
            x,
            method,
            explained,
            batch_size=batch_size,
            precision=precision,
            create_graph=create_graph,
            **options,
        ).attributions

    with evaluation_state(model, keep_parameter_grads=False):
        predictions = _predict(engine, x0)
        explained = predictions if target is None else target
        original = maps(x0)
        reference = pixel_map(original)
        top = reference.topk(k, dim=1).indices
        in_top = torch.zeros_like(reference, dtype=torch.bool).scatter_(1, top, True)

        x = x0.clone()
        eta = torch.full((len(x0),), float(step), dtype=x0.dtype, device=x0.device)
        best = x0.clone()
        best_attacked = original.detach()
        best_overlap = torch.ones(len(x0), device=x0.device)
        best_rho = torch.ones(len(x0), device=x0.device)
        shape = (-1,) + (1,) * (x0.ndim - 1)
        warned = False
        for t in range(steps + 1):
            if t > 0:  # score the current iterate on the model itself
                current = maps(x).detach()
                overlap = top_k_intersection(reference, pixel_map(current), k)
                rho = spearman(reference, pixel_map(current))
                better = (overlap < best_overlap) | ((overlap == best_overlap) & (rho < best_rho))
                best = torch.where(better.view(shape), x, best)
                best_attacked = torch.where(better.view(shape), current, best_attacked)
                best_overlap = torch.where(better, overlap, best_overlap)
                best_rho = torch.where(better, rho, best_rho)
            if t == steps:
                break
            leaf = x.clone().requires_grad_(True)
            with _surrogate(model, beta):
                saliency = pixel_map(maps(leaf, create_graph=True))
                share = (saliency * in_top).sum(1) / saliency.sum(1).clamp_min(1e-30)
                (grad,) = torch.autograd.grad(share.sum(), leaf, materialize_grads=True)
            if not warned and not bool(grad.any()):
                warned = True
                warnings.warn(
                    "the explanation's gradient with respect to the input is zero (a ReLU "
                    "network has piecewise-constant gradient maps); pass beta= to attack its "
                    "Softplus surrogate",
                    RuntimeWarning,
                    stacklevel=2,
                )
            candidate = _project(x - eta.view(shape) * grad.sign(), x0, epsilon, clamp)
            kept = _predict(engine, candidate) == predictions
            x = torch.where(kept.view(shape), candidate, x)
            eta = torch.where(kept, eta, eta / 2)

        generator = torch.Generator(device=x0.device).manual_seed(seed)
        signs = torch.randint(0, 2, x0.shape, generator=generator, device=x0.device)
        noisy = _project(x0 + epsilon * (2 * signs.to(x0.dtype) - 1), x0, epsilon, clamp)
        random_kept = _predict(engine, noisy) == predictions
        noisy_map = pixel_map(maps(noisy).detach())
        final = _predict(engine, best)
    assert bool((final == predictions).all()), "a perturbation changed the prediction"
    return FragilityResult(
        perturbed=best,
        original=original.detach(),
        attacked=best_attacked,
        top_k_intersection=best_overlap,
        spearman=best_rho,
        random_top_k_intersection=top_k_intersection(reference, noisy_map, k),
        random_spearman=spearman(reference, noisy_map),
        random_prediction_kept=random_kept,
        predictions=predictions,
        k=k,
        epsilon=float(epsilon),
    )


def pixel_map(attributions: Tensor) -> Tensor:
    """Per-pixel saliency ``s_p = Σ_c |a_{c,p}|`` as ``(N, H·W)`` float32 or wider."""
    values = attributions.abs().sum(1).flatten(1)
    return values.to(torch.promote_types(values.dtype, torch.float32))


def top_k_intersection(first: Tensor, second: Tensor, k: int) -> Tensor:
    """``|top-k(first) ∩ top-k(second)| / k`` per row of two ``(N, P)`` maps."""
    a = torch.zeros_like(first, dtype=torch.bool).scatter_(1, first.topk(k, dim=1).indices, True)
    b = torch.zeros_like(second, dtype=torch.bool).scatter_(1, second.topk(k, dim=1).indices, True)
    return (a & b).sum(1).float() / k


def _predict(engine: Engine, inputs: Tensor) -> Tensor:
    return check_outputs(engine.predict(inputs), len(inputs)).argmax(1)


def _project(x: Tensor, x0: Tensor, epsilon: float, clamp: tuple[float, float] | None) -> Tensor:
    x = torch.minimum(torch.maximum(x, x0 - epsilon), x0 + epsilon)
    return x if clamp is None else x.clamp(clamp[0], clamp[1])


def _surrogate(model: Callable[[Tensor], Any], beta: float | None) -> AbstractContextManager[Any]:
    if beta is None:
        return nullcontext()
    if not isinstance(model, torch.nn.Module):
        raise InvalidOptionError("beta= needs an nn.Module model (its ReLUs are replaced)")
    return smooth_relu(model, beta)


def _with_seed(method: str | Method, options: dict[str, Any], seed: int) -> dict[str, Any]:
    if isinstance(method, Method) or "seed" in options:
        return dict(options)
    if "seed" in get_method(method).option_names():
        return {**options, "seed": seed}
    return dict(options)


def _top_k(top_k: int | float, pixels: int) -> int:
    if not is_real(top_k):
        raise InvalidOptionError(f"top_k={top_k!r}; accepted: an int ≥ 1 or a fraction in (0, 1]")
    if isinstance(top_k, int):
        if not 1 <= top_k <= pixels:
            raise InvalidOptionError(f"top_k={top_k}; accepted: 1 to {pixels} pixels")
        return top_k
    if not 0 < top_k <= 1:
        raise InvalidOptionError(f"top_k={top_k!r}; accepted: an int ≥ 1 or a fraction in (0, 1]")
    return max(1, round(top_k * pixels))
