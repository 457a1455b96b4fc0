"""The ``e2e`` profile: a folder of JPEG photos → PNG overlays, each pipeline a real process.

* ours: ``saliency explain FOLDER --model resnet18 --weights FILE --method gradient,gradcam``
  (and ``--method gradcam`` alone, like for like with pytorch-grad-cam);
* captum + matplotlib: ``benchmarks/e2e_captum.py`` (Saliency + LayerGradCam, each drawn with
  ``visualize_image_attr`` and saved with ``savefig``);
* pytorch-grad-cam: ``benchmarks/e2e_gradcam.py`` (GradCAM + ``show_cam_on_image`` +
  ``cv2.imwrite``; it has no vanilla gradient).

Every pipeline gets the same folder, the same random-weight state-dict file, the same model
input size, batches of 16 images and the same number of torch threads. The processes run
interleaved (rotated order each round) after an untimed warm-up round.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image, ImageDraw, ImageFilter

from benchmarks import micro

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OURS = "saliency explain"


@dataclass(frozen=True)
class E2EConfig:
    images: int
    min_side: int
    max_side: int
    input_size: int | None  # None: the model's own (224 for resnet18)
    repeats: int
    warmup: int
    batch: int = 16
    model: str = "resnet18"
    concurrent: bool = False
    """Run a round's pipelines at once (smoke runs: faster, but the timings mean nothing)."""

    def describe(self) -> str:
        size = self.input_size or 224
        return (
            f"{self.images} generated JPEG photos of {self.min_side}–{self.max_side} px a side → "
            f"PNG overlays at each photo's size; torchvision {self.model} with a random-weight "
            f"state-dict file, whole image resized to {size}², batches of {self.batch}; "
            f"{self.repeats} timed rounds after {self.warmup} warm-up round(s)"
        )


PROFILE = E2EConfig(images=64, min_side=300, max_side=500, input_size=None, repeats=3, warmup=1)
SMOKE = E2EConfig(
    images=2, min_side=40, max_side=64, input_size=32, repeats=1, warmup=0, concurrent=True
)


@dataclass
class Pipeline:
    name: str
    methods: str
    argv: Callable[[Path], list[str]]
    """The command line for an output folder."""
    overlays_per_image: int
    primary: bool = False


@dataclass
class PipelineResult:
    pipeline: Pipeline
    images: int
    wall: list[float] = field(default_factory=list)
    inner: list[float] = field(default_factory=list)
    peak_rss: list[float] = field(default_factory=list)
    overlays: list[int] = field(default_factory=list)
    device_idle: list[float] = field(default_factory=list)
    """Our CLI's measured share of time the device waited (``totals.device_idle``)."""
    error: str | None = None

    def _rate(self, seconds: list[float]) -> float | None:
        if self.error or not seconds:
            return None
        return self.images / statistics.median(seconds)

    @property
    def images_per_second(self) -> float | None:
        return self._rate(self.wall)

    @property
    def inner_images_per_second(self) -> float | None:
        return self._rate(self.inner)

    @property
    def spread(self) -> tuple[float, float] | None:
        if self.error or not self.wall:
            return None
        return self.images / max(self.wall), self.images / min(self.wall)


def make_photos(folder: Path, count: int, min_side: int, max_side: int, seed: int = 0) -> None:
    """Photo-like JPEGs: smooth colour fields, a few blurred shapes, sensor-like noise."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for index in range(count):
        width, height = (int(v) for v in rng.integers(min_side, max_side + 1, size=2))
        field_ = rng.uniform(0, 255, size=(4, 5, 3)).astype(np.uint8)
        image = Image.fromarray(field_).resize((width, height), Image.Resampling.BICUBIC)
        draw = ImageDraw.Draw(image)
        for _ in range(int(rng.integers(3, 9))):
            x0, x1 = sorted(int(v) for v in rng.integers(0, width, size=2))
            y0, y1 = sorted(int(v) for v in rng.integers(0, height, size=2))
            colour = tuple(int(v) for v in rng.integers(0, 256, size=3))
            shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
            shape((x0, y0, x1 + 1, y1 + 1), fill=colour)
        image = image.filter(ImageFilter.GaussianBlur(radius=max(1.0, width / 200)))
        pixels = np.asarray(image, dtype=np.float32) + rng.normal(0, 6, (height, width, 3))
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(
            folder / f"photo_{index:03d}.jpg", quality=90
        )


def save_random_weights(model: str, path: Path) -> None:
    torch.manual_seed(0)
    torch.save(torchvision.models.get_model(model, weights=None).state_dict(), path)


def ceiling_images_per_second(config: E2EConfig, threads: int, rounds: int = 5) -> float:
    """The CPU ceiling of the job: images/s of one forward+backward to the input per image
    (the same model, input size and batch as the pipelines), best of ``rounds`` timed batches
    after one warm-up batch, with ``threads`` torch threads."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(0)
        model = torchvision.models.get_model(config.model, weights=None).eval()
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        size = config.input_size or 224
        inputs = torch.randn(config.batch, 3, size, size)
        run = micro.forward_backward(model, inputs, torch.zeros(config.batch, dtype=torch.long))
        best = math.inf
        for round_index in range(rounds + 1):
            started = time.perf_counter()
            run()
            seconds = time.perf_counter() - started
            if round_index:  # the first batch warms up
                best = min(best, seconds)
        return config.batch / best
    finally:
        torch.set_num_threads(previous)


def _saliency_command() -> list[str]:
    script = Path(sys.executable).parent / "saliency"
    return [str(script)] if script.exists() else [sys.executable, "-m", "saliency.cli"]


def pipelines(config: E2EConfig, photos: Path, weights: Path, threads: int) -> list[Pipeline]:
    size = config.input_size
    common = ["--weights", str(weights), "--model", config.model, "--threads", str(threads)]

    def ours(methods: str) -> Callable[[Path], list[str]]:
        def argv(out: Path) -> list[str]:
            command = [*_saliency_command(), "explain", str(photos), "--method", methods]
            command += [*common, "--out", str(out)]
            return command + (["--input-size", str(size)] if size else [])

        return argv

    def script(name: str) -> Callable[[Path], list[str]]:
        def argv(out: Path) -> list[str]:
            command = [sys.executable, str(HERE / name), str(photos), str(out), *common]
            return [*command, "--batch", str(config.batch), "--size", str(size or 224)]

        return argv

    return [
        Pipeline(OURS, "gradient, gradcam", ours("gradient,gradcam"), 2, primary=True),
        Pipeline(OURS, "gradcam", ours("gradcam"), 1),
        Pipeline("captum + matplotlib", "gradient, gradcam", script("e2e_captum.py"), 2),
        Pipeline("pytorch-grad-cam", "gradcam", script("e2e_gradcam.py"), 1),
    ]


def _inner_seconds(stdout: str, images: int) -> float | None:
    match = re.search(r"BENCH-SECONDS ([\d.]+)", stdout)
    if match:
        return float(match.group(1))
    # The CLI's summary line: "(2.5 images/s)", or "(12.0 s/image)" below one image per second.
    match = re.search(r"\(([\d.]+) (images/s|s/image)\)", stdout)
    if match and float(match.group(1)) > 0:
        value = float(match.group(1))
        return images / value if match.group(2) == "images/s" else images * value
    return None


@dataclass(frozen=True)
class RunOutcome:
    """One run of a pipeline."""

    wall: float
    inner: float | None
    """Seconds after start-up, when the pipeline reports them."""
    peak_rss: float
    overlays: int
    device_idle: float | None
    """The device's idle share of the pipeline's time, when the pipeline measures it."""


def _device_idle(out: Path) -> float | None:
    """``totals.device_idle`` of a ``saliency explain`` run folder (None for other pipelines)."""
    try:
        totals = json.loads((out / "manifest.json").read_text())["run"]["totals"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    value = totals.get("device_idle") if isinstance(totals, dict) else None
    return float(value) if isinstance(value, int | float) else None


def _run_once(pipeline: Pipeline, out: Path, logs: Path) -> RunOutcome:
    """Run a pipeline once into ``out`` and measure it."""
    stdout_path, stderr_path = logs / "stdout.txt", logs / "stderr.txt"
    environment = dict(os.environ, MPLBACKEND="Agg")
    with open(stdout_path, "w") as stdout, open(stderr_path, "w") as stderr:
        start = time.perf_counter()
        process = subprocess.Popen(
            pipeline.argv(out), stdout=stdout, stderr=stderr, cwd=ROOT, env=environment
        )
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    text = stdout_path.read_text(errors="replace")
    if process.returncode != 0:
        tail = " ".join(stderr_path.read_text(errors="replace").split()[-40:])
        raise RuntimeError(f"exit code {process.returncode}: {tail}")
    overlays = sum(1 for _ in out.rglob("*.png"))
    images = sum(1 for _ in out.iterdir() if _.is_dir())
    inner = _inner_seconds(text, images or 1)
    return RunOutcome(wall, inner, usage.ru_maxrss * 1024.0, overlays, _device_idle(out))


def run_e2e(
    config: E2EConfig, threads: int, log: Callable[[str], None] = print
) -> list[PipelineResult]:
    with tempfile.TemporaryDirectory(prefix="saliency-bench-") as temporary:
        work = Path(temporary)
        photos, weights = work / "photos", work / f"{config.model}-random.pth"
        log(f"[e2e] generating {config.images} photos and a random state dict in {work}")
        make_photos(photos, config.images, config.min_side, config.max_side)
        save_random_weights(config.model, weights)
        chosen = pipelines(config, photos, weights, threads)
        results = [PipelineResult(p, config.images) for p in chosen]
        for round_index in range(config.warmup + config.repeats):
            timed = round_index >= config.warmup
            shift = round_index % len(results)
            order = [r for r in results[shift:] + results[:shift] if not r.error]
            runs = [(r, work / f"run-{round_index}-{k}") for k, r in enumerate(order)]
            if config.concurrent:  # smoke only: the numbers mean nothing, the time does
                with ThreadPoolExecutor(len(runs) or 1) as pool:
                    outcomes = list(pool.map(lambda run: _attempt(*run), runs))
            else:
                outcomes = [_attempt(*run) for run in runs]
            for (result, _folder), outcome in zip(runs, outcomes, strict=True):
                _record(result, outcome, config, timed, log)
        return results


def _attempt(result: PipelineResult, folder: Path) -> RunOutcome | BaseException:
    folder.mkdir()
    try:
        return _run_once(result.pipeline, folder / "out", folder)
    except Exception as exc:
        return exc
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _record(
    result: PipelineResult,
    outcome: RunOutcome | BaseException,
    config: E2EConfig,
    timed: bool,
    log: Callable[[str], None],
) -> None:
    name = f"{result.pipeline.name} ({result.pipeline.methods})"
    if isinstance(outcome, BaseException):
        result.error = " ".join(str(outcome).split())[:300]
        log(f"  {name}: {result.error}")
        return
    expected = config.images * result.pipeline.overlays_per_image
    if outcome.overlays != expected:
        result.error = f"wrote {outcome.overlays} overlays, expected {expected}"
        log(f"  {name}: {result.error}")
        return
    if timed:
        result.wall.append(outcome.wall)
        if outcome.inner is not None:
            result.inner.append(outcome.inner)
        if outcome.device_idle is not None:
            result.device_idle.append(outcome.device_idle)
        result.peak_rss.append(outcome.peak_rss)
        result.overlays.append(outcome.overlays)
    state = "timed" if timed else "warm-up"
    log(f"  {state}: {name}: {outcome.wall:.2f} s, {config.images / outcome.wall:.3g} images/s")
