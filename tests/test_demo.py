"""Tests for ``saliency demo`` (saliency.demo and the CLI command) on the shipped demo models."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from saliency.cli.main import main, metrics_table, metrics_tables
from saliency.demo import DemoSettings, run_demo
from saliency.demo.models import DEMO_MODELS, default_demo_models, installed_demo_models
from saliency.demo.report import mask_outlines, outlined_pictures
from saliency.demo.scenes import SHORTCUT, generate_scenes
from saliency.errors import InvalidOptionError
from saliency.methods.registry import get_method, list_methods
from saliency.metrics.controls import CONTROLS
from saliency.metrics.intervals import wilson_interval
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
    # the ViT doubles a run's time: measured when named (--model shapes-vit, or all)
    assert set(default_demo_models()) == set(DEMO_MODELS) - {"shapes-vit"}


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
    pairs = [(row["model"], row["method"]) for row in rows]
    models = [f"demo:{name}" for name in default_demo_models()]
    rows_of = ("gradient", "gradcam", *CONTROLS)  # the methods, then the controls
    assert pairs == [(m, method) for m in models for method in rows_of]
    for row in rows:
        for name in ("pointing_game", "relevance_mass", "relevance_rank", "accuracy"):
            assert 0.0 <= row[name] <= 1.0, (name, row)
        for name in ("deletion_auc", "insertion_auc"):
            assert 0.0 <= row[name] <= 1.0
        assert -1.0 <= row["random_robustness"] <= 1.0
        if not row["method"].startswith("baseline:"):
            assert -1.0 <= row["robustness"] <= 1.0
        assert any(key.startswith("sanity_") for key in row)
        for name in ("road_morf", "road_lerf", "sparseness"):
            assert 0.0 <= row[name] <= 1.0, (name, row["method"])
        assert 0.0 <= row["complexity"] <= math.log(96 * 96)
        assert 0.0 <= row["random_logit"] <= 1.0 and row["input_invariance"] >= 0.0
        if row["method"].startswith("baseline:"):
            assert row["random_logit"] == 1.0  # a control ignores the class
        if row["method"] in ("baseline:centre", "baseline:random"):
            assert row["input_invariance"] < 1e-5, row["method"]
        if row["method"] in ("gradient", "gradcam"):
            # invariant up to float32 rounding, which flips the odd ReLU near zero
            assert row["input_invariance"] < 0.05, row["method"]
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
    assert len(entries) == 3 * len(default_demo_models())
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
            assert row[key] == value or (row[key] != row[key] and value is None), key
    assert again.gallery is None and not (tmp_path / "index.html").exists()


def test_shortcut_model_attributes_to_its_marker(demo_run: Path) -> None:
    rows = json.loads((demo_run / "metrics.json").read_text())["rows"]
    by_pair = {(r["model"], r["method"]): r for r in rows}
    for method in ("gradient", "gradcam"):
        shortcut = by_pair[("demo:shapes-shortcut", method)]
        assert shortcut["marker_mass"] > shortcut["object_mass"], method
        # the clean model's maps sit on the object
        assert by_pair[("demo:shapes", method)]["relevance_mass"] > shortcut["relevance_mass"]


@pytest.mark.parametrize("option", ["--scenes", "--images"])
def test_cli_demo_runs_and_prints_the_table(
    tmp_path: Path, capsys: pytest.CaptureFixture, option: str
) -> None:
    out = tmp_path / "run"
    code = main(
        [
            "demo",
            "--out",
            str(out),
            option,
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
    assert "baseline:edges" in printed.out and "] " in printed.out  # controls, intervals
    assert "saliency demo: 1/1 steps" in printed.err
    rows = json.loads((out / "metrics.json").read_text())["rows"]
    assert len(rows) == 1 + len(CONTROLS) and rows[0]["accuracy_low"] <= rows[0]["accuracy"]
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
    columns = ["pointing_game", "robustness", "road_morf"]
    lines = metrics_table(rows, columns).splitlines()
    assert lines[0].split() == ["model", "method", "pointing_game", "robustness"]
    assert lines[1].split() == ["demo:shapes", "gradient", "0.500", "-"]
    column = lines[0].index("pointing_game")
    assert lines[1][column:].startswith("0.500") and lines[2][column:].startswith("1.000")
    with_interval = [{**rows[0], "pointing_game_low": 0.25, "pointing_game_high": 0.75}]
    cells = metrics_table(with_interval, columns).splitlines()[1].split()
    assert cells[2:4] == ["0.50", "[0.25,0.75]"]
    assert metrics_table(rows, ["sparseness"]) == ""  # no row has it: no table


def test_the_printed_tables_split_localisation_from_the_checks() -> None:
    row = {"model": "m", "method": "g", "pointing_game": 0.5, "road_morf": 0.2, "complexity": 7.0}
    first, second = metrics_tables([row]).split("\n\n")
    assert first.splitlines()[0].split() == ["model", "method", "pointing_game"]
    assert second.splitlines()[0].split() == ["model", "method", "road_morf", "complexity"]


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
    assert [row["method"] for row in result.rows] == [*expected, *CONTROLS]
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
        *(("demo:shapes", control) for control in CONTROLS),
        ("demo:shapes-vit", "gradcam"),
        ("demo:shapes-vit", "attention_rollout"),
        *(("demo:shapes-vit", control) for control in CONTROLS),
    ]
    assert len(steps) == 4 and "demo:shapes attention_rollout (does not apply)" in steps
    vit = [row for row in result.rows if row["model"] == "demo:shapes-vit"]
    assert all(0.0 <= row["pointing_game"] <= 1.0 for row in vit)


def test_every_cell_has_its_95_percent_interval(demo_run: Path) -> None:
    rows = json.loads((demo_run / "metrics.json").read_text())["rows"]
    with (demo_run / "metrics.csv").open() as handle:
        header = next(csv.reader(handle))
    for row in rows:
        metrics = [
            key
            for key, value in row.items()
            if isinstance(value, float) and not key.endswith(("_low", "_high")) and key != "seconds"
        ]
        assert {"pointing_game", "deletion_auc", "accuracy", "random_robustness"} <= set(metrics)
        for name in metrics:
            assert f"{name}_low" in header and f"{name}_high" in header
            assert row[f"{name}_low"] <= row[name] + 1e-12, (row["method"], name)
            assert row[name] <= row[f"{name}_high"] + 1e-12, (row["method"], name)
        # proportions: the Wilson interval of the hits over the 3 scenes
        wilson = wilson_interval(round(row["pointing_game"] * 3), 3)
        assert row["pointing_game_low"] == float(wilson.low)
        assert row["pointing_game_high"] == float(wilson.high)


def test_controls_fail_the_sanity_check_and_ignore_the_model(demo_run: Path) -> None:
    rows = json.loads((demo_run / "metrics.json").read_text())["rows"]
    controls = [row for row in rows if row["method"] in CONTROLS]
    assert len(controls) == len(CONTROLS) * len(default_demo_models())
    for row in controls:
        sanity = [k for k in row if k.startswith("sanity_") and not k.endswith(("_low", "_high"))]
        assert sanity and all(row[k] == 1.0 for k in sanity), row["method"]
        assert "robustness" not in row  # no model to attack through
    by_pair = {(r["model"], r["method"]): r for r in rows}
    # a control's localisation does not depend on the model: same scenes, same masks
    for control in CONTROLS:
        shortcut = by_pair[("demo:shapes-shortcut", control)]
        rrr = by_pair[("demo:shapes-rrr", control)]
        for name in ("pointing_game", "relevance_mass", "relevance_rank", "marker_mass"):
            assert shortcut[name] == rrr[name], (control, name)


def test_marker_models_report_the_marker_area_and_the_shortcut_finding(demo_run: Path) -> None:
    rows = json.loads((demo_run / "metrics.json").read_text())["rows"]
    notes = json.loads((demo_run / "metrics.json").read_text())["notes"]
    for row in rows:
        if DEMO_MODELS[row["model"].removeprefix("demo:")].config.marker == "none":
            assert "marker_area" not in row
        else:
            assert 0.005 < row["marker_area"] < 0.05
    assert "demo:shapes-shortcut (accuracy with markers of random classes" in notes
    assert "the model reads the marker): the marker covers" in notes


def test_shortcut_findings_name_the_methods_that_expose_the_marker() -> None:
    from saliency.demo.runner import shortcut_findings

    def row(method: str, mass: float, low: float) -> dict[str, object]:
        return {
            "model": "demo:m",
            "method": method,
            "marker_mass": mass,
            "marker_mass_low": low,
            "marker_area": 0.02,
        }

    rows = [
        row("gradient", 0.3, 0.2),
        row("gradcam", 0.05, 0.03),  # 2.5× the area, but its interval reaches 1.5×
        row("integrated_hessians", 0.9, 0.8),  # second order: not counted
        row("baseline:edges", 0.5, 0.4),  # a control: not counted
        {"model": "demo:clean", "method": "gradient", "pointing_game": 1.0},
    ]
    (finding,) = shortcut_findings(rows)
    assert finding.startswith("demo:m: the marker covers 2.0% of the image")
    assert "gradient 0.300 (15.0×)" in finding and "gradcam 0.050 (2.5×)" in finding
    assert "exposed by 1 of 2 first-order methods (gradient)" in finding
    assert "integrated_hessians" not in finding and "baseline" not in finding
    (none,) = shortcut_findings([row("gradient", 0.03, 0.01)])
    assert "no first-order method" in none


def test_the_default_demo_measures_at_least_64_scenes_per_model() -> None:
    assert DemoSettings().images >= 64
