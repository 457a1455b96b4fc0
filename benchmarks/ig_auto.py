"""Integrated gradients with ``steps="auto"`` against fixed rules: evaluations versus accuracy.

    python benchmarks/ig_auto.py [--models shapes,shapes-shortcut,shapes-rrr] [--scenes 16]
                                 [--reference 1024] [--out benchmarks/IG_AUTO.md] [--smoke]

For each demo model, on the first ``--scenes`` scenes of its test split (each explained for its
predicted class, computed once), every rule runs on the same inputs:

- captum's ``IntegratedGradients`` with Gauss–Legendre nodes (its default) and with the Riemann
  midpoint rule, at 16, 25, 50 and 100 steps;
- ``saliency.explain(..., "integrated_gradients", steps="auto", tolerance=t)`` at several t, and
  at t = the mean completeness error of captum's default (50 Gauss–Legendre steps);
- the same with the default ``tolerance=1e-2`` and ``attribution_tolerance=e`` (refine until the
  estimated relative attribution error is within e) at several e, and at e = the mean
  attribution error of captum's default.

Each row gives the model evaluations per image, counted by a wrapper of the model: gradient passes
(forward + backward) and forward-only passes (saliency checks the target against the model's
classes with one forward; the completeness errors here are computed outside the count), the
relative completeness error
|Σa − (f(x) − f(x′))| / |f(x) − f(x′)| and the relative attribution error ‖a − a_ref‖₂ / ‖a_ref‖₂
against ``--reference`` Gauss–Legendre steps (mean and max over the scenes). Counting
evaluations is not timing: the numbers do not depend on the machine. One torch thread.
"""

from __future__ import annotations

import argparse
import itertools
import math
import platform
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch
from captum.attr import IntegratedGradients
from torch import Tensor, nn

import saliency
from saliency.output_files import write_text_atomic

try:  # the scene generator's public home (saliency.demo after the demo modules moved there)
    from saliency.demo.shapes import CLEAN, SHORTCUT, TEST_SEED, generate_scenes
except ImportError:
    from saliency.demo.scenes import CLEAN, SHORTCUT, TEST_SEED, generate_scenes

# Each demo model's test split: the shortcut and RRR models are tested on marker scenes.
CONFIGS = {"shapes": CLEAN, "shapes-shortcut": SHORTCUT, "shapes-rrr": SHORTCUT}
STEPS = (16, 25, 50, 100)
TOLERANCES = (3e-2, 2e-2, 1e-2, 6e-3, 4e-3, 2e-3, 1e-3)
ATTRIBUTION_TOLERANCES = (4e-2, 2e-2, 1e-2, 5e-3)
CAPTUM_DEFAULT = 50


class Counting(nn.Module):
    """The model, counting the rows it is run on with gradients (a gradient pass each) and
    without (forward passes only, such as checking a target against the number of classes)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.gradient_rows = 0
        self.forward_rows = 0

    def forward(self, x: Tensor) -> Tensor:
        if torch.is_grad_enabled():
            self.gradient_rows += len(x)
        else:
            self.forward_rows += len(x)
        return self.model(x)


@dataclass(frozen=True)
class Row:
    rule: str
    setting: str
    evaluations: float
    """Gradient passes per image."""
    forwards: float
    """Forward-only passes per image."""
    completeness: Tensor
    attribution: Tensor


def measure(
    label: str,
    setting: str,
    counting: Counting,
    explain: Callable[[], Tensor],
    reference: Tensor,
    gap: Tensor,
) -> Row:
    counting.gradient_rows = counting.forward_rows = 0
    attributions = explain().detach()
    evaluations = counting.gradient_rows / len(gap)
    forwards = counting.forward_rows / len(gap)
    completeness = (attributions.flatten(1).sum(1) - gap).abs() / gap.abs()
    error = relative_error(attributions, reference)
    return Row(label, setting, evaluations, forwards, completeness, error)


def relative_error(attributions: Tensor, reference: Tensor) -> Tensor:
    """‖a − a_ref‖₂ / ‖a_ref‖₂ per sample."""
    return (attributions - reference).flatten(1).norm(dim=1) / reference.flatten(1).norm(dim=1)


def demo_scenes(name: str, scenes: int) -> tuple[nn.Module, Tensor]:
    """A demo model and the first ``scenes`` scenes of its test split, normalised for it."""
    loaded = saliency.load_model(f"demo:{name}")
    transform = loaded.transform
    assert isinstance(transform, saliency.Preprocess)
    images = generate_scenes(scenes, seed=TEST_SEED, config=CONFIGS[name]).images
    return loaded.model, transform.normalize(images)


def run_model(
    name: str,
    scenes: int,
    reference_steps: int,
    steps: tuple[int, ...],
    tolerances: list[float],
    attribution_tolerances: list[float],
) -> list[Row]:
    model, inputs = demo_scenes(name, scenes)
    with torch.no_grad():
        target = model(inputs).argmax(1)
        gap = (model(inputs) - model(torch.zeros_like(inputs))).gather(1, target[:, None])[:, 0]
    reference = saliency.explain(
        model, inputs, "integrated_gradients", target=target, steps=reference_steps
    ).attributions
    counting = Counting(model)
    captum = IntegratedGradients(counting)
    rows = []
    for method, label in (
        ("gausslegendre", "captum IG, Gauss–Legendre"),
        ("riemann_middle", "captum IG, Riemann midpoint"),
    ):
        for n in steps:

            def fixed(n: int = n, method: str = method) -> Tensor:
                return captum.attribute(
                    inputs, target=target, n_steps=n, method=method, internal_batch_size=64
                )

            rows.append(measure(label, f"{n} steps", counting, fixed, reference, gap))
    default = next(r for r in rows if r.setting == f"{CAPTUM_DEFAULT} steps")
    matched = float(default.completeness.mean())
    for tolerance in [*tolerances, matched]:

        def adaptive(tolerance: float = tolerance) -> Tensor:
            return saliency.explain(
                counting,
                inputs,
                "integrated_gradients",
                target=target,
                steps="auto",
                tolerance=tolerance,
            ).attributions

        setting = f"tolerance {tolerance:.2g}"
        if tolerance == matched:
            setting += f" (captum IG-{CAPTUM_DEFAULT}'s mean completeness error)"
        rows.append(
            measure('saliency IG, steps="auto"', setting, counting, adaptive, reference, gap)
        )
    accuracy = float(default.attribution.mean())
    for error in [*attribution_tolerances, accuracy]:

        def estimated(error: float = error) -> Tensor:
            return saliency.explain(
                counting,
                inputs,
                "integrated_gradients",
                target=target,
                steps="auto",
                attribution_tolerance=error,
            ).attributions

        setting = f"attribution_tolerance {error:.2g}"
        if error == accuracy:
            setting += f" (captum IG-{CAPTUM_DEFAULT}'s mean attribution error)"
        rows.append(
            measure('saliency IG, steps="auto"', setting, counting, estimated, reference, gap)
        )
    return rows


def cost_at(curve: list[tuple[float, float]], error: float) -> float | None:
    """The cost at which a curve of (cost, error) points reaches ``error``, interpolated
    log-log between the two points around it (None: outside the curve)."""
    for (e0, a0), (e1, a1) in itertools.pairwise(sorted(curve)):
        if (a0 - error) * (a1 - error) <= 0 and a0 != a1:
            t = (math.log(error) - math.log(a0)) / (math.log(a1) - math.log(a0))
            return math.exp(math.log(e0) + t * (math.log(e1) - math.log(e0)))
    return None


def evaluations_to_match(rows: list[Row], error: float) -> float | None:
    """Evaluations the auto rows need for ``error`` (log-log interpolation of their curve)."""
    return cost_at([(r.evaluations, float(r.attribution.mean())) for r in rows], error)


def table(name: str, rows: list[Row]) -> list[str]:
    lines = [
        f"### demo:{name}",
        "",
        "| rule | setting | gradient passes / image | forwards / image "
        "| completeness error, mean (max) | attribution error, mean (max) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        completeness = f"{r.completeness.mean():.2e} ({r.completeness.max():.2e})"
        attribution = f"{r.attribution.mean():.2e} ({r.attribution.max():.2e})"
        lines.append(
            f"| {r.rule} | {r.setting} | {r.evaluations:.1f} | {r.forwards:.0f} | {completeness} "
            f"| {attribution} |"
        )
    return [*lines, ""]


def cost_text(cost: float | None, baseline: float) -> str:
    """An interpolated cost (:func:`cost_at`) and its ratio to ``baseline``'s."""
    if cost is None:
        return "beyond the curve"
    return f"{cost:.1f} ({cost / baseline:.2f})"


def needed(curve: list[Row], default: Row) -> str:
    """The passes ``curve`` needs for ``default``'s attribution error, and their ratio."""
    passes = evaluations_to_match(curve, float(default.attribution.mean()))
    return cost_text(passes, default.evaluations)


def summary(results: dict[str, list[Row]]) -> list[str]:
    lines = [
        f"### Against captum's default ({CAPTUM_DEFAULT} Gauss–Legendre steps)",
        "",
        "| model | captum IG-50: completeness, attribution error | auto, tolerance = that "
        "completeness: gradient passes (ratio), attribution error | auto, attribution_tolerance = "
        "that attribution error: gradient passes (ratio), attribution error | gradient passes "
        "(ratio) at IG-50's attribution error, interpolated: tolerance curve, "
        "attribution_tolerance curve |",
        "|---|---|---|---|---|",
    ]
    for name, rows in results.items():
        default = next(
            r
            for r in rows
            if r.rule.startswith("captum")
            and "Gauss" in r.rule
            and r.setting == f"{CAPTUM_DEFAULT} steps"
        )
        auto = [r for r in rows if r.rule.startswith("saliency") and "attribution" not in r.setting]
        matched = auto[-1]
        accurate = next(r for r in rows if "mean attribution error" in r.setting)
        estimated = [r for r in rows if "attribution_tolerance" in r.setting]

        needed_text = ", ".join(needed(curve, default) for curve in (auto, estimated))
        lines.append(
            f"| demo:{name} | {default.completeness.mean():.2e}, {default.attribution.mean():.2e} "
            f"| {matched.evaluations:.1f} ({matched.evaluations / default.evaluations:.2f}), "
            f"{matched.attribution.mean():.2e} "
            f"| {accurate.evaluations:.1f} ({accurate.evaluations / default.evaluations:.2f}), "
            f"{accurate.attribution.mean():.2e} | {needed_text} |"
        )
    return [*lines, ""]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(CONFIGS))
    parser.add_argument("--scenes", type=int, default=16)
    parser.add_argument("--reference", type=int, default=1024)
    parser.add_argument("--out", type=Path, default=None, help="also write the tables here")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks the script")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    steps, tolerances, attribution = STEPS, list(TOLERANCES), list(ATTRIBUTION_TOLERANCES)
    models = args.models.split(",")
    if args.smoke:
        args.scenes, args.reference, steps, tolerances, attribution = 2, 64, (4, 50), [1e-1], []
        models = models[:1]
    results = {}
    for name in models:
        results[name] = run_model(name, args.scenes, args.reference, steps, tolerances, attribution)
        print("\n".join(table(name, results[name])), flush=True)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    header = [
        "## Integrated gradients: adaptive versus fixed rules",
        "",
        f"{stamp}; torch {torch.__version__}, {platform.machine()}; {args.scenes} scenes per "
        f"model, reference {args.reference} Gauss–Legendre steps; one thread; "
        "`python benchmarks/ig_auto.py`.",
        "",
    ]
    lines = header + summary(results) + [line for n, r in results.items() for line in table(n, r)]
    print("\n".join(summary(results)))
    if args.out is not None:
        write_text_atomic(args.out, "\n".join(lines))


if __name__ == "__main__":
    main()
