r"""Right for the Right Reasons on the shortcut scenes: train away from the marker.

The shortcut demo model (``demo:shapes-shortcut``) learns the class-coded marker instead of the
shape, so its accuracy collapses on the counterfactual split (markers of random classes). This
module trains the same architecture on the same scenes with an input-gradient penalty on each
scene's marker patch M (:func:`saliency.losses.input_gradient_penalty`), taken at a random point
x_α = x̃ + α(x − x̃), α ~ U(0, 1), of the path from the same scene without its marker x̃ to x:

.. math:: L = \mathrm{CE}(f_\theta(x), y) + \lambda\,\frac{1}{N}\sum_n
          \Big(\sum_{d \in M_n} (x_{nd} - \tilde x_{nd})\,
          \frac{\partial \log \hat p_{n y_n}}{\partial x_{nd}}(x_{\alpha})\Big)^2

whose expectation over α bounds the marker's whole effect on the label's log-probability,
(log p̂_y(x) − log p̂_y(x̃))² (the ``"direction"`` form; Ross et al.'s squared gradient per
feature, ``form="features"``, bounds it only loosely and did not stop the model from reading the
marker). Batch norm in the penalty's pass uses the cross-entropy batch's statistics
(:class:`SharedStatistics`). The module compares the counterfactual accuracy with the plain
shortcut model's::

    python -m saliency.demo.rrr                    # both models, full size (CPU: tens of minutes)
    python -m saliency.demo.rrr --smoke            # a few-second run of the same pipeline
    python -m saliency.demo.rrr --out DIR          # also write DIR/shapes-rrr.pt

Ross, Hughes & Doshi-Velez (2017), "Right for the Right Reasons: Training Differentiable Models
by Constraining their Explanations", IJCAI, arXiv:1703.03717.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any, Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from saliency.demo.models import (
    DEMO_MODELS,
    PENALTY_FORMS,
    PENALTY_SCORES,
    PenaltyForm,
    PenaltyScore,
)
from saliency.demo.scenes import Scenes, generate_scenes
from saliency.demo.training import (
    TrainConfig,
    TrainingStart,
    TrainResult,
    add_noise,
    augment,
    noise_level,
    save_weights,
    smoke_config,
    train,
)
from saliency.errors import InvalidOptionError
from saliency.losses import input_gradient_penalty
from saliency.model_state import evaluation_state
from saliency.validation import check_choice, require_float, require_int

__all__ = [
    "DEFAULT_PENALTY",
    "RightReasons",
    "RightReasonsRun",
    "SharedStatistics",
    "compare",
    "main",
    "path_points",
    "rrr_batches",
    "train_rrr",
    "unmarked_scenes",
]

PenaltyPoint = Literal["input", "path"]
PENALTY_POINTS: tuple[str, ...] = get_args(PenaltyPoint)
Statistics = Literal["shared", "running", "batch"]
STATISTICS: tuple[str, ...] = get_args(Statistics)

SHORTCUT_MODEL = "shapes-shortcut"
RRR_MODEL = "shapes-rrr"
_SPEC = DEMO_MODELS[RRR_MODEL]
DEFAULT_PENALTY = _SPEC.penalty
"""λ of the shipped model. Runs on 8,192 scenes × 3 epochs with the path penalty on 16 scenes per
batch (test / counterfactual accuracy; the plain shortcut model: 0.95 / 0.13):

* per-feature penalty on Σ_k log p̂_k, λ = 10: 0.93 / 0.13 after one epoch, at a penalty of
  0.006: the marker is still read; λ ≥ 300 keeps training at chance;
* squared derivative along the path of log p̂_y, λ = 1: 0.70 / 0.19 after one epoch;
* the same with λ = 10: 0.34 / 0.27, 0.46 / 0.41, 0.50 / 0.45 after epochs 1–3; the shapes,
  which the clean model learns over 20,480 scenes × 5 epochs, are not learned yet.

The shipped model is that last recipe over 20,480 scenes × 5 epochs: 0.926 / 0.915 (1,017 s on
2 cores); its mean penalty stayed below 0.01 per scene throughout.

Batch norm in the penalty's pass: with its batch statistics as constants the penalty can be
lowered by shrinking the weights, which the next forward undoes (after two epochs the
recalibrated eval-mode model read the marker: test 0.51, counterfactual 0.14); with running
statistics fixed for the whole step (BatchNorm in eval mode, recalibrated every 32 steps) even
plain training reached only 0.51 in three epochs."""


@dataclass(frozen=True)
class Comparison:
    """Accuracies of the plain shortcut model and the RRR model on the same splits."""

    shortcut: TrainResult
    rrr: TrainResult
    penalty: float

    def table(self) -> str:
        """A small Markdown table: model × split accuracy, and training time."""
        splits = sorted(self.shortcut.accuracy)
        lines = [
            "| model | " + " | ".join(splits) + " | training s |",
            "|---|" + "---|" * (len(splits) + 1),
        ]
        for name, result in (("shapes-shortcut", self.shortcut), ("shapes-rrr", self.rrr)):
            cells = " | ".join(f"{result.accuracy[s]:.4f}" for s in splits)
            lines.append(f"| {name} | {cells} | {result.seconds:.0f} |")
        return "\n".join(lines)


def rrr_batches(
    scenes: Scenes,
    unmarked: Scenes,
    config: TrainConfig,
    epoch: int,
    normalize: Callable[[Tensor], Tensor],
) -> Iterator[tuple[Tensor, Tensor, Tensor, Tensor]]:
    """``(inputs, labels, marker masks (B, 1, H, W), unmarked inputs)`` batches of one epoch.

    The same order, dihedral augmentation and pixel noise as
    :func:`saliency.demo.training.training_batches` (same generator draws), the augmentation applied
    to the images, their marker masks and the same scenes without markers (``unmarked``)
    together; the unmarked images get the same noise, so they differ only inside the mask.
    """
    generator = torch.Generator().manual_seed(config.seed * 1_000 + epoch)
    noise = torch.Generator().manual_seed(config.seed * 1_000 + epoch + 500)
    order = torch.randperm(len(scenes), generator=generator)
    for batch, begin in enumerate(range(0, len(order) - config.batch_size + 1, config.batch_size)):
        index = order[begin : begin + config.batch_size]
        stacked = torch.cat(
            [
                scenes.images[index],
                unmarked.images[index],
                scenes.marker_masks[index, None].to(torch.uint8),
            ],
            dim=1,
        )
        stacked = augment(stacked, generator)
        sigma = noise_level(config, epoch, batch)
        marked = add_noise(stacked[:, :3], sigma, noise)
        shared_noise = marked - stacked[:, :3].float().div(255.0)
        clean = stacked[:, 3:6].float().div(255.0) + shared_noise
        yield normalize(marked), scenes.labels[index], stacked[:, 6:].bool(), normalize(clean)


def unmarked_scenes(config: TrainConfig) -> Scenes:
    """The training scenes of ``config`` without their markers (same objects and backgrounds:
    the marker draws have their own random stream)."""
    spec = DEMO_MODELS[config.model]
    config_without = replace(spec.config, marker="none")
    return generate_scenes(config.images, seed=config.seed, config=config_without)


def path_points(inputs: Tensor, unmarked: Tensor, generator: torch.Generator) -> Tensor:
    """Random points x̃ + α(x − x̃), α ~ U(0, 1), between each unmarked image x̃ and its marked
    image x (they differ only inside the marker patch)."""
    alpha = torch.rand(len(inputs), 1, 1, 1, generator=generator).to(inputs.device)
    return unmarked + alpha.to(inputs.dtype) * (inputs - unmarked)


class SharedStatistics:
    """Each train-mode BatchNorm layer's batch mean and variance, recorded in the cross-entropy
    pass (as functions of the parameters, not detached) and used by the penalty's pass.

    The penalty then sees exactly the per-sample function that the training step fits: the same
    normalisation, no coupling between the penalty's points through their own batch statistics,
    and the dependence of the statistics on the weights (without it, shrinking a layer's weights
    seems to shrink the input gradient, but batch norm undoes it in the next step).
    """

    def __init__(self, model: nn.Module) -> None:
        self.layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        self.recorded: dict[nn.Module, tuple[Tensor, Tensor]] = {}

    @contextmanager
    def record(self) -> Iterator[None]:
        """Record the statistics of the forward passes inside (the last one counts)."""
        handles = [m.register_forward_pre_hook(self._record) for m in self.layers if m.training]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def _record(self, module: nn.Module, args: tuple[Tensor, ...]) -> None:
        values = args[0]
        dims = [0, *range(2, values.ndim)]
        self.recorded[module] = (values.mean(dims), values.var(dims, unbiased=False))

    @contextmanager
    def replay(self) -> Iterator[None]:
        """Normalise with the recorded statistics (running statistics untouched); BatchNorm
        forwards are patched by instance attribute and restored in ``finally``."""
        try:
            for module in self.layers:
                if module in self.recorded:
                    forward = partial(_normalise, module, *self.recorded[module])
                    module.__dict__["forward"] = forward
            yield
        finally:
            for module in self.layers:
                module.__dict__.pop("forward", None)


def _normalise(
    module: nn.modules.batchnorm._BatchNorm, mean: Tensor, var: Tensor, values: Tensor
) -> Tensor:
    shape = (1, -1) + (1,) * (values.ndim - 2)
    normalised = (values - mean.view(shape)) * torch.rsqrt(var.view(shape) + module.eps)
    if module.weight is not None:
        normalised = normalised * module.weight.view(shape)
    if module.bias is not None:
        normalised = normalised + module.bias.view(shape)
    return normalised


@contextmanager
def penalty_statistics(
    model: nn.Module, statistics: Statistics, shared: SharedStatistics
) -> Iterator[None]:
    """The batch-norm behaviour of the penalty's forward pass.

    * ``"shared"``: the cross-entropy batch's statistics (:class:`SharedStatistics`).
    * ``"batch"``: plain train mode, the penalty points' own batch statistics; the input
      gradient also flows through them, and the network learns to make it small there: the
      marker penalty of such a model was 20× larger in eval mode than in train mode, and it
      still followed the marker on the counterfactual split.
    * ``"running"``: eval mode (running statistics). The network then learns to make its
      eval-mode function flat while fitting the labels with batch statistics: test accuracy
      collapsed (0.28).
    """
    if statistics == "shared":
        with shared.replay():
            yield
    elif statistics == "running":
        with evaluation_state(model, keep_parameter_grads=True):
            yield
    else:
        yield


@dataclass(frozen=True)
class RightReasons:
    r"""The RRR loss, a :data:`~saliency.demo.training.Loss`: cross-entropy plus λ times the
    input-gradient penalty on each scene's marker patch (see the module docstring).

    The defaults are the recipe of the shipped ``demo:shapes-rrr`` (``DEMO_MODELS["shapes-rrr"]``).

    Attributes:
        penalty: λ.
        at: where the input gradient is taken. ``"input"``: at the training image itself (Ross
            et al.). ``"path"``: at a random point x̃ + α(x − x̃), α ~ U(0, 1), of the straight
            path from x̃ — the same scene without its marker — to x: an unbiased one-sample
            estimate of the penalty integrated over that path. A ReLU network can hide a marker
            from the gradient at x (units switched off by the marker colour have an exactly zero
            gradient), not along the whole path.
        form: ``"features"``: Ross et al.'s squared gradient per input feature of the patch;
            ``"direction"``: the squared derivative along x − x̃ (``direction=`` of
            :func:`~saliency.losses.input_gradient_penalty`), whose mean over the path bounds
            the marker's whole effect on the score. The per-feature penalty bounds it only
            through |x − x̃| ≈ 40 (normalised units): at a penalty of 0.006 the model still
            read the marker (test 0.93, counterfactual 0.13 after one epoch).
        score: the differentiated score: ``"all"``, Σ_k log p̂_k (Ross et al.), or ``"label"``,
            the label's log-probability.
        statistics: how batch norm normalises in the penalty's forward pass (see
            :func:`penalty_statistics`).
        penalty_samples: take the penalty on the first this many scenes of each batch (None:
            all). Its double backward dominates the cost of a step; the penalty is a mean over
            scenes, so a subset estimates it without bias at a fraction of the cost.
        penalty_ramp: share of training over which λ ramps up linearly from 0 (0: constant).
    """

    penalty: float = DEFAULT_PENALTY
    at: PenaltyPoint = "path"
    form: PenaltyForm = _SPEC.penalty_form
    score: PenaltyScore = _SPEC.penalty_score
    statistics: Statistics = "shared"
    penalty_samples: int | None = _SPEC.penalty_samples
    penalty_ramp: float = 0.0

    def __post_init__(self) -> None:
        require_float("penalty", self.penalty, 0.0)
        check_choice("at", self.at, PenaltyPoint)
        check_choice("form", self.form, PenaltyForm)
        check_choice("score", self.score, PenaltyScore)
        check_choice("statistics", self.statistics, Statistics)
        require_int("penalty_samples", self.penalty_samples, 1, none="every scene of the batch")
        require_float("penalty_ramp", self.penalty_ramp, 0.0, maximum=1.0)

    def __call__(self, start: TrainingStart, config: TrainConfig) -> RightReasonsRun:
        return RightReasonsRun(self, start, config)


class RightReasonsRun:
    """The RRR loss of one run: the marker-free twins of its scenes, the random stream of the
    path points and the batch-norm statistics shared by the two passes of a step."""

    def __init__(self, loss: RightReasons, start: TrainingStart, config: TrainConfig) -> None:
        self.loss, self.start, self.config = loss, start, config
        self.unmarked = unmarked_scenes(config)
        self.generator = torch.Generator().manual_seed(config.seed + 7_919)
        self.shared = SharedStatistics(start.model)
        self.chosen = slice(0, loss.penalty_samples)

    def batches(self, epoch: int) -> Iterator[tuple[Tensor, Tensor, Tensor, Tensor]]:
        return rrr_batches(
            self.start.scenes, self.unmarked, self.config, epoch, self.start.normalize
        )

    def __call__(self, batch: tuple[Tensor, ...]) -> tuple[Tensor, Mapping[str, float]]:
        inputs, labels, masks, clean = batch
        model, loss, chosen = self.start.model, self.loss, self.chosen
        with self.shared.record() if loss.statistics == "shared" else nullcontext():
            right_answers = F.cross_entropy(model(inputs), labels)
        subset, subset_clean = inputs[chosen], clean[chosen]
        points = subset if loss.at == "input" else path_points(subset, subset_clean, self.generator)
        with penalty_statistics(model, loss.statistics, self.shared):
            wrong_reasons = input_gradient_penalty(
                model,
                points,
                labels[chosen] if loss.score == "label" else None,
                masks[chosen],
                direction=subset - subset_clean if loss.form == "direction" else None,
            )
        ramp = _ramp(self.start.schedule.last_epoch, self.start.steps, loss.penalty_ramp)
        total = right_answers + loss.penalty * ramp * wrong_reasons
        return total, {"penalty": float(wrong_reasons.detach())}


def train_rrr(
    config: TrainConfig,
    penalty: float = DEFAULT_PENALTY,
    *,
    at: PenaltyPoint = "path",
    form: PenaltyForm = _SPEC.penalty_form,
    score: PenaltyScore = _SPEC.penalty_score,
    statistics: Statistics = "shared",
    penalty_samples: int | None = _SPEC.penalty_samples,
    penalty_ramp: float = 0.0,
    log: Callable[[str], None] | None = None,
) -> TrainResult:
    """Train ShapesNet on ``config``'s marker scenes with the RRR penalty on the marker patches:
    :func:`saliency.demo.training.train` with the :class:`RightReasons` loss.

    The defaults are the recipe of the shipped ``demo:shapes-rrr`` (``DEMO_MODELS["shapes-rrr"]``).
    Same scenes, initial weights, batch order, augmentation, optimiser and schedule as the plain
    training of ``config``; only the loss gains ``penalty ×`` the input-gradient penalty. The
    result is the ``shapes-rrr`` model (its config names it).

    Args:
        config: the shortcut model's training configuration (``shapes-shortcut`` or
            ``shapes-rrr``: the same marker scenes).
        penalty: λ; this and the other options are those of :class:`RightReasons`.
        at: where the input gradient is taken.
        form: the penalty's form.
        score: the differentiated score.
        statistics: batch norm in the penalty's pass.
        penalty_samples: scenes of each batch the penalty is taken on (None: all).
        penalty_ramp: share of training over which λ ramps up from 0.
        log: receives progress lines (with the mean penalty of each epoch).
    """
    loss = RightReasons(penalty, at, form, score, statistics, penalty_samples, penalty_ramp)
    if DEMO_MODELS[config.model].config != _SPEC.config:
        raise InvalidOptionError(
            f"RRR trains on the marker scenes of {SHORTCUT_MODEL!r} and {RRR_MODEL!r}, not "
            f"those of {config.model!r}"
        )
    return train(replace(config, model=RRR_MODEL), loss, log)


def _ramp(step: int, total: int, share: float) -> float:
    """λ's factor at ``step``: linear from 0 to 1 over the first ``share`` of ``total`` steps."""
    if share <= 0:
        return 1.0
    return min(1.0, step / (share * total))


def compare(
    config: TrainConfig,
    penalty: float = DEFAULT_PENALTY,
    *,
    log: Callable[[str], None] | None = None,
    **options: Any,
) -> Comparison:
    """Train the plain shortcut model and the RRR model (``options``: those of
    :func:`train_rrr`) from the same seed and scenes."""
    if config.model != SHORTCUT_MODEL:
        raise InvalidOptionError(f"RRR is demonstrated on {SHORTCUT_MODEL!r}, not {config.model!r}")
    shortcut = train(config, log=log)
    return Comparison(shortcut, train_rrr(config, penalty, log=log, **options), float(penalty))


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m saliency.demo.rrr [--penalty λ] [--smoke] [--out DIR]``."""
    parser = argparse.ArgumentParser(
        prog="python -m saliency.demo.rrr", description=(__doc__ or "").split("\n\n")[0]
    )
    parser.add_argument("--penalty", type=float, default=DEFAULT_PENALTY, help="λ")
    parser.add_argument("--at", choices=PENALTY_POINTS, default="path")
    parser.add_argument("--form", choices=PENALTY_FORMS, default=_SPEC.penalty_form)
    parser.add_argument("--score", choices=PENALTY_SCORES, default=_SPEC.penalty_score)
    parser.add_argument("--statistics", choices=STATISTICS, default="shared")
    parser.add_argument("--penalty-samples", type=int, default=_SPEC.penalty_samples)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--images", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--eval-images", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--rrr-only", action="store_true", help="skip the plain shortcut model")
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument(
        "--out", type=Path, default=None, help="write OUT/shapes-rrr.pt and its manifest entry"
    )
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    config = (
        smoke_config(SHORTCUT_MODEL, args.seed)
        if args.smoke
        else TrainConfig(SHORTCUT_MODEL, args.seed, _SPEC.train_images, _SPEC.epochs)
    )
    overrides = {
        name: getattr(args, name)
        for name in ("images", "epochs", "eval_images")
        if getattr(args, name) is not None
    }
    config = replace(config, **overrides)
    options = {
        name: getattr(args, name)
        for name in ("at", "form", "score", "statistics", "penalty_samples")
    }
    if args.rrr_only:
        result = train_rrr(config, args.penalty, log=print, **options)
    else:
        comparison = compare(config, args.penalty, log=print, **options)
        print(comparison.table())
        result = comparison.rrr
    if args.out is not None:
        print(f"wrote {save_weights(result, args.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
