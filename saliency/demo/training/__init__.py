"""Reproducible training of the demo models on :mod:`saliency.demo.scenes` scenes.

The shipped weights come from exactly this command (one per model, each from its seed in a
few minutes on a 2-core CPU; the RRR model, whose steps take a double backward, in about half an
hour; see :mod:`saliency.demo.training.__main__`)::

    python -m saliency.demo.training --model shapes --out saliency/demo/weights/
    python -m saliency.demo.training --model shapes-shortcut --out saliency/demo/weights/
    python -m saliency.demo.training --model shapes-rrr --out saliency/demo/weights/
    python -m saliency.demo.training --model shapes-vit --threads 1 --out saliency/demo/weights/

:func:`train` draws ``config.images`` training scenes of the model's seed and trains
the model's architecture (:class:`ShapesNet`, or :class:`~saliency.demo.vit.ShapesViT` for
``shapes-vit``) for ``config.epochs`` passes with random dihedral augmentation (flips and 90°
rotations; every class is invariant to them, and the marker stays in a corner) and Gaussian pixel
noise (so that the model stays stable under SmoothGrad's noise), AdamW and a one-cycle learning
rate, then measures the accuracy on the test split (seed
:data:`~saliency.demo.scenes.TEST_SEED`) and, for the shortcut models, on the counterfactual
split; :func:`save_weights` writes ``<out>/<model>.pt`` and its entry of ``<out>/manifest.json``
(accuracies, seed, generator version, SHA-256, training time).

What is minimised is a :data:`Loss`: :class:`CrossEntropy` by default; the Right-for-the-Right-
Reasons model (:mod:`saliency.demo.rrr`) passes the cross-entropy plus its marker penalty.
"""

from __future__ import annotations

import json
import math
import platform
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from saliency.demo.models import DEMO_MODELS, demo_preprocess, sha256_file
from saliency.demo.scenes import CLASS_NAMES, GENERATOR_VERSION, TEST_SEED, Scenes, generate_scenes
from saliency.errors import InvalidOptionError, accepted
from saliency.output_files import write_atomic, write_text_atomic
from saliency.validation import require_int

__all__ = [
    "CrossEntropy",
    "Loss",
    "RunLoss",
    "TrainConfig",
    "TrainResult",
    "TrainingStart",
    "accuracy",
    "add_noise",
    "architecture",
    "augment",
    "evaluation_splits",
    "finish_training",
    "noise_level",
    "one_cycle",
    "save_weights",
    "smoke_config",
    "start_training",
    "train",
    "training_batches",
]


@dataclass(frozen=True)
class TrainConfig:
    """One training run.

    Attributes:
        model: A name in :data:`~saliency.demo.models.DEMO_MODELS`.
        seed: Seeds the training scenes, the initial weights and the batch order.
        images: Distinct training scenes.
        epochs: Passes over them.
        batch_size: Scenes per optimiser step.
        learning_rate: Peak of the one-cycle schedule (AdamW).
        weight_decay: AdamW weight decay.
        eval_images: Scenes of each evaluation split.
        noise: Largest σ of the Gaussian noise added to training images (pixel values in
            [0, 1]; see :func:`add_noise`).
        noise_ramp: Share of training over which that σ ramps up from 0 (:func:`noise_level`).
    """

    model: str
    seed: int = 0
    images: int = 16_384
    epochs: int = 4
    batch_size: int = 64
    learning_rate: float = 4e-3
    weight_decay: float = 5e-4
    eval_images: int = 2_000
    noise: float = 0.15
    noise_ramp: float = 0.5

    def __post_init__(self) -> None:
        if self.model not in DEMO_MODELS:
            raise InvalidOptionError(
                f"unknown demo model {self.model!r}; accepted: {accepted(DEMO_MODELS)}"
            )
        for name in ("images", "epochs", "batch_size", "eval_images"):
            require_int(name, getattr(self, name), 1)
        require_int("seed", self.seed, 0, TEST_SEED - 1)


def smoke_config(model: str, seed: int = 0) -> TrainConfig:
    """A few-second run of the full pipeline (for tests and CI)."""
    return TrainConfig(model=model, seed=seed, images=128, epochs=1, batch_size=32, eval_images=64)


@dataclass
class TrainResult:
    """What a run produced.

    Attributes:
        model: The trained model, in eval mode.
        config: The run's configuration.
        seconds: Wall time of data generation and training (evaluation excluded).
        accuracy: Accuracy per evaluation split (``"test"``, and ``"counterfactual"``).
        losses: Mean training loss per epoch.
        cpu_seconds: CPU time of this process over the same span as ``seconds`` (all threads);
            on a shared machine ``cpu_seconds / threads`` estimates the wall time on idle cores.
    """

    model: nn.Module
    config: TrainConfig
    seconds: float
    accuracy: dict[str, float]
    losses: list[float]
    cpu_seconds: float = 0.0


def augment(images: Tensor, generator: torch.Generator) -> Tensor:
    """Apply a random element of the dihedral group D4 (flip, then k·90° rotation) per image."""
    count = len(images)
    flip = (torch.rand(count, generator=generator) < 0.5).to(images.device)
    turns = torch.randint(0, 4, (count,), generator=generator).to(images.device)
    images = torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images)
    rotated = torch.stack([torch.rot90(images, k, dims=(-2, -1)) for k in range(4)])
    return rotated[turns, torch.arange(count, device=images.device)]


def add_noise(images: Tensor, max_sigma: float, generator: torch.Generator) -> Tensor:
    """Float images in [0, 1] plus Gaussian noise of a per-image σ ~ U(0, ``max_sigma``).

    Training with it keeps the model's prediction stable under the noise SmoothGrad adds
    (σ = 0.15 × the input's range by default); without it these flat-coloured scenes teach a
    model that collapses to chance under σ = 0.05.
    """
    floats = images.float().div(255.0)
    if max_sigma <= 0:
        return floats
    sigma = torch.rand((len(images), 1, 1, 1), generator=generator) * max_sigma
    return floats + sigma.to(images.device) * torch.randn(floats.shape, generator=generator).to(
        images.device
    )


def noise_level(config: TrainConfig, epoch: int, batch: int) -> float:
    """Largest training-noise σ at a batch: ramps linearly from 0 to ``config.noise``.

    The ramp spans the first ``config.noise_ramp`` of training, so the model first learns the
    shapes on clean scenes (with full noise from the start it stays at chance for epochs).
    """
    batches = max(1, config.images // config.batch_size)
    progress = (epoch * batches + batch) / (config.epochs * batches)
    if config.noise_ramp <= 0:
        return config.noise
    return config.noise * min(1.0, progress / config.noise_ramp)


def training_batches(
    scenes: Scenes, config: TrainConfig, epoch: int, normalize: Callable[[Tensor], Tensor]
) -> Iterator[tuple[Tensor, Tensor]]:
    """The shuffled, augmented, noisy, normalised ``(inputs, labels)`` batches of one epoch.

    Order and dihedral augmentation come from one seeded stream, the noise (σ up to
    :func:`noise_level`) from another.
    """
    generator = torch.Generator().manual_seed(config.seed * 1_000 + epoch)
    noise = torch.Generator().manual_seed(config.seed * 1_000 + epoch + 500)
    order = torch.randperm(len(scenes), generator=generator)
    for batch, begin in enumerate(range(0, len(order) - config.batch_size + 1, config.batch_size)):
        index = order[begin : begin + config.batch_size]
        images = augment(scenes.images[index], generator)
        sigma = noise_level(config, epoch, batch)
        yield normalize(add_noise(images, sigma, noise)), scenes.labels[index]


def one_cycle(step: int, total: int, warmup: float = 0.2, floor: float = 0.02) -> float:
    r"""Learning-rate factor: linear warm-up over ``warmup·total`` steps, then cosine decay.

    .. math:: \eta(t) = \frac{t + 1}{w} \ (t < w),\qquad
              \eta(t) = f + \frac{1 - f}{2}\Big(1 + \cos\frac{\pi (t - w)}{T - w}\Big)

    with ``w = max(1, ⌊warmup·T⌋)`` and floor ``f`` (Smith & Topin 2017, arXiv:1708.07120).
    """
    warm = max(1, int(warmup * total))
    if step < warm:
        return (step + 1) / warm
    progress = min(1.0, (step - warm) / max(1, total - warm))
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


@torch.no_grad()
def accuracy(model: nn.Module, scenes: Scenes, batch_size: int = 256) -> float:
    """Top-1 accuracy of ``model`` (in eval mode) on ``scenes``."""
    model.eval()
    normalize = demo_preprocess(scenes.config.size).normalize
    correct = 0
    for begin in range(0, len(scenes), batch_size):
        images = scenes.images[begin : begin + batch_size]
        labels = scenes.labels[begin : begin + batch_size]
        correct += int((model(normalize(images)).argmax(1) == labels).sum())
    return correct / len(scenes)


def evaluation_splits(config: TrainConfig) -> dict[str, Scenes]:
    """The test split, and the counterfactual split when the model has one."""
    spec = DEMO_MODELS[config.model]
    splits = {"test": generate_scenes(config.eval_images, seed=TEST_SEED, config=spec.config)}
    if spec.counterfactual is not None:
        splits["counterfactual"] = generate_scenes(
            config.eval_images, seed=TEST_SEED, config=spec.counterfactual
        )
    return splits


class TrainingStart(NamedTuple):
    """What every training run of a demo model starts from (same seed, same everything).

    Attributes:
        scenes: The training scenes of the model's seed.
        model: The freshly initialised architecture (:meth:`DemoModel.build`).
        optimiser: AdamW over its parameters.
        schedule: The one-cycle learning-rate schedule over every step.
        normalize: The demo input normalisation.
        steps: Optimiser steps of the whole run.
    """

    scenes: Scenes
    model: nn.Module
    optimiser: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LambdaLR
    normalize: Callable[[Tensor], Tensor]
    steps: int


def start_training(config: TrainConfig) -> TrainingStart:
    """Scenes, initial weights, optimiser and schedule of a run, all from ``config.seed``."""
    spec = DEMO_MODELS[config.model]
    scenes = generate_scenes(config.images, seed=config.seed, config=spec.config)
    torch.manual_seed(config.seed)
    model = spec.build()
    optimiser = torch.optim.AdamW(
        model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    steps = config.epochs * (config.images // config.batch_size)
    if steps == 0:
        raise InvalidOptionError(
            f"images={config.images} gives no full batch of batch_size={config.batch_size}"
        )
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda step: one_cycle(step, steps))
    normalize = demo_preprocess(spec.config.size).normalize
    return TrainingStart(scenes, model, optimiser, schedule, normalize, steps)


class RunLoss(Protocol):
    """The loss of one training run: its batches, and what each batch contributes."""

    def batches(self, epoch: int) -> Iterable[tuple[Tensor, ...]]:
        """The batches of one epoch (the model is in train mode)."""
        ...

    def __call__(self, batch: tuple[Tensor, ...]) -> tuple[Tensor, Mapping[str, float]]:
        """The batch's loss to minimise, and terms to log (as means over the epoch)."""
        ...


Loss = Callable[[TrainingStart, TrainConfig], RunLoss]
"""Makes the loss of a run from its start (scenes, model, optimiser, schedule) and config."""


class CrossEntropy:
    """The plain loss: cross-entropy on :func:`training_batches`."""

    def __init__(self, start: TrainingStart, config: TrainConfig) -> None:
        self.start, self.config = start, config

    def batches(self, epoch: int) -> Iterator[tuple[Tensor, Tensor]]:
        return training_batches(self.start.scenes, self.config, epoch, self.start.normalize)

    def __call__(self, batch: tuple[Tensor, ...]) -> tuple[Tensor, Mapping[str, float]]:
        inputs, labels = batch
        return F.cross_entropy(self.start.model(inputs), labels), {}


def train(
    config: TrainConfig, loss: Loss = CrossEntropy, log: Callable[[str], None] | None = None
) -> TrainResult:
    """Train a demo model from its seed and measure its accuracy on the evaluation splits.

    Args:
        config: The run; its model names the scenes, the architecture and the evaluation splits.
        loss: What is minimised (default :class:`CrossEntropy`); made once the run has started.
        log: Receives one line per epoch (mean loss and the loss's logged terms) and a summary.
    """
    started, cpu_started = time.perf_counter(), time.process_time()
    start = start_training(config)
    run = loss(start, config)
    model, optimiser, schedule = start.model, start.optimiser, start.schedule
    losses = []
    for epoch in range(config.epochs):
        model.train()
        total, batches = 0.0, 0
        terms: dict[str, float] = {}
        for batch in run.batches(epoch):
            value, logged = run(batch)
            optimiser.zero_grad(set_to_none=True)
            value.backward()
            optimiser.step()
            schedule.step()
            total, batches = total + float(value.detach()), batches + 1
            for name, term in logged.items():
                terms[name] = terms.get(name, 0.0) + term
        losses.append(total / batches)
        if log is not None:
            elapsed = time.perf_counter() - started
            shown = "".join(f", {name} {term / batches:.3g}" for name, term in terms.items())
            log(
                f"{config.model} epoch {epoch + 1}/{config.epochs}: loss {losses[-1]:.4f}"
                f"{shown} ({elapsed:.0f} s)"
            )
    return finish_training(model, config, (started, cpu_started), losses, log)


def finish_training(
    model: nn.Module,
    config: TrainConfig,
    started: tuple[float, float],
    losses: list[float],
    log: Callable[[str], None] | None,
) -> TrainResult:
    """Time a finished run, measure the model on ``config``'s evaluation splits, and log it.

    Args:
        model: The trained model (left in eval mode).
        config: The run's configuration (its model names the evaluation splits).
        started: ``time.perf_counter()`` and ``time.process_time()`` at the start of the run.
        losses: Mean training loss per epoch.
        log: Receives the summary line.
    """
    seconds = time.perf_counter() - started[0]
    cpu_seconds = time.process_time() - started[1]
    model.eval()
    scores = {name: accuracy(model, split) for name, split in evaluation_splits(config).items()}
    if log is not None:
        log(
            f"{config.model}: {seconds:.0f} s ({cpu_seconds:.0f} CPU s), accuracy "
            + ", ".join(f"{name} {value:.4f}" for name, value in scores.items())
        )
    return TrainResult(model, config, seconds, scores, losses, cpu_seconds)


def save_weights(result: TrainResult, out: str | Path) -> Path:
    """Write ``<out>/<file>`` and update the model's entry in ``<out>/manifest.json``."""
    directory = Path(out)
    directory.mkdir(parents=True, exist_ok=True)
    spec = DEMO_MODELS[result.config.model]
    path = directory / spec.file
    state = {k: v.detach().cpu().contiguous() for k, v in result.model.state_dict().items()}
    write_atomic(path, lambda handle: torch.save(state, handle))
    manifest_path = directory / "manifest.json"
    manifest: dict[str, Any] = {"format": 1, "models": {}}
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    manifest["models"][spec.name] = {
        "file": spec.file,
        "sha256": sha256_file(path),
        "bytes": path.stat().st_size,
        "architecture": spec.describe(),
        "class_names": list(CLASS_NAMES),
        "seed": result.config.seed,
        "generator_version": GENERATOR_VERSION,
        "test_seed": TEST_SEED,
        "accuracy": {name: round(value, 4) for name, value in result.accuracy.items()},
        "training": asdict(result.config),
        "training_seconds": round(result.seconds, 1),
        "training_cpu_seconds": round(result.cpu_seconds, 1),
        "final_loss": round(result.losses[-1], 5),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "penalty": spec.penalty,
        **(
            {
                "penalty_form": spec.penalty_form,
                "penalty_score": spec.penalty_score,
                "penalty_samples": spec.penalty_samples,
            }
            if spec.penalty
            else {}
        ),
        "command": f"python -m saliency.demo.training --model {spec.name} "
        f"--seed {result.config.seed}",
    }
    manifest["models"] = dict(sorted(manifest["models"].items()))
    write_text_atomic(manifest_path, json.dumps(manifest, indent=2) + "\n")
    return path
