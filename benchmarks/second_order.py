"""Cost of each second-order method relative to one plain gradient, on one model and batch.

    python benchmarks/second_order.py [--model resnet18] [--batch 4] [--size 224] [--repeats 3]
                                      [--device cpu] [--out benchmarks/SECOND_ORDER.md]

Each entry is timed ``--repeats`` times after a warm-up, alternating the entries, and the
minimum is kept (the least disturbed run). Ratios are against ``gradient`` measured in the same
rounds. Random torchvision weights (nothing is downloaded): costs do not depend on the weights.
ReLU models run the input-Hessian entries on ``smooth_relu`` (Softplus β = 10), as users must.
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision

import saliency
from saliency.losses import input_gradient_penalty
from saliency.methods.integrated_hessians import IntegratedHessians
from saliency.metrics.fragility import fragility
from saliency.output_files import write_text_atomic


def entries(model: torch.nn.Module, inputs: torch.Tensor) -> dict[str, Callable[[], object]]:
    """The timed calls: what one user call of each method costs."""
    vectors = torch.randn_like(inputs)
    targets = model(inputs).argmax(1).detach()
    mask = torch.zeros_like(inputs, dtype=torch.bool)
    mask[..., :32, :32] = True
    size = inputs.shape[-1]
    box = (size // 2 - 8, size // 2 - 8, size // 2 + 8, size // 2 + 8)

    def gradient() -> object:
        return saliency.explain(model, inputs, "gradient", targets)

    def gradient_create_graph() -> object:
        attributions = saliency.explain(model, inputs, "gradient", targets, create_graph=True)
        return attributions.attributions.square().sum()

    def hvp() -> object:
        with saliency.smooth_relu(model):
            return saliency.hvp(model, inputs, vectors, targets)

    def integrated_hessians() -> object:
        with saliency.smooth_relu(model):
            return saliency.explain(model, inputs, "integrated_hessians", targets, query=box)

    def fragility_step() -> object:
        return fragility(model, inputs, "gradient", 8 / 255, steps=1, target=targets, beta=10.0)

    def rrr_training_step() -> object:
        model.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(inputs), targets)
        loss = loss + input_gradient_penalty(model, inputs, targets, mask)
        loss.backward()
        model.zero_grad(set_to_none=True)
        return loss

    def plain_training_step() -> object:
        model.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(inputs), targets)
        loss.backward()
        model.zero_grad(set_to_none=True)
        return loss

    return {
        "gradient": gradient,
        "gradient, create_graph=True (graph kept, not differentiated)": gradient_create_graph,
        "hvp (double backward)": hvp,
        f"integrated_hessians ({IntegratedHessians.steps} nodes, 16×16 query)": integrated_hessians,
        "fragility, 1 ascent step (gradient map)": fragility_step,
        "plain training step (CE)": plain_training_step,
        "RRR training step (CE + input-gradient penalty)": rrr_training_step,
    }


def measure(calls: dict[str, Callable[[], object]], repeats: int, device: str) -> dict[str, float]:
    """Minimum seconds per call, entries alternated within each round."""
    for call in calls.values():  # warm-up
        call()
    best = dict.fromkeys(calls, float("inf"))
    for _ in range(repeats):
        for name, call in calls.items():
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            started = time.perf_counter()
            call()
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            best[name] = min(best[name], time.perf_counter() - started)
    return best


def report(seconds: dict[str, float], args: argparse.Namespace) -> str:
    base = seconds["gradient"]
    device = (
        torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor()
    )
    lines = [
        f"## Second-order cost — {args.model}, {args.batch}×3×{args.size}², {args.device}",
        "",
        f"{datetime.now(timezone.utc):%Y-%m-%d}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {device or platform.machine()}; min of "
        f"{args.repeats} alternated rounds.",
        "",
        "| call | seconds | × gradient |",
        "|---|---|---|",
    ]
    lines += [f"| {name} | {value:.3f} | {value / base:.1f} |" for name, value in seconds.items()]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = torchvision.models.get_model(args.model, weights=None).eval().to(args.device)
    inputs = torch.randn(args.batch, 3, args.size, args.size, device=args.device)
    table = report(measure(entries(model, inputs), args.repeats, args.device), args)
    print(table)
    if args.out is not None:
        write_text_atomic(args.out, table)


if __name__ == "__main__":
    main()
