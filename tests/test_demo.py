"""Tests for ``saliency demo`` (saliency.demo and the CLI command) on the shipped demo models."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from saliency.cli.main import main, metrics_table
from saliency.demo import DemoSettings, run_demo
from saliency.demo.models import DEMO_MODELS, installed_demo_models
from saliency.demo.report import mask_outlines, outlined_pictures
from saliency.demo.scenes import SHORTCUT, generate_scenes
from saliency.errors import InvalidOptionError
from saliency.methods.registry import get_method, list_methods
from saliency.metrics.report import METRIC_NAMES
from saliency.models import load_model


def test_mask_outlines_are_the_inner_boundary() -> None:
    masks = torch.zeros(1, 7, 7, dtype=torch.bool)
    masks[0, 1:5, 2:6] = True  # a 4×4 square
    edge = mask_outlines(masks)
    expected = masks.clone()
    expected[0, 2:4, 3:5] = False  # its 2×2 interior
    assert torch.equal(edge, expected)
    full = torch.ones(1, 3, 3, dtype=torch.bool)  # touching the border counts as an edge
    assert mask_outlines(full).sum() == 8


def test_outlined_pictures_draw_object_and_marker_edges() -> None:
    scenes = generate_scenes(2, seed=3, config=SHORTCUT)
    pictures = outlined_pictures(scenes)
    for picture, image, mask, marker in zip(
        pictures, scenes.images, scenes.masks, scenes.marker_masks, strict=True
    ):
        pixels = torch.from_numpy(np.array(picture)).permute(2, 0, 1)
        green = (pixels == torch.tensor([0, 255, 0]).view(3, 1, 1)).all(0)
        magenta = (pixels == torch.tensor([255, 0, 255]).view(3, 1, 1)).all(0)
        marker_edge = mask_outlines(marker[None])[0]
        object_edge = mask_outlines(mask[None])[0] & ~marker_edge
        assert marker_edge.any() and object_edge.any()
        assert magenta[marker_edge].all() and green[object_edge].all()
        untouched = ~(marker_edge | object_edge)
        assert torch.equal(pixels[:, untouched], image[:, untouched])


def test_demo_settings_are_validated() -> None:
    with pytest.raises(InvalidOptionError, match="images"):
        DemoSettings(images=0)
    with pytest.raises(InvalidOptionError, match="accepted"):
        DemoSettings(methods=("gradient", "nope"))
    with pytest.raises(InvalidOptionError, match="demo model"):
        DemoSettings(models=("imagenet",))


def test_the_shipped_demo_models_are_installed() -> None:
    assert set(installed_demo_models()) == set(DEMO_MODELS)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    settings = DemoSettings(
        images=3,
        methods=("gradient", "gradcam"),
        sanity_samples=2,
        robustness_samples=2,
        robustness_steps=2,
    )
    run_demo(out, settings)
    return out


def test_demo_writes_metrics_for_every_model_and_method(demo_run: Path) -> None:
    document = json.loads((demo_run / "metrics.json").read_text())
    rows = document["rows"]
    pairs = {(row["model"], row["method"]) for row in rows}
    models = [f"demo:{name}" for name in installed_demo_models()]
    assert pairs == {(m, method) for m in models for method in ("gradient", "gradcam")}
    for row in rows:
        for name in ("pointing_game", "relevance_mass", "relevance_rank", "accuracy"):
            assert 0.0 <= row[name] <= 1.0, (name, row)
        for name in ("deletion_auc", "insertion_auc"):
            assert 0.0 <= row[name] <= 1.0
        assert -1.0 <= row["robustness"] <= 1.0 and -1.0 <= row["random_robustness"] <= 1.0
        assert any(key.startswith("sanity_") for key in row)
        has_marker = DEMO_MODELS[row["model"].removeprefix("demo:")].config.marker != "none"
        assert ("marker_mass" in row) == has_marker
        if has_marker:
            assert 0.0 <= row["counterfactual_accuracy"] <= 1.0
        else:
            assert row["counterfactual_accuracy"] is None
    with (demo_run / "metrics.csv").open() as handle:
        table = list(csv.DictReader(handle))
    assert len(table) == len(rows)
    assert list(table[0])[:2] == ["model", "method"]
    assert set(METRIC_NAMES) <= set(table[0])
    assert "accuracy on them" in document["notes"].lower()


def test_demo_run_folder_is_a_gallery_run(demo_run: Path) -> None:
    manifest = json.loads((demo_run / "manifest.json").read_text())
    assert manifest["run"]["methods"] == ["gradient", "gradcam"]
    entries = manifest["inputs"]
    assert len(entries) == 3 * len(installed_demo_models())
    for entry in entries:
        assert entry["status"] == "ok" and entry["target"]["label"]
        for method, output in entry["methods"].items():
            assert (demo_run / output["overlay"]).is_file(), method
            assert output["seconds"] > 0
    first = entries[0]["path"]
    assert first == "shapes/scene_0000.png"  # the index within the seed's sequence
    assert (demo_run / "scenes" / "shapes" / "masks").is_dir()
    html = (demo_run / "index.html").read_text()
    assert "pointing_game" in html and "demo:shapes-shortcut" in html


def test_demo_is_deterministic(demo_run: Path, tmp_path: Path) -> None:
    settings = DemoSettings(
        images=3,
        models=("shapes",),
        methods=("gradient",),
        sanity_samples=2,
        robustness_samples=2,
        robustness_steps=2,
        gallery=False,
    )
    again = run_demo(tmp_path, settings)
    first = json.loads((demo_run / "metrics.json").read_text())["rows"]
    reference = next(r for r in first if r["model"] == "demo:shapes" and r["method"] == "gradient")
    row = again.rows[0]
    for key, value in reference.items():
        if key != "seconds":
            assert row[key] == value, key
    assert again.gallery is None and not (tmp_path / "index.html").exists()


def test_shortcut_model_attributes_to_its_marker(demo_run: Path) -> None:
    rows = json.loads((demo_run / "metrics.json").read_text())["rows"]
    by_pair = {(r["model"], r["method"]): r for r in rows}
    for method in ("gradient", "gradcam"):
        shortcut = by_pair[("demo:shapes-shortcut", method)]
        assert shortcut["marker_mass"] > shortcut["object_mass"], method
        # the clean model's maps sit on the object
        assert by_pair[("demo:shapes", method)]["relevance_mass"] > shortcut["relevance_mass"]


def test_cli_demo_runs_and_prints_the_table(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    code = main(
        [
            "demo",
            "--out",
            str(out),
            "--images",
            "2",
            "--model",
            "shapes",
            "--method",
            "gradient",
            "--device",
            "cpu",
            "--no-gallery",
        ]
    )
    assert code == 0
    printed = capsys.readouterr()
    assert "pointing_game" in printed.out and "demo:shapes" in printed.out
    assert "saliency demo: 1/1 steps" in printed.err
    assert (out / "metrics.csv").is_file() and not (out / "index.html").exists()


def test_cli_demo_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["demo", "--out", str(tmp_path), "--method", "nope"]) == 2
    assert "nope" in capsys.readouterr().err
    assert main(["demo", "--out", str(tmp_path), "--device", "cuda:99"]) == 2 or (
        torch.cuda.device_count() > 99
    )
    with pytest.raises(SystemExit):
        main(["demo", "--images", "0"])


def test_metrics_table_aligns_columns() -> None:
    rows = [
        {"model": "demo:shapes", "method": "gradient", "pointing_game": 0.5},
        {"model": "m", "method": "gradcam", "pointing_game": 1.0, "robustness": None},
    ]
    lines = metrics_table(rows).splitlines()
    assert lines[0].split() == ["model", "method", "pointing_game", "robustness"]
    assert lines[1].split() == ["demo:shapes", "gradient", "0.500", "-"]
    column = lines[0].index("pointing_game")
    assert lines[1][column:].startswith("0.500") and lines[2][column:].startswith("1.000")


def test_every_registered_method_runs_in_the_demo(tmp_path: Path) -> None:
    settings = DemoSettings(
        images=1,
        models=("shapes",),
        sanity_samples=0,
        robustness_samples=1,
        robustness_steps=1,
        gallery=False,
        methods=("all",),
    )
    result = run_demo(tmp_path, settings)
    # every method registered one by one that applies to the CNN (method families such as
    # captum:* are not demoed; attention methods need a transformer)
    model = load_model("demo:shapes").model
    expected = [m for m in list_methods(families=False) if get_method(m).applies_to(model)]
    assert [row["method"] for row in result.rows] == expected
    assert "attention_rollout" in list_methods() and "attention_rollout" not in expected


def test_the_demo_measures_attention_methods_on_the_vit_only(tmp_path: Path) -> None:
    steps: list[str] = []
    settings = DemoSettings(
        images=2,
        models=("shapes", "shapes-vit"),
        methods=("gradcam", "attention_rollout"),
        sanity_samples=0,
        robustness_samples=1,
        robustness_steps=1,
        gallery=False,
    )
    result = run_demo(tmp_path, settings, on_step=steps.append)
    assert [(row["model"], row["method"]) for row in result.rows] == [
        ("demo:shapes", "gradcam"),
        ("demo:shapes-vit", "gradcam"),
        ("demo:shapes-vit", "attention_rollout"),
    ]
    assert len(steps) == 4 and "demo:shapes attention_rollout (does not apply)" in steps
    vit = [row for row in result.rows if row["model"] == "demo:shapes-vit"]
    assert all(0.0 <= row["pointing_game"] <= 1.0 for row in vit)
