"""saliency.metrics against Quantus on the same model, inputs and maps: time and agreement.

    python benchmarks/metrics_quantus.py [--images 16] [--size 32] [--repeats 3] [--threads 1]
                                         [--smoke]

One model (a small ReLU CNN with random weights, one input channel so that Quantus's
feature-wise definitions equal saliency's pixel-wise ones), one batch of inputs in [0, 1], one
set of gradient maps, box masks. For each metric both implementations run on the same data,
``--repeats`` rounds after a warm-up, alternating the two, and the fastest round is kept. The
table gives the seconds, the ratio Quantus / saliency, and the largest difference between their
results (``—`` where the two draw different random numbers: MPRT's re-initialised weights, the
random logit's other classes). ROAD runs without imputation noise (Quantus's noise is unseeded);
deletion and insertion change one pixel per step, Quantus's batched pixel flipping and its
region perturbation with 1-pixel patches in LeRF order (which is insertion read backwards).

Run it on an idle machine: numbers from shared cores are only indicative (the ratio survives
noise better than the seconds do).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

import saliency
from saliency import metrics


@dataclass(frozen=True)
class Case:
    name: str
    ours: Callable[[], Any]
    theirs: Callable[[], Any]
    difference: Callable[[Any, Any], float] | None


def make_model(classes: int = 10) -> nn.Module:
    """A small ReLU CNN. Its first (unpadded) convolution gives pixel (0, 0) zero weight: Quantus
    0.6.0's input shift leaves that one element unshifted, which would otherwise decide its
    input-invariance verdicts."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(4),
        nn.Flatten(),
        nn.Linear(128, classes),
    )
    with torch.no_grad():
        model[0].weight[:, :, 0, 0] = 0.0
    return model.eval()


def gap(ours: Any, theirs: Any) -> float:
    return float(np.max(np.abs(np.asarray(ours, dtype=np.float64) - np.asarray(theirs))))


def cases(images: int, size: int) -> list[Case]:
    import quantus

    model = make_model()
    generator = torch.Generator().manual_seed(1)
    x = torch.rand(images, 1, size, size, generator=generator)
    y = model(x).argmax(1)
    maps = saliency.explain(model, x, "gradient", y).attributions
    masks = torch.zeros(images, 1, size, size, dtype=torch.bool)
    masks[:, :, size // 4 : size // 2, size // 4 : 3 * size // 4] = True
    pixels = size * size
    data: dict[str, Any] = {
        "model": model,
        "x_batch": x.numpy(),
        "y_batch": y.numpy(),
        "a_batch": maps.numpy(),
        "device": "cpu",
        "batch_size": images,
    }
    segments = {"s_batch": masks.numpy().astype(np.float32)}
    first = {"x_batch": x.numpy()[:1], "y_batch": y.numpy()[:1], "a_batch": maps.numpy()[:1]}
    percentages = list(range(1, 100, 2))

    def explain_func(model: nn.Module, inputs: Any, targets: Any, **_: Any) -> np.ndarray:
        batch, classes = torch.as_tensor(inputs), torch.as_tensor(targets)
        return saliency.explain(model, batch, "gradient", classes).attributions.numpy()

    explained = {**data, "explain_func": explain_func}
    one_pixel = {"target": y, "step": 1 / pixels, "substrate": 0.0}

    def insertion_as_lerf() -> Tensor:
        curve = metrics.perturbation_curve(model, x, maps, mode="insertion", **one_pixel).scores
        return curve[:, -1:] - curve[:, [pixels - k for k in range(1, pixels + 1)]]

    def road_means() -> list[float]:
        curve = metrics.road_curve(
            model,
            x,
            maps,
            fractions=[p / 100 for p in percentages],
            target=y,
            noise=0.0,
            score="accuracy",
        )
        return curve.scores.mean(dim=0).tolist()

    def quantus_road() -> list[float]:
        scores = quantus.ROAD(percentages=percentages, noise=0.0, abs=True)(**data)
        return [scores[p] for p in percentages]

    def mprt_last(result: dict[str, Any]) -> Any:
        return list(result.values())[-1]

    return [
        Case(
            "pointing game",
            lambda: metrics.pointing_game(maps, masks),
            lambda: quantus.PointingGame(abs=True)(**data, **segments),
            gap,
        ),
        Case(
            "relevance mass",
            lambda: metrics.relevance_mass(maps, masks),
            lambda: quantus.RelevanceMassAccuracy(abs=True)(**data, **segments),
            gap,
        ),
        Case(
            "relevance rank",
            lambda: metrics.relevance_rank(maps, masks),
            lambda: quantus.RelevanceRankAccuracy(abs=True)(**data, **segments),
            gap,
        ),
        Case(
            "sparseness",
            lambda: metrics.sparseness(maps),
            lambda: quantus.Sparseness()(**data),
            gap,
        ),
        Case(
            "complexity",
            lambda: metrics.complexity(maps),
            lambda: quantus.Complexity()(**data),
            gap,
        ),
        Case(
            f"deletion, 1 px/step ({pixels} steps)",
            lambda: metrics.perturbation_curve(model, x, maps, **one_pixel).scores[:, 1:],
            lambda: quantus.PixelFlipping(features_in_step=1, perturb_baseline=0.0, abs=True)(
                **data
            ),
            gap,
        ),
        Case(
            "deletion, 1 px/step, 1 image (Quantus #96's case)",
            lambda: metrics.perturbation_curve(
                model, x[:1], maps[:1], **{**one_pixel, "target": y[:1]}
            ).scores[:, 1:],
            lambda: quantus.PixelFlipping(features_in_step=1, perturb_baseline=0.0, abs=True)(
                **{**data, **first}
            ),
            gap,
        ),
        Case(
            f"insertion, 1 px/step ({pixels} steps)",
            insertion_as_lerf,
            lambda: quantus.RegionPerturbation(
                patch_size=1,
                order="lerf",
                regions_evaluation=pixels,
                perturb_baseline=0.0,
                abs=True,
            )(**data),
            gap,
        ),
        Case(f"ROAD MoRF ({len(percentages)} levels)", road_means, quantus_road, gap),
        Case(
            "MPRT (cascading)",
            lambda: metrics.parameter_randomisation(model, x, "gradient", target=y),
            lambda: quantus.MPRT()(**explained),
            None,
        ),
        Case(
            "random logit (SSIM)",
            lambda: metrics.random_logit(model, x, "gradient", target=y),
            lambda: quantus.RandomLogit(num_classes=10)(**explained),
            None,
        ),
        Case(
            "input invariance",
            lambda: metrics.input_invariance(model, x, "gradient", target=y) < 1e-4,
            lambda: quantus.InputInvariance(input_shift=-1)(**explained),
            lambda ours, theirs: float(np.mean(np.asarray(ours) != np.asarray(theirs))),
        ),
    ]


def measure(case: Case, repeats: int) -> tuple[float, float, float | None]:
    """Fastest of ``repeats`` rounds each, the two alternating, after one warm-up call each."""
    ours_result, theirs_result = case.ours(), case.theirs()
    best = [float("inf"), float("inf")]
    for round_index in range(repeats):
        order = (0, 1) if round_index % 2 == 0 else (1, 0)
        for which in order:
            call = case.ours if which == 0 else case.theirs
            start = time.perf_counter()
            call()
            best[which] = min(best[which], time.perf_counter() - start)
    difference = case.difference(ours_result, theirs_result) if case.difference else None
    return best[0], best[1], difference


def parse_arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=16, help="batch size N (default 16)")
    parser.add_argument("--size", type=int, default=32, help="input side in pixels (default 32)")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds (default 3)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--smoke", action="store_true", help="4 images of 12², 1 round")
    arguments = parser.parse_args(argv)
    if arguments.smoke:
        arguments.images, arguments.size, arguments.repeats = 4, 12, 1
    return arguments


def main(argv: Sequence[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    if arguments.threads is not None:
        torch.set_num_threads(arguments.threads)
    warnings.filterwarnings("ignore")
    import quantus

    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    print(
        f"# saliency.metrics vs Quantus {quantus.__version__}: {arguments.images} images, "
        f"1×{arguments.size}², best of {arguments.repeats}\n\n"
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
        f"{torch.__version__} ({torch.get_num_threads()} threads), Python "
        f"{platform.python_version()}, load average at start {load[0]:.2f}\n"
    )
    print("| metric | saliency (s) | Quantus (s) | Quantus / saliency | max difference |")
    print("|---|---:|---:|---:|---:|")
    for case in cases(arguments.images, arguments.size):
        ours, theirs, difference = measure(case, arguments.repeats)
        shown = "—" if difference is None else f"{difference:.1e}"
        print(f"| {case.name} | {ours:.4f} | {theirs:.4f} | {theirs / ours:.1f}× | {shown} |")
        sys.stdout.flush()
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    print(f"\nload average at end {load[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
