"""``saliency explain`` usage and set-up errors (exit code 2), ``--help``, run in process.

Each case calls the command's real entry point, ``saliency.cli.main.main(argv)``, in this
process (torch is already imported, so each takes milliseconds) and checks the exit code, that
the message says what is accepted, and that no work was done.
"""

from __future__ import annotations

import json
import urllib.error
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

import saliency
from saliency.cli import pipeline
from saliency.cli.explain_options import byte_size
from saliency.cli.main import main

SMALL = ["--input-size", "32"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised SqueezeNet 1.1 state dict (1000 classes)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "squeezenet1_1.pth"
    torch.save(torchvision.models.squeezenet1_1(weights=None).state_dict(), path)
    return path


@pytest.fixture
def photo(tmp_path: Path) -> Path:
    """A folder with one small image."""
    folder = tmp_path / "photos"
    folder.mkdir()
    pixels = np.random.default_rng(0).integers(0, 256, (24, 32, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(folder / "cat.png")
    return folder


@pytest.fixture(autouse=True)
def offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """An empty torch cache where any download fails like an offline machine."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)

    def no_network(url: str, *args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    yield


def explain(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, str, str]:
    """Run ``saliency explain ARGV``: exit code, stdout, stderr."""
    code = main(["explain", *map(str, argv)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def model_args(weights: Path) -> list[str]:
    return ["--model", "squeezenet1_1", "--weights", str(weights), *SMALL]


def test_help_lists_every_registered_method_and_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["explain", "--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for name in saliency.list_methods(families=False):
        assert name in text
    # A family is named once, without loading its library (a quick --help) ...
    assert "captum:NAME" in text and "captum:Deconvolution" not in text
    # ... and listed with its members' options when the command line names one.
    with pytest.raises(SystemExit):
        main(["explain", "--method", "captum:Saliency", "--help"])
    named = " ".join(capsys.readouterr().out.split())
    for name in saliency.list_methods():
        assert name in named
    assert "--n-steps" in named and "--n-steps" not in text
    for option in ("--model", "--weights", "--method", "--target", "--out", "--recursive",
                   "--device", "--precision", "--batch-size", "--steps", "--samples", "--noise",
                   "--layer", "--save-raw", "--format", "--overwrite", "--max-image-pixels",
                   "--input-size", "--workers", "--compile", "--memory-budget"):  # fmt: skip
        assert option in text
    assert "WHOLE image" in text and "Exit codes" in text


def test_default_model_offline_says_how_to_go_on(
    capsys: pytest.CaptureFixture[str], photo: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    code, _, err = explain(capsys, photo, "--out", out)
    assert code == 2
    assert "resnet50" in err and "--weights FILE" in err and "--model demo:shapes" in err
    assert not out.exists()  # a usage error leaves nothing behind


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--method", "gradient,nope"], ["unknown method 'nope'", "gradcam", "or all"]),
        (["--method", ","], ["--method is empty"]),
        (["--steps", "0"], ["integrated_gradients", "steps=0", "accepted"]),
        (["--steps", "many"], ["steps='many'", "a positive int or 'auto'"]),
        (["--noise", "-1"], ["smoothgrad", "noise=-1.0"]),
        (["--base", "gradcam"], ["base='gradcam' is a layer method"]),
        (["--overlay-alpha", "2"], ["--overlay-alpha 2.0", "[0, 1]"]),
        (["--overlay-cmap", "nocolours"], ["not a matplotlib colormap"]),
        # found once the model is loaded
        (
            ["--method", "gradcam", "--layer", "features.99"],
            ["layer 'features.99' does not exist", "close names: features.", "--layer NAME"],
        ),
        (["--target", "1000"], ["out of range", "0 to 999"]),
        (["--target", "tabbby"], ["not one of the model's 1000 class names", "'tabby'"]),
        (
            ["--device", "cuda:7"] if not torch.cuda.is_available() else ["--device", "cuda:99"],
            ["cuda"],
        ),
        (["--device", "toaster"], ["accepted here: auto, cpu"]),
    ],
)
def test_bad_choices_are_usage_errors_before_any_work(
    capsys: pytest.CaptureFixture[str],
    photo: Path,
    tmp_path: Path,
    weights: Path,
    argv: list[str],
    expected: list[str],
) -> None:
    out = tmp_path / "out"
    code, stdout, err = explain(capsys, photo, *model_args(weights), "--out", out, *argv)
    assert code == 2, err
    for fragment in expected:
        assert fragment in err
    assert stdout == "" and not out.exists()


def test_unknown_model_lists_what_is_accepted(
    capsys: pytest.CaptureFixture[str], photo: Path, tmp_path: Path
) -> None:
    code, _, err = explain(capsys, photo, "--model", "resnet5O", "--out", tmp_path / "out")
    assert code == 2 and "unknown model 'resnet5O'" in err and "resnet50" in err


def test_output_folder_that_is_a_file_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], photo: Path, tmp_path: Path, weights: Path
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for out in (blocker, blocker / "below"):
        code, _, err = explain(capsys, photo, *model_args(weights), "--out", out)
        assert code == 2 and "--out" in err, err
    assert blocker.read_text() == "x"


def test_missing_input_and_empty_folder_are_usage_errors(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, weights: Path
) -> None:
    code, _, err = explain(
        capsys, tmp_path / "nowhere", *model_args(weights), "--out", tmp_path / "o"
    )
    assert code == 2 and "input not found" in err
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    code, _, err = explain(capsys, empty, *model_args(weights), "--out", tmp_path / "o")
    assert code == 2 and "no image files found" in err and "--recursive" in err


def test_rerun_with_other_settings_needs_overwrite(
    capsys: pytest.CaptureFixture[str], photo: Path, tmp_path: Path, weights: Path
) -> None:
    out = tmp_path / "out"
    base: list[str | Path] = [photo, *model_args(weights), "--out", out]
    base += ["--method", "integrated_gradients"]
    code, stdout, _ = explain(capsys, *base, "--steps", "2")
    assert code == 0 and "1 done" in stdout
    manifest = (out / "manifest.json").read_bytes()
    code, _, err = explain(capsys, *base, "--steps", "3")
    assert code == 2
    assert "integrated_gradients options" in err and "'steps': 2" in err and "--overwrite" in err
    assert (out / "manifest.json").read_bytes() == manifest  # untouched
    code, stdout, err = explain(capsys, *base, "--steps", "3", "--overwrite")
    assert code == 0 and "1 done" in stdout and "replacing results" in err
    run = json.loads((out / "manifest.json").read_text())["run"]
    assert run["method_options"]["integrated_gradients"]["steps"] == 3


def test_another_model_in_the_same_folder_needs_overwrite(
    capsys: pytest.CaptureFixture[str], photo: Path, tmp_path: Path, weights: Path
) -> None:
    out = tmp_path / "out"
    code, _, _ = explain(capsys, photo, *model_args(weights), "--out", out, "--method", "gradient")
    assert code == 0
    code, _, err = explain(
        capsys, photo, *model_args(weights), "--out", out, "--method", "gradient", "--target", "5"
    )
    assert code == 2 and "target: 'predicted' -> 5" in err


def test_corrupt_manifest_is_replaced_with_a_warning(
    capsys: pytest.CaptureFixture[str], photo: Path, tmp_path: Path, weights: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest.json").write_text("{not json")
    code, _, err = explain(
        capsys, photo, *model_args(weights), "--out", out, "--method", "gradient"
    )
    assert code == 0 and "not valid JSON" in err
    assert json.loads((out / "manifest.json").read_text())["inputs"][0]["status"] == "ok"


def test_a_single_process_resumes_an_interrupted_torchrun_and_retires_its_rank_files(
    capsys: pytest.CaptureFixture[str], photo: Path, tmp_path: Path, weights: Path
) -> None:
    """Alone, a run is a world of one: it reads the per-rank manifests of the run that
    ``manifest.json`` names, keeps their records, and removes them as rank 0 does."""
    out = tmp_path / "out"
    args = [photo, *model_args(weights), "--out", out, "--method", "gradient", "--quiet"]
    assert explain(capsys, *args)[0] == 0
    done = json.loads((out / "manifest.json").read_text())
    stale_run = {**done["run"], "rank": 1, "world_size": 2}
    (out / "manifest.rank-1.json").write_text(json.dumps({**done, "run": stale_run}))
    empty = {**done, "inputs": []}
    (out / "manifest.json").write_text(json.dumps(empty))  # stopped before rank 0 merged
    code, stdout, _ = explain(capsys, *args)
    assert code == 0 and "0 done, 1 skipped" in stdout and "processes" not in stdout
    assert not (out / "manifest.rank-1.json").exists()
    manifest = json.loads((out / "manifest.json").read_text())
    assert [entry["path"] for entry in manifest["inputs"]] == ["cat.png"]
    assert "world_size" not in manifest["run"] and "rank" not in manifest["run"]


def test_gallery_flag_builds_the_gallery_of_the_run(
    capsys: pytest.CaptureFixture[str], photo: Path, weights: Path, tmp_path: Path
) -> None:
    """`explain --gallery` ends with the run's gallery: escaped names, failures listed."""
    hostile = "<img src=x onerror=alert(1)>.png"
    Image.new("RGB", (20, 16), "red").save(photo / hostile)
    (photo / "broken.png").write_bytes(b"not an image")
    out = tmp_path / "out"
    code, stdout, err = explain(
        capsys, photo, *model_args(weights), "--method", "gradient,gradcam", "--out", out,
        "--gallery", "--quiet",
    )  # fmt: skip
    assert code == 1, err  # the broken file failed, everything else was done
    page = (out / "index.html").read_text(encoding="utf-8")
    assert "gallery:" in stdout and str(out / "index.html") in stdout
    assert hostile not in page  # never raw HTML
    assert "&lt;img src=x onerror=alert(1)&gt;.png" in page or "\\u003cimg" in page
    assert "broken.png" in page
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert {entry["status"] for entry in manifest["inputs"]} == {"ok", "error"}


@pytest.mark.parametrize("text", ["lots", "0", "-5MiB", "2 parsecs", "MiB"])
def test_bad_memory_budget_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], photo: Path, tmp_path: Path, text: str
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        explain(capsys, photo, "--out", tmp_path / "out", f"--memory-budget={text}")
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"--memory-budget: {text!r}" in err and "kB, MB, GB, KiB, MiB, GiB" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("text", "expected"),
    [("4096", 4096), ("512MiB", 512 * 2**20), ("2GB", 2 * 10**9), ("1.5 kib", 1536), ("3b", 3)],
)
def test_memory_budget_sizes(text: str, expected: int) -> None:
    assert byte_size(text) == expected


def test_compile_and_memory_budget_reach_the_engine(
    capsys: pytest.CaptureFixture[str],
    photo: Path,
    tmp_path: Path,
    weights: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The eager backend runs the torch.compile machinery without minutes of C++ compilation.
    monkeypatch.setenv("SALIENCY_COMPILE_BACKEND", "eager")
    seen: list[dict[str, object]] = []
    real_explain = pipeline.explain

    def spy(*args: object, **kwargs: object) -> object:
        seen.append({k: kwargs[k] for k in ("compile", "memory_budget")})
        return real_explain(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(pipeline, "explain", spy)
    out = tmp_path / "out"
    argv = ["--method", "gradient,integrated_gradients", "--steps", "3", "--out", out]
    code, stdout, err = explain(
        capsys, photo, *model_args(weights), *argv, "--compile", "--memory-budget", "64MiB"
    )
    assert code == 0 and "1 done" in stdout, err
    assert seen == [{"compile": True, "memory_budget": 64 * 2**20}] * 2
    run = json.loads((out / "manifest.json").read_text())["run"]
    assert run["compile"] is True and run["memory_budget"] == 64 * 2**20
    assert (out / "cat.png" / "integrated_gradients.png").is_file()


def test_channels_last_runs_and_is_recorded(
    capsys: pytest.CaptureFixture[str], photo: Path, weights: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    args = [photo, *model_args(weights), "--method", "gradient", "--workers", "1", "--quiet"]
    code, _, err = explain(capsys, *args, "--channels-last", "--save-raw", "--out", out)
    assert code == 0, err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["run"]["channels_last"] is True
    fast = np.load(out / manifest["inputs"][0]["methods"]["gradient"]["raw"])
    plain_out = tmp_path / "plain"
    code, _, err = explain(capsys, *args, "--save-raw", "--out", plain_out)
    assert code == 0, err
    plain_manifest = json.loads((plain_out / "manifest.json").read_text())
    assert "channels_last" not in plain_manifest["run"]  # recorded only when used
    plain = np.load(plain_out / plain_manifest["inputs"][0]["methods"]["gradient"]["raw"])
    np.testing.assert_allclose(fast, plain, rtol=1e-4, atol=1e-5 * np.abs(plain).max())
