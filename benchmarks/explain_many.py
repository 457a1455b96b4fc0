"""Time of ``saliency.explain_many`` against separate ``explain`` calls of the same methods.

    python -m benchmarks.explain_many [--model resnet18] [--batch 4] [--size 224] [--repeats 5]
                                      [--warmup 1] [--device cpu] [--methods gradient,gradcam,...]
                                      [--smoke]

Both entries explain the same batch with the same methods (default: the one-pass methods
``gradient``, ``gradcam`` and ``gradient_x_input``, argmax targets, automatic layer and chunk
size), alternating in each round (:func:`benchmarks.measure.alternate`); the medians and their
ratio are printed. The target: explain_many at most 0.6× the separate calls. Random torchvision
weights (nothing is downloaded): the cost does not depend on the weights. ``--smoke`` runs tiny
sizes once, to check that the script works (its times mean nothing).
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Sequence

import torch
import torchvision

import saliency
from benchmarks.measure import Case, alternate

METHODS = ("gradient", "gradcam", "gradient_x_input")
TARGET_RATIO = 0.6


def cases(model: torch.nn.Module, inputs: torch.Tensor, methods: Sequence[str]) -> list[Case]:
    """The two timed calls: one explain_many, and one explain per method."""

    def many() -> object:
        return saliency.explain_many(model, inputs, list(methods))

    def separate() -> object:
        return [saliency.explain(model, inputs, method) for method in methods]

    images = len(inputs)
    return [
        Case("explain_many", "saliency-kit", "explain_many", many, images, primary=True),
        Case("explain_many", "saliency-kit", "separate explain calls", separate, images),
    ]


def main(argv: Sequence[str] | None = None) -> float:
    """Run the comparison; returns the ratio of the medians (explain_many / separate)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, one round")
    arguments = parser.parse_args(argv)
    if arguments.smoke:
        arguments.batch, arguments.size, arguments.repeats, arguments.warmup = 2, 64, 1, 1
    device = torch.device(arguments.device)
    torch.manual_seed(0)
    model = torchvision.models.get_model(arguments.model, weights=None).eval().to(device)
    shape = (arguments.batch, 3, arguments.size, arguments.size)
    inputs = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(device)
    methods = [name for name in arguments.methods.split(",") if name]
    print(
        f"{arguments.model}, {arguments.batch}×3×{arguments.size}², {device}, "
        f"{torch.get_num_threads()} threads, methods {', '.join(methods)}"
    )
    results = alternate(
        cases(model, inputs, methods), device, arguments.repeats, arguments.warmup, log=print
    )
    medians = {}
    for result in results:
        if result.error:
            raise SystemExit(f"{result.case.variant}: {result.error}")
        medians[result.case.variant] = statistics.median(result.seconds)
        spread = f"{min(result.seconds):.3f}–{max(result.seconds):.3f}"
        print(f"{result.case.variant:>24}: {medians[result.case.variant]:.3f} s ({spread})")
    ratio = medians["explain_many"] / medians["separate explain calls"]
    verdict = "meets" if ratio <= TARGET_RATIO else "misses"
    print(f"explain_many / separate = {ratio:.2f} ({verdict} the target ≤ {TARGET_RATIO})")
    return ratio


if __name__ == "__main__":
    main()
