"""CPU time of each CAM-family method next to pytorch-grad-cam's, in one process.

ResNet-18 (torchvision, random weights, seeded), 4 × 3 × 224² inputs, each image's top class,
target layer ``layer4`` on both sides (FullGrad: every bias layer). Each round times ours and
then the reference on the same inputs, as process CPU time (all threads; less sensitive to
other jobs on a shared machine than wall time, which is shown too); the table has the median of
``--repeats`` rounds. Score-CAM and Ablation-CAM (512 forward passes per image) run one round,
image by image, ours and the reference alternating, summed over the images, so that a change of
the machine's load hits both sides alike. pytorch-grad-cam's time includes its numpy
conversion and cv2 resizing, ours the upsampling in torch; both include the forward and
backward passes. Prints a Markdown table, with the machine's load average before and after.

    python benchmarks/cam_family.py [--threads N] [--repeats 3] [--size 224] [--methods a,b]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable
from functools import partial

import torch
import torchvision
from pytorch_grad_cam import (
    AblationCAM,
    EigenCAM,
    FullGrad,
    GradCAM,
    GradCAMPlusPlus,
    HiResCAM,
    LayerCAM,
    ScoreCAM,
    XGradCAM,
)
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

import saliency

REFERENCES: dict[str, type] = {
    "gradcam": GradCAM,
    "gradcam_pp": GradCAMPlusPlus,
    "hirescam": HiResCAM,
    "xgradcam": XGradCAM,
    "layercam": LayerCAM,
    "scorecam": ScoreCAM,
    "ablationcam": AblationCAM,
    "eigencam": EigenCAM,
    "fullgrad": FullGrad,
}
SLOW = ("scorecam", "ablationcam")


def seconds(run: Callable[[], object]) -> tuple[float, float]:
    """(CPU seconds of this process, wall seconds) of one call."""
    cpu, wall = time.process_time(), time.perf_counter()
    run()
    return time.process_time() - cpu, time.perf_counter() - wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--methods", default=",".join(REFERENCES))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    inputs = torch.randn(
        args.batch, 3, args.size, args.size, generator=torch.Generator().manual_seed(1)
    )
    with torch.no_grad():
        classes = model(inputs).argmax(1).tolist()
    targets = [ClassifierOutputTarget(c) for c in classes]
    load_before = os.getloadavg()
    rows = []
    for method in args.methods.split(","):
        layers = [] if method == "fullgrad" else [model.layer4]
        options = {} if method == "fullgrad" else {"layer": "layer4"}

        def ours(images: slice, method: str = method, options: dict[str, str] = options) -> object:
            return saliency.explain(
                model, inputs[images], method, target=classes[images], **options
            )

        def theirs(images: slice, method: str = method, layers: list[nn.Module] = layers) -> object:
            with REFERENCES[method](model, layers) as cam:
                return cam(inputs[images].clone(), targets[images])

        if method in SLOW:  # one round, image by image, alternating
            slices = [slice(i, i + 1) for i in range(len(inputs))]
            timed = [(seconds(partial(ours, s)), seconds(partial(theirs, s))) for s in slices]
            ours_t = tuple(sum(t[0][k] for t in timed) for k in (0, 1))
            theirs_t = tuple(sum(t[1][k] for t in timed) for k in (0, 1))
            rounds = 1
        else:
            everything = slice(None)
            timed = [
                (seconds(partial(ours, everything)), seconds(partial(theirs, everything)))
                for _ in range(args.repeats)
            ]
            ours_t = tuple(statistics.median(t[0][k] for t in timed) for k in (0, 1))
            theirs_t = tuple(statistics.median(t[1][k] for t in timed) for k in (0, 1))
            rounds = args.repeats
        rows.append((method, ours_t, theirs_t, rounds))
        print(
            f"{method}: ours {ours_t[0]:.2f} s CPU ({ours_t[1]:.2f} s wall), pytorch-grad-cam "
            f"{theirs_t[0]:.2f} s CPU ({theirs_t[1]:.2f} s wall)",
            flush=True,
        )
    load_after = os.getloadavg()
    print()
    print(
        f"ResNet-18 (random weights), {args.batch} × 3 × {args.size}², CPU "
        f"({platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{torch.get_num_threads()} torch threads), torch {torch.__version__}, saliency-kit "
        f"{saliency.__version__}; load average {load_before[0]:.1f} before, "
        f"{load_after[0]:.1f} after (other jobs shared the cores when it exceeds the cores)."
    )
    print()
    print(
        "| method | ours, CPU s | pytorch-grad-cam, CPU s | ratio (CPU) | ours, wall s "
        "| pytorch-grad-cam, wall s | rounds |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for method, (a_cpu, a_wall), (b_cpu, b_wall), rounds in rows:
        print(
            f"| `{method}` | {a_cpu:.2f} | {b_cpu:.2f} | {b_cpu / a_cpu:.2f}× | {a_wall:.2f} "
            f"| {b_wall:.2f} | {rounds} |"
        )


if __name__ == "__main__":
    main()
