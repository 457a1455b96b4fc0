"""``--option KEY=VALUE``: the literal parser, and the command line using it (in process)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from saliency.cli.main import main
from saliency.cli.method_options import options_for
from saliency.cli.option_values import OptionValue, literal, parse_option

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("3", 3),
        ("-2", -2),
        ("0.5", 0.5),
        ("1e-3", 1e-3),
        ("true", True),
        ("False", False),
        ("TRUE", True),
        ("null", None),
        ("None", None),
        ("[3, 8, 8]", (3, 8, 8)),
        ("(3, 8, 8)", (3, 8, 8)),
        ("[[1, 2], [3]]", ((1, 2), (3,))),
        ("[]", ()),
        ('"a b"', "a b"),
        ("'quoted'", "quoted"),
        ('"3"', "3"),
        ("riemann_trapezoid", "riemann_trapezoid"),
        ("  spaced ", "spaced"),
        ("", ""),
        ("{'a': 1}", "{'a': 1}"),  # a dict is not a literal option value: kept as text
        ("1+2j", "1+2j"),
        ("__import__('os')", "__import__('os')"),  # never evaluated
        ("[" * 200_000, "[" * 200_000),  # hostile nesting: plain text, no crash
    ],
)
def test_literal(text: str, expected: Any) -> None:
    value = literal(text)
    assert value == expected and type(value) is type(expected)


def test_parse_option_splits_at_the_first_equals_sign() -> None:
    assert parse_option("n_steps=16") == ("n_steps", OptionValue(16))
    assert parse_option(" method = a=b") == ("method", OptionValue("a=b"))


@pytest.mark.parametrize("text", ["n_steps", "=3", "two words=1", "1x=2", "a.b=1"])
def test_parse_option_refuses_what_is_not_key_value(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="KEY=VALUE"):
        parse_option(text)


def test_option_values_go_to_methods_that_have_the_option() -> None:
    given = {"n_steps": OptionValue(4), "steps": "3", "captum_method": OptionValue("riemann_left")}
    assert options_for("captum:IntegratedGradients", given) == {
        "n_steps": 4,
        "captum_method": "riemann_left",
    }
    assert options_for("integrated_gradients", given) == {"steps": 3}
    assert options_for("gradient", given) == {}
    # passed as given, also to options no typed flag can express, and to a wrapper's base
    nested = {"feature_mask": OptionValue(None), "base": OptionValue("captum:Saliency")}
    assert options_for("captum:FeatureAblation", nested) == {"feature_mask": None}
    smooth = {**nested, "abs": OptionValue(False)}
    assert options_for("smoothgrad", smooth) == {"base": "captum:Saliency", "abs": False}


# ------------------------------------------------------------------------ the command line


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "squeezenet1_1.pth"
    torch.save(torchvision.models.squeezenet1_1(weights=None).state_dict(), path)
    return path


@pytest.fixture
def photo(tmp_path: Path) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    pixels = np.random.default_rng(0).integers(0, 256, (24, 32, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(folder / "cat.png")
    return folder


def explain(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, str]:
    try:
        code = main(["explain", *map(str, argv)])
    except SystemExit as exit_:  # argparse usage errors
        code = int(exit_.code or 0)
    return code, capsys.readouterr().err


def test_captum_methods_from_the_command_line(
    capsys: pytest.CaptureFixture[str], photo: Path, weights: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    code, err = explain(
        capsys, photo, "--model", "squeezenet1_1", "--weights", weights, "--input-size", "32",
        "--out", out, "--quiet", "--save-raw",
        "--method", "captum:Occlusion,captum:IntegratedGradients,integrated_gradients",
        "--option", "sliding_window_shapes=[3, 16, 16]", "--option", "strides=(3, 16, 16)",
        "--option", "n_steps=3", "--steps", "2", "--option", "captum_method=riemann_trapezoid",
    )  # fmt: skip
    assert code == 0, err
    manifest = json.loads((out / "manifest.json").read_text())
    options = manifest["run"]["method_options"]
    assert options["captum:Occlusion"]["sliding_window_shapes"] == [3, 16, 16]
    assert options["captum:IntegratedGradients"]["n_steps"] == 3
    assert options["captum:IntegratedGradients"]["captum_method"] == "riemann_trapezoid"
    assert options["integrated_gradients"]["steps"] == 2
    # file names: the family's ':' becomes '-'
    assert (out / "cat.png" / "captum-Occlusion.png").is_file()
    raw = np.load(out / "cat.png" / "captum-Occlusion.npy")
    assert raw.shape == (3, 32, 32)
    # 16×16 windows with stride 16: the map is constant on each window
    assert np.allclose(raw[:, :16, :16], raw[0, 0, 0])


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--option", "n_step=3"], ["no registered method has an option 'n_step'", "n_steps"]),
        (["--option", "n_steps"], ["KEY=VALUE"]),
        (["--method", "captum:Occlusion"], ["needs the option 'sliding_window_shapes'"]),
        (
            ["--method", "captum:IntegratedGradients", "--option", "n_steps=many"],
            ["n_steps='many'", "accepted: int"],
        ),
    ],
)
def test_usage_errors(
    capsys: pytest.CaptureFixture[str],
    photo: Path,
    weights: Path,
    tmp_path: Path,
    argv: list[str],
    expected: list[str],
) -> None:
    out = tmp_path / "out"
    model = ["--model", "squeezenet1_1", "--weights", str(weights), "--input-size", "32"]
    code, err = explain(capsys, photo, *model, "--out", out, *argv)
    assert code == 2, err
    for fragment in expected:
        assert fragment in err
    assert not (out / "manifest.json").exists()
