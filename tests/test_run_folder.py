"""The run-folder module: manifests of the previous version read back, one schema for every
writer, the defensive reader, top classes."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import saliency
from saliency.gallery import write_run_folder
from saliency.run_folder import (
    ClassScore,
    InputRecord,
    Manifest,
    ManifestError,
    MethodRecord,
    RunInfo,
    Totals,
    read_manifest,
    top_classes,
    top_probabilities,
    write_manifest,
)

# The run keys `saliency explain` writes (tests/test_cli_explain.py checks a real run has them).
RUN_KEYS = {
    "model", "weights", "methods", "method_options", "target", "device", "precision", "compile",
    "batch_size", "memory_budget", "format", "class_names", "versions", "started", "finished",
    "totals",
}  # fmt: skip

ENTRY = {
    "path": "cats/tom.jpg",
    "source": "/photos/cats/tom.jpg",
    "status": "ok",
    "error": None,
    "width": 640,
    "height": 480,
    "prediction": {"index": 281, "label": "tabby", "probability": 0.93},
    "top5": [
        {"index": 281, "label": "tabby", "probability": 0.93},
        {"index": 282, "label": "tiger cat", "probability": 0.05},
    ],
    "target": {"index": 281, "label": "tabby"},
    "methods": {
        "gradcam": {"overlay": "cats/tom.jpg/gradcam.png", "raw": None, "seconds": 0.04},
        "gradient": {
            "overlay": "cats/tom.jpg/gradient.png",
            "raw": "cats/tom.jpg/gradient.npy",
            "seconds": 0.02,
        },
    },
}
FAILED = {
    "path": "broken.png",
    "source": "/photos/broken.png",
    "status": "error",
    "error": "broken.png: truncated or corrupt image data",
    "width": None,
    "height": None,
    "prediction": None,
    "top5": [],
    "target": None,
    "methods": {},
}
# As the previous version's `saliency explain` wrote it (docs/manifest.md).
CLI_RUN = {
    "model": "resnet50",
    "weights": "DEFAULT",
    "methods": ["gradient", "gradcam"],
    "method_options": {"gradient": {}, "gradcam": {"layer": "layer4", "relu": True}},
    "target": "predicted",
    "device": "cpu",
    "precision": "fp32",
    "compile": False,
    "batch_size": None,
    "memory_budget": None,
    "format": "png",
    "class_names": True,
    "versions": {"saliency-kit": "0.1.0", "torch": "2.14.1", "python": "3.11.7"},
    "started": "2026-11-27T15:00:00+00:00",
    "finished": "2026-11-27T15:01:00+00:00",
    "totals": {
        "inputs": 2,
        "ok": 1,
        "error": 1,
        "skipped": 0,
        "seconds": 12.5,
        "device_seconds": 9.8,
        "device_idle": 0.12,
    },
}
# As the previous version's gallery.from_explanations (and the demo) wrote it.
EXPLANATIONS_RUN = {
    "model": None,
    "weights": None,
    "methods": ["gradient"],
    "method_options": {"gradient": {}},
    "target": "given",
    "class_names": False,
    "format": "png",
    "versions": {"saliency-kit": "0.1.0"},
    "started": "2026-11-27T15:00:00+00:00",
    "finished": "2026-11-27T15:00:01+00:00",
    "totals": {"inputs": 1, "ok": 1, "error": 0, "skipped": 0, "seconds": None},
}


def manifest_file(folder: Path, run: dict[str, Any], inputs: list[dict[str, Any]]) -> Path:
    path = folder / "manifest.json"
    path.write_text(json.dumps({"format": 1, "run": run, "inputs": inputs}), encoding="utf-8")
    return path


def test_a_manifest_of_the_previous_cli_reads_back_and_writes_the_same(tmp_path: Path) -> None:
    manifest_file(tmp_path, CLI_RUN, [ENTRY, FAILED])
    manifest = read_manifest(tmp_path)
    assert manifest is not None
    run = manifest.run
    assert run.target == "predicted" and run.compile is False and run.batch_size is None
    assert run.totals == Totals(2, 1, 1, 0, 12.5, 9.8, 0.12)
    entry = manifest.inputs["cats/tom.jpg"]
    assert entry.prediction == ClassScore(281, "tabby", 0.93)
    assert entry.target == ClassScore(281, "tabby")
    assert entry.methods["gradient"] == MethodRecord(
        "cats/tom.jpg/gradient.png", "cats/tom.jpg/gradient.npy", 0.02
    )
    assert manifest.inputs["broken.png"].status == "error"
    assert manifest.to_json() == {"format": 1, "run": CLI_RUN, "inputs": [FAILED, ENTRY]}


@pytest.mark.parametrize("target", ["predicted", 7, "given", None])
def test_every_target_of_the_previous_version_reads_back(tmp_path: Path, target: object) -> None:
    manifest_file(tmp_path, {**CLI_RUN, "target": target}, [ENTRY])
    manifest = read_manifest(tmp_path)
    assert manifest is not None and manifest.run.target == target
    assert manifest.to_json()["run"]["target"] == target


def test_a_manifest_written_from_explanations_by_the_previous_version(tmp_path: Path) -> None:
    manifest_file(tmp_path, EXPLANATIONS_RUN, [ENTRY])
    manifest = read_manifest(tmp_path)
    assert manifest is not None
    run = manifest.to_json()["run"]
    assert {k: run[k] for k in EXPLANATIONS_RUN} == EXPLANATIONS_RUN
    assert set(run) == RUN_KEYS  # the keys it lacked read as null: one schema
    assert {run[k] for k in RUN_KEYS - set(EXPLANATIONS_RUN)} == {None}


def test_unknown_keys_are_kept_and_wrong_types_read_as_defaults(tmp_path: Path) -> None:
    odd = {**CLI_RUN, "batch_size": True, "target": "banana", "compile": "yes", "cmap": "magma"}
    odd["totals"] = {**CLI_RUN["totals"], "ok": True, "seconds": float("inf")}
    path = manifest_file(tmp_path, odd, [ENTRY])
    path.write_text(path.read_text().replace("Infinity", "1e999"))
    manifest = read_manifest(tmp_path)
    assert manifest is not None
    run = manifest.run
    assert run.batch_size is None and run.target is None and run.compile is None
    assert run.totals is not None and run.totals.ok == 0 and run.totals.seconds is None
    assert run.extra == {"cmap": "magma"}
    assert manifest.to_json()["run"]["cmap"] == "magma"


def test_unsafe_paths_are_dropped_and_the_method_is_remembered(tmp_path: Path) -> None:
    evil = copy.deepcopy(ENTRY)
    evil["methods"]["gradcam"]["overlay"] = "../outside.png"
    evil["methods"]["gradient"]["raw"] = "/etc/passwd"
    no_source = {**FAILED, "path": "x.png", "source": None}
    manifest_file(tmp_path, CLI_RUN, [evil, {**ENTRY, "path": "a/../b"}, no_source])
    manifest = read_manifest(tmp_path)
    assert manifest is not None and list(manifest.inputs) == ["cats/tom.jpg"]
    entry = manifest.inputs["cats/tom.jpg"]
    assert list(entry.methods) == ["gradient"] and entry.dropped == ["gradcam"]
    assert entry.methods["gradient"].raw is None


def test_manifests_of_another_format_or_shape_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "manifest.json"
    for text, message in (
        ("[]", "expected an object"),
        ('{"run": {}, "inputs": []}', "format None is not supported"),
        ('{"format": 1, "inputs": []}', "lacks its 'run' object"),
    ):
        path.write_text(text)
        with pytest.raises(ManifestError, match=message):
            read_manifest(tmp_path)


def test_written_manifests_are_sorted_unless_asked_to_keep_the_order(tmp_path: Path) -> None:
    records = {p: InputRecord(p, f"/in/{p}") for p in ("b.png", "a.png")}
    manifest = Manifest(RunInfo(model="m"), records)
    write_manifest(tmp_path, manifest)
    assert [e["path"] for e in json.loads((tmp_path / "manifest.json").read_text())["inputs"]] == [
        "a.png",
        "b.png",
    ]
    write_manifest(tmp_path, manifest, sort=False)
    again = read_manifest(tmp_path)
    assert again is not None and list(again.inputs) == ["b.png", "a.png"]


def test_top_classes_softmax_logits_and_keep_probabilities() -> None:
    logits = torch.tensor([[2.0, 0.0, 1.0], [0.2, 0.5, 0.3]])  # the second row: probabilities
    (first, second) = top_classes(logits, ["a", "b", "c"], k=2)
    expected = logits[0].softmax(0)
    assert [s.index for s in first] == [0, 2] and [s.label for s in first] == ["a", "c"]
    assert first[0].probability == round(float(expected[0]), 6)
    assert second == [ClassScore(1, "b", 0.5), ClassScore(2, "c", 0.3)]
    indices, probabilities = top_probabilities(logits, k=10)  # k is capped at K
    assert indices[0] == [0, 2, 1] and len(probabilities[1]) == 3
    assert top_classes(logits[:1], None)[0][0].label is None


def test_a_folder_of_explanations_has_the_schema_of_a_cli_run(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 2, 3, padding=1), nn.Flatten(), nn.Linear(2 * 8 * 8, 4))
    inputs = torch.rand(2, 3, 8, 8)
    given = saliency.explain(model, inputs, "gradient", target=[1, 2])
    folder = write_run_folder(given, tmp_path / "run", names=["z.png", "a.png"], labels="abcd")
    data = json.loads((folder / "manifest.json").read_text())
    assert set(data["run"]) == RUN_KEYS and data["run"]["target"] == "given"
    assert data["run"]["device"] == "cpu" and data["run"]["precision"] is None
    assert [e["path"] for e in data["inputs"]] == ["z.png", "a.png"]  # the batch's order
    assert [e["target"] for e in data["inputs"]] == [
        {"index": 1, "label": "b"},
        {"index": 2, "label": "c"},
    ]
    outputs = model(inputs).detach()
    assert data["inputs"][0]["top5"] == [s.to_json() for s in top_classes(outputs, "abcd")[0]]
