"""What a new user meets first on the command line: the same spellings in every command,
"did you mean" for a mistyped option, an honest rate and time left, and the devices that exist.

All in process (milliseconds each): the commands' real entry point ``main(argv)``, with the work
itself replaced where a case is only about the command line.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import saliency.demo
from saliency.cli import UsageError
from saliency.cli.main import main
from saliency.cli.model import available_devices, resolve_device
from saliency.cli.names import demo_model_names, split_names
from saliency.cli.progress import Progress, format_rate
from saliency.demo.models import DEMO_MODELS
from saliency.demo.runner import DemoResult
from saliency.framing import Framing

# ---- the same spellings in explain and demo ---------------------------------------------------


def test_names_are_repeatable_and_comma_separated() -> None:
    assert split_names(["gradcam,gradient", " smoothgrad ,", "gradcam"]) == [
        "gradcam",
        "gradient",
        "smoothgrad",
    ]
    assert split_names(None) == [] and split_names([","]) == []


def test_demo_models_take_the_explain_spelling_and_the_bare_name() -> None:
    assert demo_model_names(["demo:shapes", "shapes-shortcut"], DEMO_MODELS) == [
        "shapes",
        "shapes-shortcut",
    ]
    assert demo_model_names(["demo:shapes,shapes"], DEMO_MODELS) == ["shapes"]
    assert demo_model_names(None, DEMO_MODELS) == []
    installed = ("shapes", "shapes-vit")
    assert demo_model_names(["all"], DEMO_MODELS, installed) == ["shapes", "shapes-vit"]
    assert demo_model_names(["shapes-vit,all"], DEMO_MODELS, installed) == ["shapes-vit", "shapes"]
    with pytest.raises(UsageError, match=r"'resnet50' is not a demo model; accepted: demo:shapes"):
        demo_model_names(["resnet50"], DEMO_MODELS)
    with pytest.raises(UsageError, match="not a demo model"):
        demo_model_names(["timm:shapes"], DEMO_MODELS)


@pytest.fixture
def demo_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[Any]:
    """``saliency demo`` with the run replaced: the settings it was given are collected."""
    seen: list[Any] = []

    def fake_run(out: str, settings: Any, on_step: Any = None) -> Any:
        seen.append(settings)
        return DemoResult(out=Path(out), rows=[], gallery=None, seconds=0.1)

    monkeypatch.setattr(saliency.demo, "run_demo", fake_run)
    return seen


def test_demo_accepts_what_explain_accepts(
    demo_settings: list[Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["demo", "--out", str(tmp_path / "d"), "--quiet", "--device", "cpu"]
    code = main([*argv, "--model", "demo:shapes", "--method", "gradcam,gradient"])
    assert code == 0, capsys.readouterr().err
    assert demo_settings[-1].models == ("shapes",)
    assert demo_settings[-1].methods == ("gradcam", "gradient")
    assert main([*argv, "--model", "shapes", "--method", "gradcam", "--method", "smoothgrad"]) == 0
    assert demo_settings[-1].methods == ("gradcam", "smoothgrad")
    code = main([*argv, "--method", "gradient,nope"])
    err = capsys.readouterr().err
    assert code == 2 and "unknown method 'nope'" in err and "or all" in err
    code = main([*argv, "--model", "demo:nope"])
    err = capsys.readouterr().err
    assert code == 2 and "accepted: demo:shapes" in err
    assert len(demo_settings) == 2  # the usage errors did no work


# ---- did you mean ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "usage", "hint"),
    [
        (["explain", "x.jpg", "--stepz", "5"], "usage: saliency explain", "did you mean --steps"),
        (["explain", "x.jpg", "--methd=gradcam"], "usage: saliency explain", "--method"),
        (["gallery", "run", "--titel", "x"], "usage: saliency gallery", "did you mean --title"),
        (["demo", "--imagez", "3"], "usage: saliency demo", "did you mean --images"),
        (["methods", "--verbose"], "usage: saliency methods", "unrecognized arguments: --verbose"),
    ],
)
def test_an_unknown_option_shows_the_commands_usage_and_the_closest_option(
    capsys: pytest.CaptureFixture[str], argv: list[str], usage: str, hint: str
) -> None:
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(usage), err
    assert "unrecognized arguments" in err and hint in err
    assert "usage: saliency [-h]" not in err  # not the top-level usage


# ---- the rate and the time left ------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_slow_rates_are_shown_as_seconds_per_image() -> None:
    assert format_rate(8, 240.0) == "30.0 s/image"
    assert format_rate(40, 10.0) == "4.0 images/s"
    assert format_rate(3, 6.0, "steps") == "2.0 s/step"
    assert format_rate(0, 5.0) == "- images/s"


def test_the_time_left_leaves_out_the_warm_up() -> None:
    clock = FakeClock()
    stream = io.StringIO()
    progress = Progress(20, stream=stream, interactive=False, clock=clock)
    assert progress.eta() is None
    clock.now = 120.0  # loading, workers, the first (slow) batch of 4 images
    for _ in range(4):
        progress.advance()
        clock.now += 0.01
    # Only the warm-up so far: an upper bound from the whole time.
    assert progress.eta() == pytest.approx(16 * clock.now / 4)
    for _ in range(8):  # then steadily one image every 10 s
        clock.now += 10.0
        progress.advance()
    assert progress.seconds_per_unit() == pytest.approx((80.0 + 0.01) / 8)  # since the burst
    assert progress.eta() == pytest.approx(8 * 10.0, rel=1e-3)
    # The naive estimate (all the time over all the images) would say 8 * 200 / 12 ≈ 133 s.
    last = stream.getvalue().splitlines()[-1]
    assert "12/20 images" in last and "10.0 s/image" in last and "ETA 1:20" in last


def test_demo_steps_are_estimated_the_same_way() -> None:
    clock = FakeClock()
    progress = Progress(6, enabled=False, unit="steps", clock=clock)
    clock.now = 50.0  # the first step loads the model and warms up
    progress.advance()
    for _ in range(2):
        clock.now += 5.0
        progress.advance()
    assert progress.eta() == pytest.approx(3 * 5.0)
    assert "5.0 s/step" in progress._status()


# ---- devices -------------------------------------------------------------------------------------


def _no_accelerators(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    if hasattr(torch, "xpu"):
        monkeypatch.setattr(torch.xpu, "is_available", lambda: False)


def test_a_missing_device_lists_only_the_devices_that_exist(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _no_accelerators(monkeypatch)
    assert available_devices() == ["auto", "cpu"]
    for text in ("cuda", "cuda:1", "toaster"):
        with pytest.raises(UsageError) as error:
            resolve_device(text)
        message = str(error.value)
        assert message.endswith("accepted here: auto, cpu"), message
        assert "mps" not in message.rpartition(";")[2]  # torch's own message names every type
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert available_devices() == ["auto", "cpu", "mps"]
    with pytest.raises(UsageError, match="accepted here: auto, cpu, mps"):
        resolve_device("cuda")


def test_gpus_are_listed_by_index(monkeypatch: pytest.MonkeyPatch) -> None:
    _no_accelerators(monkeypatch)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert available_devices() == ["auto", "cpu", "cuda", "cuda:0", "cuda:1"]


# ---- an Integrated Hessians query box in image pixels -----------------------------------------


@pytest.fixture
def wide_photo(tmp_path: Path) -> Path:
    from PIL import Image

    pixels = np.random.default_rng(0).integers(0, 256, (200, 400, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "wide.png")
    return tmp_path / "wide.png"


@pytest.fixture
def queries(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The ``query`` every explain() call of the pipeline got."""
    from saliency.cli import pipeline

    seen: list[Any] = []
    real = pipeline.explain

    def spy(*args: Any, **options: Any) -> Any:
        seen.append(options.get("query"))
        return real(*args, **options)

    monkeypatch.setattr(pipeline, "explain", spy)
    return seen


IH = ["--model", "demo:shapes", "--method", "integrated_hessians", "--workers", "1", "--quiet"]
IH += ["--steps", "1"]


@pytest.mark.usefixtures("one_torch_thread")
def test_a_query_box_is_in_image_pixels(
    capsys: pytest.CaptureFixture[str], wide_photo: Path, tmp_path: Path, queries: list[Any]
) -> None:
    # 400×200 squashed to the demo model's 96×96: x / 400 * 96, y / 200 * 96.
    code = main(["explain", str(wide_photo), "--out", str(tmp_path / "o"), *IH, "--query",
                 "50,100,150,300"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    (mask,) = queries
    expected = torch.zeros(1, 1, 96, 96, dtype=torch.bool)
    expected[..., 24:72, 24:72] = True
    assert torch.equal(mask, expected)


@pytest.mark.usefixtures("one_torch_thread")
def test_a_query_box_outside_the_crop_fails_that_input(
    capsys: pytest.CaptureFixture[str], wide_photo: Path, tmp_path: Path, queries: list[Any]
) -> None:
    out = tmp_path / "o"
    argv = ["explain", str(wide_photo), "--out", str(out), *IH, "--fit", "crop"]
    code = main([*argv, "--query", "0,0,20,20"])  # the crop sees x 100..300 only
    assert code == 1
    entry = json.loads((out / "manifest.json").read_text())["inputs"][0]
    assert "outside the part of the image the model sees" in json.dumps(entry)
    code = main([*argv, "--query", "90,190,110,210", "--overwrite"])  # the centre: inside
    assert code == 0, capsys.readouterr().err
    from PIL import Image

    overlay = np.asarray(Image.open(out / "wide.png" / "integrated_hessians.png"))
    assert overlay.shape == (200, 400, 3)  # the original's size; outside the crop: grey
    assert (overlay[:, :90, 0] == overlay[:, :90, 1]).all()
    assert (overlay[:, :90, 1] == overlay[:, :90, 2]).all()
    framing = Framing.of((400, 200), "crop", 96, 96)
    y0, x0, y1, x1 = framing.input_box((90, 190, 110, 210))
    assert bool(queries[-1][0, 0, y0:y1, x0:x1].all()) and int(queries[-1].sum()) == (
        (y1 - y0) * (x1 - x0)
    )


@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_the_automatic_layer_is_probed_once_per_run_and_is_the_one_recorded(
    capsys: pytest.CaptureFixture[str],
    wide_photo: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    precision: str,
) -> None:
    import saliency.layers

    probed: list[str] = []
    automatic = saliency.layers._automatic

    def counted(model: Any, probe: Any) -> Any:
        resolution = automatic(model, probe)
        probed.append(saliency.layers.layer_name(model, resolution.module()))
        return resolution

    monkeypatch.setattr(saliency.layers, "_automatic", counted)
    shutil.copy(wide_photo, tmp_path / "second.png")
    out = tmp_path / "o"
    code = main(["explain", str(wide_photo), str(tmp_path / "second.png"), "--out", str(out),
                 "--model", "demo:shapes", "--method", "gradcam,layercam", "--workers", "1",
                 "--quiet", "--batch-size", "1", "--precision", precision])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    # One probe, at the check before any work: both methods and both batches reuse it.
    assert len(probed) == 1
    run = json.loads((out / "manifest.json").read_text())["run"]
    assert run["method_options"]["gradcam"]["layer"] == probed[0]
    assert run["method_options"]["layercam"]["layer"] == probed[0]
