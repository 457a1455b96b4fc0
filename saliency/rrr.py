r"""Right for the Right Reasons on the shortcut scenes: train away from the marker.

The shortcut demo model (``demo:shapes-shortcut``) learns the class-coded marker instead of the
shape, so its accuracy collapses on the counterfactual split (markers of random classes). This
module trains the same architecture, on the same scenes and schedule, with the input-gradient
penalty of Ross et al. (2017) on each scene's marker patch:

.. math:: L = \mathrm{CE}(f_\theta(x), y) + \lambda\,\frac{1}{N}\sum_n \sum_{d \in M_n}
          \Big(\frac{\partial}{\partial x_{nd}} \sum_k \log \hat p_{nk}\Big)^2

(:func:`saliency.losses.input_gradient_penalty`), and compares the counterfactual accuracy with
the plain shortcut model's::

    python -m saliency.rrr                    # both models, full size (CPU: tens of minutes)
    python -m saliency.rrr --smoke            # a few-second run of the same pipeline
    python -m saliency.rrr --out DIR          # also write DIR/shapes-rrr.pt

Ross, Hughes & Doshi-Velez (2017), "Right for the Right Reasons: Training Differentiable Models
by Constraining their Explanations", IJCAI, arXiv:1703.03717.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from saliency.demo_models import DEMO_MODELS
from saliency.errors import InvalidOptionError, accepted
from saliency.losses import input_gradient_penalty
from saliency.model_state import evaluation_state
from saliency.shapes import Scenes, generate_scenes
from saliency.training import (
    TrainConfig,
    TrainResult,
    add_noise,
    augment,
    finish_training,
    noise_level,
    save_weights,
    smoke_config,
    start_training,
    train,
)

__all__ = [
    "DEFAULT_PENALTY",
    "compare",
    "main",
    "path_points",
    "rrr_batches",
    "train_rrr",
    "unmarked_scenes",
]

PenaltyPoint = Literal["input", "path"]
Statistics = Literal["detached", "running", "batch"]
STATISTICS: tuple[str, ...] = ("detached", "running", "batch")

SHORTCUT_MODEL = "shapes-shortcut"
RRR_MODEL = "shapes-rrr"
DEFAULT_PENALTY = DEMO_MODELS[RRR_MODEL].penalty
"""λ. Measured along the path from the unmarked scene, the masked squared gradient is ~0.3–1 per
scene for a model that learned the shapes without markers (its corners are not flat) and ~1–5
for one that reads the marker. With λ ≥ 300 training stays at chance; with λ ≤ 1 the model
still reads the marker (its penalty settles near 0.1, which bounds the marker's effect on the
log-probabilities only loosely) and its eval-mode batch-norm statistics drift away from the
train-mode ones (2 of 5 epochs: train-mode test accuracy 0.79–0.85, eval mode at chance)."""


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
    :func:`saliency.training.training_batches` (same generator draws), the augmentation applied
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


@contextmanager
def penalty_statistics(model: nn.Module, statistics: Statistics) -> Iterator[None]:
    """The batch-norm behaviour of the penalty's forward pass.

    * ``"detached"``: each BatchNorm layer in train mode normalises with the current batch's mean
      and variance as constants (no gradient through them, running statistics not updated):
      the same per-sample function as the cross-entropy pass, whose input gradient cannot be
      shrunk through the batch statistics.
    * ``"batch"``: plain train mode; the input gradient also flows through the batch mean and
      variance, and the network learns to make it small there: the marker penalty of such a
      model was 20× larger in eval mode than in train mode, and it still followed the marker
      on the counterfactual split.
    * ``"running"``: eval mode (running statistics). The network then learns to make its
      eval-mode function flat while fitting the labels with batch statistics: test accuracy
      collapsed (0.28).

    BatchNorm forwards are patched by instance attribute and restored in ``finally``.
    """
    if statistics == "batch":
        yield
        return
    if statistics == "running":
        with evaluation_state(model, keep_parameter_grads=True):
            yield
        return
    patched = [
        m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training
    ]
    try:
        for module in patched:
            module.__dict__["forward"] = partial(_detached_batch_norm, module)
        yield
    finally:
        for module in patched:
            module.__dict__.pop("forward", None)


def _detached_batch_norm(module: nn.modules.batchnorm._BatchNorm, x: Tensor) -> Tensor:
    dims = [0, *range(2, x.ndim)]
    values = x.detach()
    mean, var = values.mean(dims), values.var(dims, unbiased=False)
    return F.batch_norm(x, mean, var, module.weight, module.bias, False, 0.0, module.eps)


def train_rrr(
    config: TrainConfig,
    penalty: float = DEFAULT_PENALTY,
    *,
    at: PenaltyPoint = "path",
    statistics: Statistics = "detached",
    penalty_samples: int | None = None,
    penalty_ramp: float = 0.0,
    log: Callable[[str], None] | None = None,
) -> TrainResult:
    """Train ShapesNet on ``config``'s scenes with the RRR penalty on the marker patches.

    Mirrors :func:`saliency.training.train` (same scenes, initial weights, batch order,
    augmentation, optimiser and schedule); only the loss gains ``penalty ×`` the input-gradient
    penalty on the marker masks.

    Args:
        config: the shortcut model's training configuration.
        penalty: λ.
        at: where the input gradient is taken. ``"input"``: at the training image itself (Ross
            et al.; one forward pass for both terms). ``"path"``: at a random point
            x̃ + α(x − x̃), α ~ U(0, 1), of the straight path from x̃ — the same scene without
            its marker — to x, an unbiased one-sample estimate of the squared gradient
            integrated over that path (one more forward pass). A ReLU network can hide a marker
            from the gradient at x (units switched off by the marker colour have an exactly zero
            gradient), not along the whole path; and by the gradient theorem, a small penalty
            along the path bounds how much the marker changes the output.
        statistics: how batch norm normalises in the penalty's forward pass (see
            :func:`penalty_statistics`).
        penalty_samples: take the penalty on the first this many scenes of each batch (None:
            all). Its double backward dominates the cost of a step; the penalty is a mean over
            scenes, so a subset estimates it without bias at a fraction of the cost.
        penalty_ramp: share of training over which λ ramps up linearly from 0 (0: constant).
        log: receives progress lines.
    """
    if statistics not in STATISTICS:
        raise InvalidOptionError(f"statistics={statistics!r}; accepted: {accepted(STATISTICS)}")
    if isinstance(penalty, bool) or not isinstance(penalty, int | float) or penalty < 0:
        raise InvalidOptionError(f"penalty={penalty!r}; accepted: a number ≥ 0")
    if at not in ("input", "path"):
        raise InvalidOptionError(f"at={at!r}; accepted: 'input', 'path'")
    started, cpu_started = time.perf_counter(), time.process_time()
    scenes, model, optimiser, schedule, normalize, steps = start_training(config)
    unmarked = unmarked_scenes(config)
    generator = torch.Generator().manual_seed(config.seed + 7_919)
    losses = []
    for epoch in range(config.epochs):
        model.train()
        total, reasons, batches = 0.0, 0.0, 0
        for inputs, labels, masks, clean in rrr_batches(scenes, unmarked, config, epoch, normalize):
            if at == "input" and statistics == "batch":
                wrong_reasons, outputs = input_gradient_penalty(
                    model, inputs, None, masks, return_outputs=True
                )
                right_answers = F.cross_entropy(outputs, labels)
            else:
                right_answers = F.cross_entropy(model(inputs), labels)
                chosen = slice(0, penalty_samples)
                subset, subset_masks = inputs[chosen], masks[chosen]
                points = subset if at == "input" else path_points(subset, clean[chosen], generator)
                with penalty_statistics(model, statistics):
                    wrong_reasons = input_gradient_penalty(model, points, None, subset_masks)
            weight = penalty * _ramp(schedule.last_epoch, steps, penalty_ramp)
            loss = right_answers + weight * wrong_reasons
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
            total += float(loss.detach())
            reasons += float(wrong_reasons.detach())
            batches += 1
        losses.append(total / batches)
        if log is not None:
            log(
                f"shapes-rrr epoch {epoch + 1}/{config.epochs}: loss {losses[-1]:.4f}, "
                f"penalty {reasons / batches:.3g} ({time.perf_counter() - started:.0f} s)"
            )
    # shapes-rrr has the shortcut model's evaluation splits
    return finish_training(
        model, replace(config, model=RRR_MODEL), (started, cpu_started), losses, log
    )


def _ramp(step: int, total: int, share: float) -> float:
    """λ's factor at ``step``: linear from 0 to 1 over the first ``share`` of ``total`` steps."""
    if share <= 0:
        return 1.0
    return min(1.0, step / (share * total))


def compare(
    config: TrainConfig,
    penalty: float = DEFAULT_PENALTY,
    *,
    at: PenaltyPoint = "path",
    statistics: Statistics = "detached",
    log: Callable[[str], None] | None = None,
) -> Comparison:
    """Train the plain shortcut model and the RRR model from the same seed and scenes."""
    if config.model != SHORTCUT_MODEL:
        raise InvalidOptionError(f"RRR is demonstrated on {SHORTCUT_MODEL!r}, not {config.model!r}")
    shortcut = train(config, log=log)
    return Comparison(
        shortcut, train_rrr(config, penalty, at=at, statistics=statistics, log=log), float(penalty)
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m saliency.rrr [--penalty λ] [--smoke] [--out DIR]``."""
    parser = argparse.ArgumentParser(
        prog="python -m saliency.rrr", description=(__doc__ or "").split("\n\n")[0]
    )
    parser.add_argument("--penalty", type=float, default=DEFAULT_PENALTY, help="λ")
    parser.add_argument("--at", choices=("input", "path"), default="path")
    parser.add_argument("--statistics", choices=STATISTICS, default="detached")
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
    spec = DEMO_MODELS[SHORTCUT_MODEL]
    config = (
        smoke_config(SHORTCUT_MODEL, args.seed)
        if args.smoke
        else TrainConfig(SHORTCUT_MODEL, args.seed, spec.train_images, spec.epochs)
    )
    overrides = {
        name: getattr(args, name)
        for name in ("images", "epochs", "eval_images")
        if getattr(args, name) is not None
    }
    config = replace(config, **overrides)
    if args.rrr_only:
        result = train_rrr(config, args.penalty, at=args.at, statistics=args.statistics, log=print)
    else:
        comparison = compare(
            config, args.penalty, at=args.at, statistics=args.statistics, log=print
        )
        print(comparison.table())
        result = comparison.rrr
    if args.out is not None:
        print(f"wrote {save_weights(result, args.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
