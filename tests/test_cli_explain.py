"""End-to-end runs of the real ``saliency explain`` command (subprocesses), offline and seeded.

The model is a randomly initialised SqueezeNet 1.1 state dict (1000 classes, so class names are
known) at a 32x32 input size. Every subprocess imports torch (seconds of CPU), so the runs are
few, started together where independent, and shared by the assertions through a module fixture:

- ``main``: a folder of every awkward and broken kind (plus an image whose overlay outgrows a
  1 MB file-size limit: a full disk), two more inputs named ``a.jpg``, four methods, raw
  arrays; exit 1;
- ``rerun``: the same command again (skips everything that is done);
- ``overwrite``: on a copy of ``main``'s folder, ``--overwrite --method gradient
  --overlay-alpha 0`` (redoes gradient; its overlays are then exactly the decoded images,
  which checks decoding end to end);
- ``interrupted`` / ``resumed``: SIGINT once outputs exist, then the same command, which
  completes the folder (one 3000x2000 image among small ones; webp; a class-name target);
  exit 0.

``--help``, the offline default model and the usage errors are checked in process by
``test_cli_explain_usage.py``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

import saliency

COMMAND = (sys.executable, "-m", "saliency.cli", "explain")
FOUR = ("gradient", "integrated_gradients", "smoothgrad", "gradcam")
SIZE = 32
RUN_KEYS = {
    "model", "weights", "methods", "method_options", "target", "device", "precision",
    "compile", "batch_size", "memory_budget", "fit", "format", "class_names",
    "versions", "started", "finished",
    "totals",
}  # fmt: skip
ENTRY_KEYS = {
    "path", "source", "status", "error", "width", "height", "prediction", "top5", "target",
    "methods",
}  # fmt: skip
LARGE = (3000, 2000)
BOMB = (5000, 5000)  # 25 M pixels: over twice --max-image-pixels 10 M, a DecompressionBombError

# name -> (width, height) of the upright image, for every awkward but valid input.
VALID: dict[str, tuple[int, int]] = {
    "gray L.png": (37, 23),
    "la.png": (30, 20),
    "palette.png": (30, 20),
    "palette transparent.png": (30, 20),
    "rgba.png": (30, 20),
    "cmyk.jpg": (30, 20),
    "sixteen.png": (40, 10),
    "exif rotated.jpg": (20, 40),
    "animated.gif": (24, 16),
    "one.png": (1, 1),
    'it\'s "quoted".png': (16, 16),
    "<tag> & amp.png": (16, 16),
    "naïve café 日本.png": (16, 16),
    "nested/deeper/deep.jpg": (48, 32),
    "a.jpg": (50, 40),
    "a.jpg~2": (44, 33),  # more/a.jpg, second folder argument
    "a.jpg~3": (20, 30),  # loose/a.jpg, a file argument
    "locked.png": (12, 12),  # chmod 000: readable anyway when the tests run as root
}
# name -> a fragment of the error message.
BROKEN: dict[str, str] = {
    "zero.jpg": "empty file",
    "truncated.jpg": "truncated",
    "truncated.png": "truncated",
    "text.jpg": "not an image file",
    "bomb.png": "--max-image-pixels",
    "pipe.jpg": "not a regular file",
    "loop.jpg": "symbolic links",
    "dangling.png": "not found",
}
FULL_DISK = "noisy.png"  # decodes, but its overlays outgrow the 1 MB file-size limit


# ---- building the input folders ----------------------------------------------------------


def noise(rng: np.random.Generator, width: int, height: int, channels: int = 3) -> np.ndarray:
    shape = (height, width, channels) if channels > 1 else (height, width)
    return rng.integers(0, 256, shape, dtype=np.uint8)


def build_photos(root: Path) -> tuple[Path, Path, Path]:
    """``photos/`` (awkward + broken), ``more/a.jpg`` and ``loose/a.jpg``."""
    rng = np.random.default_rng(0)
    photos = root / "photos"
    (photos / "nested" / "deeper").mkdir(parents=True)
    Image.fromarray(noise(rng, 37, 23, 1), "L").save(photos / "gray L.png")
    Image.fromarray(noise(rng, 30, 20, 2), "LA").save(photos / "la.png")
    palette = Image.fromarray(noise(rng, 30, 20)).convert("P")
    palette.save(photos / "palette.png")
    transparent = Image.new("P", (30, 20), 0)
    transparent.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    transparent.paste(1, (0, 0, 15, 20))  # left half red, right half transparent (index 0)
    transparent.save(photos / "palette transparent.png", transparency=0)
    rgba = np.zeros((20, 30, 4), np.uint8)
    rgba[:, :15] = (0, 0, 255, 255)  # left opaque blue, right fully transparent
    Image.fromarray(rgba, "RGBA").save(photos / "rgba.png")
    Image.new("CMYK", (30, 20), (255, 0, 0, 0)).save(photos / "cmyk.jpg")  # cyan
    sixteen = np.zeros((10, 40), np.uint16)
    sixteen[:, :20], sixteen[:, 20:] = 1000, 60000
    Image.fromarray(sixteen).save(photos / "sixteen.png")
    stored = np.zeros((20, 40, 3), np.uint8)
    stored[:, :20], stored[:, 20:] = (255, 0, 0), (0, 0, 255)  # left red, right blue
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to view: the red left half becomes the top
    Image.fromarray(stored).save(photos / "exif rotated.jpg", exif=exif, quality=95)
    frames = [Image.new("RGB", (24, 16), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(photos / "animated.gif", save_all=True, append_images=frames[1:])
    Image.new("RGB", (1, 1), (10, 200, 30)).save(photos / "one.png")
    for name in ('it\'s "quoted".png', "<tag> & amp.png", "naïve café 日本.png"):
        Image.fromarray(noise(rng, 16, 16)).save(photos / name)
    Image.fromarray(noise(rng, 48, 32)).save(photos / "nested" / "deeper" / "deep.jpg")
    Image.fromarray(noise(rng, 50, 40)).save(photos / "a.jpg")
    locked = photos / "locked.png"
    Image.fromarray(noise(rng, 12, 12)).save(locked)
    locked.chmod(0)

    (photos / "zero.jpg").touch()
    jpeg = photos / "a.jpg"
    (photos / "truncated.jpg").write_bytes(jpeg.read_bytes()[: len(jpeg.read_bytes()) // 2])
    png = (photos / "gray L.png").read_bytes()
    (photos / "truncated.png").write_bytes(png[: len(png) // 2])
    (photos / "text.jpg").write_text("this is not a JPEG\n")
    Image.new("1", BOMB).save(photos / "bomb.png")
    os.mkfifo(photos / "pipe.jpg")
    os.symlink("loop2.jpg", photos / "loop.jpg")
    os.symlink("loop.jpg", photos / "loop2.jpg")  # also an input, the same error
    os.symlink("missing.png", photos / "dangling.png")
    os.symlink("..", photos / "nested" / "up")  # a folder loop: skipped with a note
    Image.fromarray(noise(rng, 1000, 800)).save(photos / "noisy.png")  # a >1 MB overlay
    (photos / "readme.txt").write_text("not an image extension: ignored")
    Image.new("RGB", (8, 8)).save(photos / ".hidden.png")  # hidden: ignored

    more, loose = root / "more", root / "loose"
    more.mkdir()
    loose.mkdir()
    Image.fromarray(noise(rng, 44, 33)).save(more / "a.jpg")
    Image.fromarray(noise(rng, 20, 30)).save(loose / "a.jpg")
    return photos, more, loose / "a.jpg"


# ---- running the command -------------------------------------------------------------------


@dataclass
class Result:
    """A finished run: exit code, output, the run folder and its manifest when it ended."""

    args: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str
    out: Path
    saved_manifest: dict[str, Any] | None
    mtimes: dict[Path, int] = field(default_factory=dict)

    def manifest(self) -> dict[str, Any]:
        assert self.saved_manifest is not None, self.describe()
        return self.saved_manifest

    def entries(self) -> dict[str, dict[str, Any]]:
        return {entry["path"]: entry for entry in self.manifest()["inputs"]}

    def describe(self) -> str:
        return f"{self.args}\nexit {self.returncode}\n{self.stdout}\n{self.stderr}"


def environment(torch_home: Path) -> dict[str, str]:
    """No network (a closed proxy port), an empty torch cache, UTF-8 output, and one torch
    thread: the runs share two cores, where torch's spinning thread teams would stall."""
    return {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "TORCH_HOME": str(torch_home),
        "https_proxy": "http://127.0.0.1:9",
        "http_proxy": "http://127.0.0.1:9",
        "PYTHONIOENCODING": "utf-8",
    }


def start(
    args: list[str], out: Path, env: dict[str, str], limit_files: bool = False
) -> tuple[subprocess.Popen[str], tuple[str, ...], Path]:
    """Start ``saliency explain ARGS --out OUT``; ``limit_files``: files may not outgrow 1 MB
    (a full disk: Python ignores SIGXFSZ, so the writes fail with EFBIG)."""
    command = (*COMMAND, *args, "--out", str(out))
    limit = ("bash", "-c", 'ulimit -f 1024 && exec "$@"', "bash") if limit_files else ()
    process = subprocess.Popen(
        (*limit, *command),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        encoding="utf-8",
        env=env,
        # a shell's background job inherits SIGINT ignored, and Python keeps it ignored: give
        # the child the default disposition so that the interrupt test can interrupt it
        preexec_fn=_default_sigint,
    )
    return process, command, out


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def finish(started: tuple[subprocess.Popen[str], tuple[str, ...], Path]) -> Result:
    process, command, out = started
    try:
        stdout, stderr = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    path = out / "manifest.json"
    manifest = json.loads(path.read_text("utf-8")) if path.exists() else None
    mtimes = {file: file.stat().st_mtime_ns for file in out.rglob("*.png") if file.is_file()}
    return Result(command, process.returncode, stdout, stderr, out, manifest, mtimes)


def interrupt_when(
    started: tuple[subprocess.Popen[str], tuple[str, ...], Path], outputs: int
) -> None:
    """Send SIGINT once ``outputs`` overlays exist (or the process ended)."""
    process, _, out = started
    deadline = time.monotonic() + 240
    while process.poll() is None and time.monotonic() < deadline:
        if len(list(out.glob("*/integrated_gradients.webp"))) >= outputs:
            process.send_signal(signal.SIGINT)
            return
        time.sleep(0.02)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Result]]:
    root = tmp_path_factory.mktemp("explain")
    torch.manual_seed(0)
    weights = root / "squeezenet1_1.pth"
    torch.save(torchvision.models.squeezenet1_1(weights=None).state_dict(), weights)
    photos, more, loose = build_photos(root)
    rng = np.random.default_rng(1)
    slow = root / "slow"
    slow.mkdir()
    for index in range(12):
        Image.fromarray(noise(rng, 48, 48)).save(slow / f"img{index:02d}.png")
    Image.fromarray(noise(rng, 64, 48)).resize(LARGE).save(slow / "large.jpg", quality=80)

    env = environment(root / "torch_home")
    model = ["--model", "squeezenet1_1", "--weights", str(weights), "--input-size", str(SIZE)]
    main_args = [str(photos), str(more), str(loose), "--recursive", *model]
    main_args += ["--steps", "2", "--samples", "2", "--save-raw", "--max-image-pixels", "10000000"]
    slow_args = [str(slow), *model, "--method", "integrated_gradients", "--steps", "48"]
    slow_args += ["--batch-size", "1", "--format", "webp", "--target", "tench"]
    first = {
        "main": start(main_args, root / "out-main", env, limit_files=True),
        "interrupted": start(slow_args, root / "out-slow", env),
    }
    interrupt_when(first["interrupted"], outputs=2)
    results = {name: finish(started) for name, started in first.items()}
    shutil.copytree(root / "out-main", root / "out-overwrite", symlinks=True)
    overwrite_args = [*main_args, "--overwrite", "--method", "gradient", "--overlay-alpha", "0"]
    second = {
        "rerun": start(main_args, root / "out-main", env, limit_files=True),
        "resumed": start(slow_args, root / "out-slow", env),
        "overwrite": start(overwrite_args, root / "out-overwrite", env, limit_files=True),
    }
    results.update({name: finish(started) for name, started in second.items()})
    yield results


# ---- checks shared by the tests -----------------------------------------------------------


def check_schema(manifest: dict[str, Any]) -> None:
    """The manifest follows docs/manifest.md."""
    assert set(manifest) == {"format", "run", "inputs"}
    assert manifest["format"] == 1
    run = manifest["run"]
    assert set(run) == RUN_KEYS
    totals = run["totals"]
    assert set(totals) - {"device_seconds", "device_idle"} == {
        "inputs", "ok", "error", "skipped", "seconds"
    }  # fmt: skip
    if "device_idle" in totals:  # a run that explained something
        assert 0 < totals["device_seconds"] <= totals["seconds"]
        assert 0 <= totals["device_idle"] < 1
    assert set(run["versions"]) >= {"saliency-kit", "torch", "torchvision", "python"}
    statuses = [entry["status"] for entry in manifest["inputs"]]
    assert run["totals"]["inputs"] == len(statuses)
    assert run["totals"]["ok"] == statuses.count("ok")
    assert run["totals"]["error"] == statuses.count("error")
    paths = [entry["path"] for entry in manifest["inputs"]]
    assert len(set(paths)) == len(paths)
    for entry in manifest["inputs"]:
        assert set(entry) - {"size", "mtime_ns", "source_bytes"} == ENTRY_KEYS
        if Path(entry["source"]).is_file():
            assert entry["size"] == Path(entry["source"]).stat().st_size
        assert entry["status"] in ("ok", "error")
        assert (entry["error"] is None) == (entry["status"] == "ok")
        assert Path(entry["source"]).is_absolute()
        for record in entry["methods"].values():
            assert set(record) == {"overlay", "raw", "seconds"}
            assert record["overlay"].startswith(entry["path"] + "/")
        if entry["prediction"] is not None:
            assert set(entry["prediction"]) == {"index", "label", "probability"}
            assert entry["top5"][0] == entry["prediction"]
            assert set(entry["target"]) == {"index", "label"}


def no_temporary_files(out: Path) -> None:
    leftovers = [p for p in out.rglob(".*") if p.name.endswith(".tmp")]
    assert leftovers == []


# ---- the main run ---------------------------------------------------------------------------


def test_main_run_exit_code_and_schema(runs: dict[str, Result]) -> None:
    main = runs["main"]
    assert main.returncode == 1, main.describe()
    manifest = main.manifest()
    check_schema(manifest)
    run = manifest["run"]
    assert run["methods"] == list(FOUR)
    assert run["method_options"]["integrated_gradients"]["steps"] == 2
    assert run["method_options"]["smoothgrad"]["samples"] == 2
    # The automatic layer is recorded as the module the library resolves for that model.
    resolved = saliency.explain(
        torchvision.models.squeezenet1_1().eval(), torch.rand(1, 3, SIZE, SIZE), "gradcam"
    ).options["layer"]
    assert run["method_options"]["gradcam"]["layer"] == resolved == "features.7"
    assert run["model"] == "squeezenet1_1" and run["weights"].endswith("squeezenet1_1.pth")
    assert run["target"] == "predicted" and run["class_names"] is True
    assert run["device"] == "cpu" and run["format"] == "png" and run["batch_size"] is None
    assert run["totals"]["skipped"] == 0
    assert "device_idle" in run["totals"]  # measured by the pipeline, and in the summary line
    assert f"device idle {run['totals']['device_idle']:.0%}" in main.stdout
    assert sorted(main.entries()) == sorted([*VALID, *BROKEN, "loop2.jpg", FULL_DISK])
    no_temporary_files(main.out)


def test_main_run_notes_the_folder_loop(runs: dict[str, Result]) -> None:
    assert "loop" in runs["main"].stderr and "nested/up" in runs["main"].stderr


@pytest.mark.parametrize("name", sorted(VALID))
def test_valid_input_has_every_output_at_its_own_size(runs: dict[str, Result], name: str) -> None:
    main = runs["main"]
    entry = main.entries()[name]
    if name == "locked.png" and not os.access(main.out.parent / "photos" / name, os.R_OK):
        assert entry["status"] == "error" and "permission denied" in entry["error"]
        return
    assert entry["status"] == "ok", entry
    width, height = VALID[name]
    assert (entry["width"], entry["height"]) == (width, height)
    assert 0 <= entry["prediction"]["index"] < 1000
    assert entry["prediction"]["label"] == saliency_labels()[entry["prediction"]["index"]]
    assert len(entry["top5"]) == 5
    probabilities = [item["probability"] for item in entry["top5"]]
    assert probabilities == sorted(probabilities, reverse=True)
    assert entry["target"]["index"] == entry["prediction"]["index"]
    assert sorted(entry["methods"]) == sorted(FOUR)
    for method, record in entry["methods"].items():
        assert record["overlay"] == f"{name}/{method}.png"
        with Image.open(main.out / record["overlay"]) as overlay:
            assert overlay.size == (width, height)
            assert overlay.mode == "RGB"
        raw = np.load(main.out / record["raw"])
        assert raw.dtype == np.float32
        assert raw.shape == ((1, SIZE, SIZE) if method == "gradcam" else (3, SIZE, SIZE))
        assert record["seconds"] >= 0


def saliency_labels() -> list[str]:
    return list(torchvision.models.SqueezeNet1_1_Weights.DEFAULT.meta["categories"])


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_broken_input_is_a_clear_error_without_outputs(runs: dict[str, Result], name: str) -> None:
    main = runs["main"]
    entry = main.entries()[name]
    assert entry["status"] == "error"
    assert entry["error"].startswith(f"{name}: ")
    assert BROKEN[name] in entry["error"], entry["error"]
    assert entry["methods"] == {} and entry["prediction"] is None and entry["top5"] == []
    assert not (main.out / name).exists()  # nothing half-written
    assert f"error: {name}: " in main.stderr


def test_full_disk_fails_that_input_only_and_leaves_no_partial_file(
    runs: dict[str, Result],
) -> None:
    main = runs["main"]
    entry = main.entries()[FULL_DISK]
    assert entry["status"] == "error" and entry["methods"] == {}
    assert entry["error"].startswith(f"{FULL_DISK}: ") and "File too large" in entry["error"]
    assert (entry["width"], entry["height"]) == (1000, 800) and entry["prediction"] is not None
    assert list((main.out / FULL_DISK).iterdir()) == []  # no overlay, no temporary file


def test_collisions_are_disambiguated(runs: dict[str, Result]) -> None:
    entries = runs["main"].entries()
    root = runs["main"].out.parent
    assert entries["a.jpg"]["source"] == str(root / "photos" / "a.jpg")
    assert entries["a.jpg~2"]["source"] == str(root / "more" / "a.jpg")
    assert entries["a.jpg~3"]["source"] == str(root / "loose" / "a.jpg")


def test_main_run_reports_a_summary(runs: dict[str, Result]) -> None:
    summary = runs["main"].stdout
    assert f"{len(VALID)} done" in summary and f"{len(BROKEN) + 2} failed" in summary


# ---- rerun, overwrite ------------------------------------------------------------------------


def test_rerun_skips_what_is_done_and_says_so(runs: dict[str, Result]) -> None:
    rerun, main = runs["rerun"], runs["main"]
    assert rerun.returncode == 1, rerun.describe()  # the broken files fail again
    assert f"resuming: {len(VALID)} of {len(main.entries())} inputs already done" in rerun.stderr
    assert f"{len(VALID)} skipped" in rerun.stdout
    manifest = rerun.manifest()
    check_schema(manifest)
    assert manifest["run"]["totals"]["skipped"] == len(VALID)
    assert rerun.mtimes == main.mtimes
    for name in VALID:
        assert rerun.entries()[name]["methods"] == main.entries()[name]["methods"]


def test_overwrite_redoes_the_requested_method_only(runs: dict[str, Result]) -> None:
    overwrite, main = runs["overwrite"], runs["main"]
    assert overwrite.returncode == 1, overwrite.describe()
    assert "0 skipped" in overwrite.stdout and "resuming" not in overwrite.stderr
    manifest = overwrite.manifest()
    check_schema(manifest)
    assert manifest["run"]["methods"] == list(FOUR)  # earlier methods stay listed
    before = {path.relative_to(main.out): mtime for path, mtime in main.mtimes.items()}
    after = {path.relative_to(overwrite.out): mtime for path, mtime in overwrite.mtimes.items()}
    for name in VALID:
        if manifest_status(main, name) != "ok":
            continue
        gradient, gradcam = Path(name, "gradient.png"), Path(name, "gradcam.png")
        assert after[gradient] != before[gradient], name
        assert after[gradcam] == before[gradcam], name
        assert sorted(overwrite.entries()[name]["methods"]) == sorted(FOUR)
        assert overwrite.entries()[name]["status"] == "ok"


def manifest_status(result: Result, name: str) -> str:
    status: str = result.entries()[name]["status"]
    return status


def background(result: Result, name: str) -> np.ndarray:
    """The decoded image as drawn under a zero-alpha overlay (``overwrite`` run)."""
    with Image.open(result.out / name / "gradient.png") as overlay:
        return np.asarray(overlay.convert("RGB")).astype(int)


def test_sixteen_bit_images_are_scaled_not_clipped(runs: dict[str, Result]) -> None:
    pixels = background(runs["overwrite"], "sixteen.png")
    assert np.all(pixels[:, :20] == round(1000 * 255 / 65535))
    assert np.all(np.abs(pixels[:, 20:] - 60000 * 255 / 65535) <= 0.5)


def test_exif_rotated_photo_is_upright(runs: dict[str, Result]) -> None:
    pixels = background(runs["overwrite"], "exif rotated.jpg")
    assert pixels.shape == (40, 20, 3)
    assert np.abs(pixels[5, 10] - (255, 0, 0)).max() < 40  # red on top
    assert np.abs(pixels[35, 10] - (0, 0, 255)).max() < 40  # blue below


@pytest.mark.parametrize(
    ("name", "where", "colour"),
    [
        ("palette transparent.png", (10, 25), (255, 255, 255)),  # transparent → white
        ("palette transparent.png", (10, 5), (255, 0, 0)),
        ("rgba.png", (10, 25), (255, 255, 255)),
        ("rgba.png", (10, 5), (0, 0, 255)),
        ("animated.gif", (8, 12), (255, 0, 0)),  # first frame
        ("cmyk.jpg", (10, 15), (0, 255, 255)),
        ("one.png", (0, 0), (10, 200, 30)),
    ],
)
def test_awkward_modes_decode_to_the_right_colours(
    runs: dict[str, Result], name: str, where: tuple[int, int], colour: tuple[int, int, int]
) -> None:
    pixels = background(runs["overwrite"], name)
    assert np.abs(pixels[where] - colour).max() <= 8, pixels[where]


# ---- interrupt and resume --------------------------------------------------------------------


def test_interrupted_run_stops_cleanly_with_a_valid_manifest(runs: dict[str, Result]) -> None:
    interrupted = runs["interrupted"]
    assert interrupted.returncode == 130, interrupted.describe()
    assert "interrupted" in interrupted.stderr and "rerun" in interrupted.stderr
    manifest = interrupted.manifest()
    check_schema(manifest)
    entries = interrupted.entries()
    done = [path for path, entry in entries.items() if entry["status"] == "ok"]
    assert 2 <= len(done) < 13 and "large.jpg" not in done
    for path in done:
        with Image.open(interrupted.out / path / "integrated_gradients.webp") as overlay:
            assert overlay.format == "WEBP" and overlay.size == (48, 48)
    no_temporary_files(interrupted.out)


def test_interrupted_run_resumes_and_exits_zero(runs: dict[str, Result]) -> None:
    interrupted, resumed = runs["interrupted"], runs["resumed"]
    assert resumed.returncode == 0, resumed.describe()
    done = [p for p, e in interrupted.entries().items() if e["status"] == "ok"]
    assert f"resuming: {len(done)} of 13 inputs already done" in resumed.stderr
    assert f"{13 - len(done)} done, {len(done)} skipped" in resumed.stdout
    manifest = resumed.manifest()
    check_schema(manifest)
    assert manifest["run"]["totals"] == {**manifest["run"]["totals"], "inputs": 13, "ok": 13}
    assert manifest["run"]["totals"]["skipped"] == len(done)
    assert manifest["run"]["target"] == 0 and manifest["run"]["format"] == "webp"


def test_large_image_and_named_target(runs: dict[str, Result]) -> None:
    resumed = runs["resumed"]
    entry = resumed.entries()["large.jpg"]
    assert (entry["width"], entry["height"]) == LARGE
    assert entry["target"] == {"index": 0, "label": "tench"}
    assert entry["methods"]["integrated_gradients"]["raw"] is None
    with Image.open(resumed.out / "large.jpg" / "integrated_gradients.webp") as overlay:
        assert overlay.size == LARGE
