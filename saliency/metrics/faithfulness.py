"""Faithfulness: deletion and insertion curves (Petsiuk et al. 2018, "RISE", arXiv:1806.07421).

Pixels are ranked by relevance (most relevant first, ties in raster order). *Deletion* replaces
the top-ranked pixels of the input by a *substrate* step by step and records the target score;
*insertion* starts from the substrate and puts the input's pixels back in the same order. Step
``k`` changes the first :math:`n_k = \\min(k\\,s, P)` of the :math:`P` pixels (all channels of a
pixel together), where :math:`s = \\max(1, \\operatorname{round}(\\text{step}\\cdot P))`, for
:math:`k = 0 .. \\lceil P/s \\rceil`. The AUC is the trapezoid rule over the fractions
:math:`x_k = n_k / P \\in [0, 1]`,

.. math:: \\text{AUC} = \\sum_k \\tfrac{1}{2}(x_{k+1} - x_k)\\,(f_k + f_{k+1}),

so with softmax probabilities as scores it lies in [0, 1]. A faithful map gives a low deletion
AUC (the score drops fast) and a high insertion AUC. Substrates: ``"zeros"`` (zero in the model's
input space: for a normalised input, the normalisation mean), ``"blur"`` (a Gaussian blur of the
input, σ in pixels; the paper's insertion substrate), a number, or a tensor broadcastable to the
inputs. Every evaluation runs batched on the inputs' device without gradients.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, TypedDict, get_args

import torch
import torch.nn.functional as F
from torch import Tensor

from saliency.engine import Engine, EngineOptions, automatic_chunk_size
from saliency.errors import InvalidOptionError, InvalidTargetError, accepted
from saliency.metrics.relevance import Reduction, relevance_map
from saliency.model_state import channels_last_weights, evaluation_state
from saliency.targets import ClassTarget, TargetSpec, resolve_target
from saliency.validation import is_real, require_float

if TYPE_CHECKING:
    from typing_extensions import Unpack  # typing.Unpack is Python ≥ 3.11

__all__ = [
    "Curve",
    "Mode",
    "Score",
    "SubstrateSpec",
    "deletion_auc",
    "gaussian_blur",
    "insertion_auc",
    "make_substrate",
    "perturbation_curve",
    "trapezoid_auc",
]

Mode = Literal["deletion", "insertion"]
Score = Literal["probability", "logit"]
SubstrateSpec = Literal["zeros", "blur"] | float | Tensor
_MODES: tuple[str, ...] = get_args(Mode)
_SCORES: tuple[str, ...] = get_args(Score)


@dataclass(frozen=True)
class Curve:
    """A deletion or insertion curve.

    Attributes:
        fractions: ``(K + 1,)`` share of pixels changed at each step, from 0 to 1.
        scores: ``(N, K + 1)`` float32 target scores at each step.
    """

    fractions: Tensor
    scores: Tensor

    def auc(self) -> Tensor:
        """``(N,)`` trapezoid area under the curve (see :func:`trapezoid_auc`)."""
        return trapezoid_auc(self.fractions, self.scores)


def trapezoid_auc(fractions: Tensor, scores: Tensor) -> Tensor:
    """Trapezoid rule :math:`\\sum_k \\frac12 (x_{k+1} - x_k)(f_k + f_{k+1})` per row of scores."""
    widths = (fractions[1:] - fractions[:-1]).to(scores.dtype)
    return (0.5 * widths * (scores[:, 1:] + scores[:, :-1])).sum(dim=1)


def gaussian_blur(inputs: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of ``(N, C, H, W)`` with reflected borders (kernel ±3σ)."""
    if sigma <= 0:
        return inputs.clone()
    reach = min(max(1, math.ceil(3 * sigma)), min(inputs.shape[-2:]) - 1)
    offsets = torch.arange(-reach, reach + 1, device=inputs.device, dtype=inputs.dtype)
    kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    channels = inputs.shape[1]
    padded = F.pad(inputs, (reach, reach, 0, 0), mode="reflect")
    blurred = F.conv2d(padded, kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
    padded = F.pad(blurred, (0, 0, reach, reach), mode="reflect")
    return F.conv2d(padded, kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)


def make_substrate(inputs: Tensor, substrate: SubstrateSpec, blur_sigma: float = 5.0) -> Tensor:
    """The ``(N, C, H, W)`` image that removed pixels take their values from."""
    if isinstance(substrate, str):
        if substrate == "zeros":
            return torch.zeros_like(inputs)
        if substrate == "blur":
            return gaussian_blur(inputs, blur_sigma)
        raise InvalidOptionError(
            f"substrate={substrate!r}; accepted: 'zeros', 'blur', a number or a tensor"
        )
    if is_real(substrate):
        return torch.full_like(inputs, float(substrate))
    if isinstance(substrate, Tensor):
        try:
            return substrate.to(inputs).expand_as(inputs)
        except RuntimeError as exc:
            raise InvalidOptionError(
                f"substrate of shape {tuple(substrate.shape)} does not broadcast to the inputs "
                f"{tuple(inputs.shape)}"
            ) from exc
    raise InvalidOptionError(
        f"substrate={substrate!r}; accepted: 'zeros', 'blur', a number or a tensor"
    )


def _pixel_ranks(relevance: Tensor) -> Tensor:
    """``(N, H·W)`` rank of each pixel, 0 = most relevant; ties in raster order."""
    flat = relevance.flatten(1)
    order = torch.argsort(flat, dim=1, descending=True, stable=True)
    positions = torch.arange(flat.shape[1], device=flat.device).expand_as(order)
    return torch.empty_like(order).scatter_(1, order, positions)


def target_scorer(score: Score, target: ClassTarget | None) -> Callable[[Tensor, Tensor], Tensor]:
    """Maps (outputs, sample indices) to float32 target scores."""
    if score not in _SCORES:
        raise InvalidOptionError(f"score={score!r}; accepted: {accepted(_SCORES)}")

    def scores(outputs: Tensor, samples: Tensor) -> Tensor:
        assert target is not None
        values = outputs.float().softmax(dim=1) if score == "probability" else outputs.float()
        return values.gather(1, target.indices[samples][:, None]).squeeze(1)

    return scores


def perturbation_curve(
    model: Callable[[Tensor], Tensor],
    inputs: Tensor,
    attributions: Tensor,
    *,
    mode: Mode = "deletion",
    target: TargetSpec = None,
    step: float = 0.02,
    substrate: SubstrateSpec | None = None,
    blur_sigma: float = 5.0,
    score: Score = "probability",
    reduction: Reduction = "abs",
    batch_size: int | None = None,
    channels_last: bool = False,
) -> Curve:
    """The deletion or insertion curve of each sample.

    Args:
        model: Maps ``(m, C, H, W)`` inputs to ``(m, K)`` class scores (put in eval mode during the
            call and restored afterwards).
        inputs: ``(N, C, H, W)`` model inputs, on the model's device.
        attributions: ``(N, C, H, W)``, ``(N, 1, H, W)`` or ``(N, H, W)`` raw attributions that
            rank the pixels.
        mode: ``"deletion"`` or ``"insertion"``.
        target: The class whose score is tracked: None (the prediction at the inputs), an int,
            or N ints (e.g. ``Explanation.targets``).
        step: Share of the pixels changed per step, in (0, 1].
        substrate: ``"zeros"``, ``"blur"``, a number or a tensor; None = ``"zeros"`` for deletion
            and ``"blur"`` for insertion, as in the paper.
        blur_sigma: σ of the ``"blur"`` substrate, in pixels.
        score: ``"probability"`` (softmax, AUC in [0, 1]) or ``"logit"`` (the raw output).
        reduction: How channels become the pixel relevance that ranks pixels.
        batch_size: Perturbed images per forward pass (None: automatic).
        channels_last: Run the forward passes with the model's 4-D weights and the images in
            channels-last memory format (faster convolutions and pooling on CPU; scores differ
            from the contiguous ones in the last bits).

    Returns:
        The :class:`Curve`: fractions ``(K + 1,)`` and scores ``(N, K + 1)``.
    """
    if mode not in _MODES:
        raise InvalidOptionError(f"mode={mode!r}; accepted: {accepted(_MODES)}")
    require_float("step", step, 0.0, exclusive=True, maximum=1.0)
    if inputs.ndim != 4:
        raise InvalidOptionError(f"inputs must be (N, C, H, W), got {tuple(inputs.shape)}")
    relevance = relevance_map(attributions, reduction)
    if relevance.shape != (inputs.shape[0], *inputs.shape[2:]):
        raise InvalidOptionError(
            f"attributions of shape {tuple(attributions.shape)} do not fit inputs of shape "
            f"{tuple(inputs.shape)}"
        )
    count, pixels = inputs.shape[0], inputs.shape[2] * inputs.shape[3]
    stride = max(1, round(step * pixels))
    steps = math.ceil(pixels / stride)
    changed = (torch.arange(steps + 1, device=inputs.device) * stride).clamp_max(pixels)
    ranks = _pixel_ranks(relevance.to(inputs.device)).view(count, 1, *inputs.shape[2:])
    chosen: SubstrateSpec = "zeros" if mode == "deletion" else "blur"
    background = make_substrate(inputs, chosen if substrate is None else substrate, blur_sigma)
    first, second = (background, inputs) if mode == "deletion" else (inputs, background)
    engine = Engine(model, EngineOptions(batch_size=batch_size, channels_last=channels_last))
    chunk = batch_size or automatic_chunk_size(inputs.shape[1:], inputs.device)
    total = count * (steps + 1)
    scores = torch.empty(total, dtype=torch.float32, device=inputs.device)
    with (
        evaluation_state(model, keep_parameter_grads=True),
        channels_last_weights(model, channels_last),
        torch.no_grad(),
    ):
        outputs = engine.predict(inputs)
        resolved = resolve_target(target, outputs, count)
        if not isinstance(resolved, ClassTarget):
            raise InvalidTargetError("deletion/insertion need class targets, not a function")
        scorer = target_scorer(score, resolved)
        # the level that is the inputs themselves (deletion's first, insertion's last) was just
        # evaluated: its scores come from those outputs
        unchanged = 0 if mode == "deletion" else steps
        samples = torch.arange(count, device=inputs.device)
        scores[unchanged * count : (unchanged + 1) * count] = scorer(outputs, samples)
        first_point, last_point = (count, total) if mode == "deletion" else (0, total - count)
        for begin in range(first_point, last_point, chunk):
            point = torch.arange(begin, min(last_point, begin + chunk), device=inputs.device)
            sample, level = point % count, point // count
            swap = ranks[sample] < changed[level].view(-1, 1, 1, 1)
            perturbed = torch.where(swap, first[sample], second[sample])
            scores[point] = scorer(engine.forward(perturbed), sample)
    fractions = changed.float() / pixels
    return Curve(fractions, scores.view(steps + 1, count).T.contiguous())


class CurveOptions(TypedDict, total=False):
    """The keyword options of :func:`perturbation_curve` besides ``mode``."""

    target: TargetSpec
    step: float
    substrate: SubstrateSpec | None
    blur_sigma: float
    score: Score
    reduction: Reduction
    batch_size: int | None
    channels_last: bool


def deletion_auc(
    model: Callable[[Tensor], Tensor],
    inputs: Tensor,
    attributions: Tensor,
    **options: Unpack[CurveOptions],
) -> Tensor:
    """``(N,)`` area under the deletion curve: lower is more faithful.

    Options as in :func:`perturbation_curve` (the substrate defaults to ``"zeros"``).
    """
    curve = perturbation_curve(model, inputs, attributions, mode="deletion", **options)
    return curve.auc()


def insertion_auc(
    model: Callable[[Tensor], Tensor],
    inputs: Tensor,
    attributions: Tensor,
    **options: Unpack[CurveOptions],
) -> Tensor:
    """``(N,)`` area under the insertion curve: higher is more faithful.

    Options as in :func:`perturbation_curve` (the substrate defaults to ``"blur"``).
    """
    curve = perturbation_curve(model, inputs, attributions, mode="insertion", **options)
    return curve.auc()
