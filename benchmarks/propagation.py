"""Time of the propagation-rule methods, VarGrad and two captum:* wrappers next to captum's own
classes, in the same process, on one model and batch.

    python benchmarks/propagation.py [--model resnet18] [--batch 4] [--size 224] [--repeats 1]
                                     [--device cpu] [--out FILE]

Each pair (ours, captum) is timed ``--repeats`` times after a warm-up, the two alternated, and
the minimum wall time is kept, with the process CPU time of that run (all threads). Random
torchvision weights (nothing is downloaded): costs do not depend on the weights. VarGrad and
captum's ``NoiseTunnel(nt_type="vargrad")`` do the same work (n gradient passes) but draw
different noise.
"""

from __future__ import annotations

import argparse
import platform
import time
import warnings
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import captum
import captum.attr as ca
import torch
import torchvision

import saliency
from saliency.output_files import write_text_atomic

Pair = tuple[Callable[[], object], Callable[[], object]]


def pairs(model: torch.nn.Module, inputs: torch.Tensor, samples: int) -> dict[str, Pair]:
    """What one user call costs, ours and captum's, per method."""
    targets = model(inputs).argmax(1).detach()
    layer = model.get_submodule("layer4") if hasattr(model, "layer4") else None
    window = inputs.shape[-1] // 4

    def ours(method: str, **options: object) -> Callable[[], object]:
        return lambda: saliency.explain(model, inputs, method, targets, **options)

    table: dict[str, Pair] = {
        "guided_backprop": (
            ours("guided_backprop"),
            lambda: ca.GuidedBackprop(model).attribute(inputs, target=targets),
        ),
        "deconvnet": (
            ours("deconvnet"),
            lambda: ca.Deconvolution(model).attribute(inputs, target=targets),
        ),
        "gradient_x_input": (
            ours("gradient_x_input"),
            lambda: ca.InputXGradient(model).attribute(inputs, target=targets),
        ),
        f"vargrad, {samples} samples": (
            ours("vargrad", samples=samples, seed=0),
            lambda: ca.NoiseTunnel(ca.Saliency(model)).attribute(
                inputs, nt_type="vargrad", nt_samples=samples, target=targets, abs=False
            ),
        ),
        f"captum:IntegratedGradients, {samples} steps": (
            ours("captum:IntegratedGradients", n_steps=samples),
            lambda: ca.IntegratedGradients(model).attribute(
                inputs, target=targets, n_steps=samples
            ),
        ),
        f"captum:Occlusion, {window}² windows, stride {window}": (
            ours(
                "captum:Occlusion",
                sliding_window_shapes=(3, window, window),
                strides=(3, window, window),
            ),
            lambda: ca.Occlusion(model).attribute(
                inputs,
                target=targets,
                sliding_window_shapes=(3, window, window),
                strides=(3, window, window),
            ),
        ),
    }
    if layer is not None:
        table["guided_gradcam (layer4)"] = (
            ours("guided_gradcam", layer="layer4"),
            lambda: ca.GuidedGradCam(model, layer).attribute(
                inputs, target=targets, interpolate_mode="bilinear"
            ),
        )
    return table


def measure(
    table: dict[str, Pair], repeats: int, device: str
) -> dict[str, tuple[tuple[float, float], tuple[float, float]]]:
    """Per entry, (wall, CPU) seconds of the fastest run of ours and of captum's."""

    def timed(call: Callable[[], object]) -> tuple[float, float]:
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        wall, cpu = time.perf_counter(), time.process_time()
        call()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - wall, time.process_time() - cpu

    results = {}
    for name, (ours, theirs) in table.items():
        ours(), theirs()  # warm-up
        best_ours = best_theirs = (float("inf"), float("inf"))
        for _ in range(repeats):
            best_ours = min(best_ours, timed(ours))
            best_theirs = min(best_theirs, timed(theirs))
        results[name] = (best_ours, best_theirs)
    return results


def report(
    results: dict[str, tuple[tuple[float, float], tuple[float, float]]], args: argparse.Namespace
) -> str:
    device = (
        torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor()
    )
    lines = [
        f"## Propagation rules and captum wrappers — {args.model}, "
        f"{args.batch}×3×{args.size}², {args.device}",
        "",
        f"{datetime.now(timezone.utc):%Y-%m-%d}, torch {torch.__version__}, captum "
        f"{captum.__version__}, {torch.get_num_threads()} threads, "
        f"{device or platform.machine()}; fastest of {args.repeats} alternated run(s) after a "
        "warm-up; CPU = process CPU time of that run (all threads).",
        "",
        "| method | ours: wall s | ours: CPU s | captum: wall s | captum: CPU s | captum / ours |",
        "|---|---|---|---|---|---|",
    ]
    for name, ((wall, cpu), (their_wall, their_cpu)) in results.items():
        lines.append(
            f"| {name} | {wall:.3f} | {cpu:.3f} | {their_wall:.3f} | {their_cpu:.3f} | "
            f"{their_wall / wall:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--samples", type=int, default=8, help="VarGrad samples, IG steps")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    warnings.filterwarnings("ignore", module="captum")  # captum's notes on hooks
    torch.manual_seed(0)
    model = torchvision.models.get_model(args.model, weights=None).eval().to(args.device)
    inputs = torch.randn(args.batch, 3, args.size, args.size, device=args.device)
    table = report(measure(pairs(model, inputs, args.samples), args.repeats, args.device), args)
    print(table)
    if args.out is not None:
        write_text_atomic(args.out, table)


if __name__ == "__main__":
    main()
