"""ROAD: RemOve And Debias (Rong et al. 2022, "A Consistent and Efficient Evaluation Strategy for
Attribution Methods", ICML, arXiv:2202.00449).

Deletion with a replacement that leaks nothing: the top-ranked share :math:`q` of the pixels
(all channels of a pixel together) is removed and filled by noisy linear imputation
(:mod:`saliency.metrics.imputation`), and the model, not retrained, scores the result. Ranking
the pixels by relevance, most relevant first (**MoRF**), a faithful map makes the score fall
fast; least relevant first (**LeRF**), it keeps the score up. For each fraction
:math:`q_\\ell` the first :math:`\\lfloor q_\\ell P \\rfloor` of the P pixels are removed (ties in
raster order); the per-sample summary is the mean score over the fractions,

.. math:: \\text{ROAD}_\\text{order} = \\frac{1}{L}\\sum_{\\ell=1}^{L}
          s\\big(\\tilde x^{(\\ell)}\\big),

so MoRF: lower is more faithful; LeRF: higher. ``score="accuracy"`` scores 1 when the model
still predicts the target class (the paper's and Quantus's curves are the mean of it over
samples), ``"probability"`` its softmax probability, ``"logit"`` the raw output.

One noise field per sample (seeded) serves every fraction, so results do not depend on
``batch_size``. Imputations and forward passes run batched, in chunks, on the inputs' device.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Literal, TypedDict

import torch
from torch import Tensor

from saliency.engine import Engine, EngineOptions, automatic_chunk_size
from saliency.errors import InvalidOptionError, InvalidTargetError
from saliency.explain import check_inputs
from saliency.metrics.faithfulness import Curve, _pixel_ranks, target_scorer
from saliency.metrics.imputation import linear_imputation
from saliency.metrics.relevance import Reduction, relevance_map
from saliency.model_state import channels_last_weights, evaluation_state
from saliency.targets import ClassTarget, TargetSpec, resolve_target
from saliency.validation import check_choice, require_float, require_int

if TYPE_CHECKING:
    from typing_extensions import Unpack  # typing.Unpack is Python ≥ 3.11

__all__ = ["DEFAULT_FRACTIONS", "RoadOrder", "RoadScore", "road", "road_curve"]

RoadOrder = Literal["morf", "lerf"]
RoadScore = Literal["probability", "logit", "accuracy"]
DEFAULT_FRACTIONS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
"""Shares of pixels removed, as in the paper's figures."""
_IMPUTATION_ELEMENTS = 1 << 19
"""Input elements imputed at once (about 2 MB of float32 per field)."""


def _removed_counts(fractions: Sequence[float], pixels: int) -> list[int]:
    if isinstance(fractions, (str, bytes)) or not isinstance(fractions, Sequence) or not fractions:
        raise InvalidOptionError(
            f"fractions={fractions!r}; accepted: a non-empty sequence of numbers in [0, 1]"
        )
    for fraction in fractions:
        require_float("fractions[...]", fraction, 0.0, maximum=1.0)
    # Rounded first so that 0.29 × 100 pixels removes 29, not 28.
    return [math.floor(round(float(f) * pixels, 6)) for f in fractions]


def _scorer(score: RoadScore, target: ClassTarget) -> Callable[[Tensor, Tensor], Tensor]:
    """The perturbation metrics' scorer (:func:`target_scorer`), plus ROAD's ``"accuracy"``."""
    if score != "accuracy":
        return target_scorer(score, target)

    def hits(outputs: Tensor, samples: Tensor) -> Tensor:
        return (outputs.float().argmax(dim=1) == target.indices[samples]).float()

    return hits


def road_curve(
    model: Callable[[Tensor], Tensor],
    inputs: Tensor,
    attributions: Tensor,
    *,
    order: RoadOrder = "morf",
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    target: TargetSpec = None,
    noise: float = 0.01,
    seed: int = 0,
    score: RoadScore = "probability",
    reduction: Reduction = "abs",
    tolerance: float = 1e-5,
    batch_size: int | None = None,
    channels_last: bool = False,
) -> Curve:
    """The ROAD curve of each sample: its score after each share of pixels is imputed.

    Args:
        model: Maps ``(m, C, H, W)`` inputs to ``(m, K)`` class scores (put in eval mode during
            the call and restored afterwards).
        inputs: ``(N, C, H, W)`` model inputs, on the model's device.
        attributions: ``(N, C, H, W)``, ``(N, 1, H, W)`` or ``(N, H, W)`` raw attributions.
        order: ``"morf"`` (most relevant removed first) or ``"lerf"`` (least relevant first).
        fractions: Shares of the pixels removed, each in [0, 1].
        target: The class scored: None (the prediction at the inputs), an int, or N ints.
        noise: σ of the imputation noise, in input units (the paper: 0.01 on [0, 1] images).
        seed: Seeds the noise (one field per sample, shared by every fraction).
        score: ``"probability"``, ``"logit"`` or ``"accuracy"`` (see the module docstring).
        reduction: How channels become the pixel relevance that ranks pixels.
        tolerance: Relative residual at which the imputation's solver stops (1e-5 leaves
            errors of ~1e-4 in input units, far below the noise σ = 0.01 that ROAD adds).
        batch_size: Imputed images per forward pass (None: automatic).
        channels_last: Run the forward passes in channels-last memory format, as in
            :func:`~saliency.metrics.faithfulness.perturbation_curve`.

    Returns:
        :class:`~saliency.metrics.faithfulness.Curve` with the ``(L,)`` fractions of pixels
        actually removed and ``(N, L)`` scores.
    """
    check_choice("order", order, RoadOrder)
    check_choice("score", score, RoadScore)
    require_float("noise", noise, 0.0)
    require_int("seed", seed, 0)
    require_float("tolerance", tolerance, 0.0, exclusive=True)
    if batch_size is not None:
        require_int("batch_size", batch_size, 1)
    check_inputs(inputs)
    relevance = relevance_map(attributions, reduction)
    if relevance.shape != (inputs.shape[0], *inputs.shape[2:]):
        raise InvalidOptionError(
            f"attributions of shape {tuple(attributions.shape)} do not fit inputs of shape "
            f"{tuple(inputs.shape)}"
        )
    count, pixels = inputs.shape[0], inputs.shape[2] * inputs.shape[3]
    removed_counts = torch.tensor(_removed_counts(fractions, pixels), device=inputs.device)
    levels = len(removed_counts)
    relevance = relevance.to(inputs.device)
    ranks = _pixel_ranks(relevance if order == "morf" else -relevance)
    ranks = ranks.view(count, 1, *inputs.shape[2:])
    generator = torch.Generator(device=inputs.device).manual_seed(seed)
    field = noise * torch.randn(
        inputs.shape, generator=generator, device=inputs.device, dtype=inputs.dtype
    )
    engine = Engine(model, EngineOptions(batch_size=batch_size, channels_last=channels_last))
    chunk = batch_size or automatic_chunk_size(inputs.shape[1:], inputs.device)
    total = count * levels
    # the solver sweeps its fields dozens of times: pieces that stay in cache are faster
    pieces = max(1, _IMPUTATION_ELEMENTS // inputs[0].numel())
    scores = torch.empty(total, dtype=torch.float32, device=inputs.device)
    with (
        evaluation_state(model, keep_parameter_grads=True),
        channels_last_weights(model, channels_last),
        torch.no_grad(),
    ):
        resolved = resolve_target(target, engine.predict(inputs), count)
        if not isinstance(resolved, ClassTarget):
            raise InvalidTargetError("ROAD needs class targets, not a function")
        scorer = _scorer(score, resolved)
        for begin in range(0, total, chunk):
            point = torch.arange(begin, min(total, begin + chunk), device=inputs.device)
            sample, level = point % count, point // count
            removed = ranks[sample] < removed_counts[level].view(-1, 1, 1, 1)
            filled = torch.cat(
                [
                    linear_imputation(inputs[part], gone, tolerance=tolerance)
                    for part, gone in zip(sample.split(pieces), removed.split(pieces), strict=True)
                ]
            )
            imputed = torch.where(removed, filled + field[sample], filled)
            scores[point] = scorer(engine.forward(imputed), sample)
    shares = removed_counts.float() / pixels
    return Curve(shares, scores.view(levels, count).T.contiguous())


class RoadOptions(TypedDict, total=False):
    """The keyword options of :func:`road_curve`."""

    order: RoadOrder
    fractions: Sequence[float]
    target: TargetSpec
    noise: float
    seed: int
    score: RoadScore
    reduction: Reduction
    tolerance: float
    batch_size: int | None
    channels_last: bool


def road(
    model: Callable[[Tensor], Tensor],
    inputs: Tensor,
    attributions: Tensor,
    **options: Unpack[RoadOptions],
) -> Tensor:
    """``(N,)`` mean ROAD score over the fractions: MoRF lower / LeRF higher is more faithful.

    Options as in :func:`road_curve` (``order="morf"`` by default).
    """
    return road_curve(model, inputs, attributions, **options).scores.mean(dim=1)
