"""Unit tests of the parts of ``saliency explain`` that need no model: relpaths and collisions,
path safety, discovery, the manifest, resume planning, generated method options, progress."""

from __future__ import annotations

import argparse
import io
import json
import os
import pickle
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pytest
import torch
from PIL import Image
from torch import Tensor

import saliency
from saliency.cli import UsageError
from saliency.cli.explain_options import method_names, prepare_out
from saliency.cli.inputs import (
    FoundInput,
    InputError,
    RelpathAllocator,
    assign_relpaths,
    discover,
    image_extensions,
)
from saliency.cli.method_options import (
    NumberTuple,
    add_arguments,
    given_options,
    options_for,
    parse_value,
    registry_options,
)
from saliency.cli.model import ModelInput
from saliency.cli.pipeline import WorkerCrashed, Workers, decode, start_workers
from saliency.cli.plan import Job, Plan, ResumeConflict, RunRecorder, make_plan
from saliency.cli.progress import Progress, format_duration
from saliency.engine import Engine
from saliency.errors import ImageLoadError, InvalidOptionError
from saliency.images import Preprocess
from saliency.methods.base import Method
from saliency.run_folder import (
    ClassScore,
    InputRecord,
    Manifest,
    ManifestError,
    MethodRecord,
    RunInfo,
    UnsafePathError,
    encode_overlay,
    existing_output,
    is_safe_relpath,
    output_folder,
    read_manifest,
    split_relpath,
    write_manifest,
)
from saliency.targets import Target

METHODS = ("gradient", "gradcam")


# ---- relpaths, collisions, path safety -------------------------------------------------------


@pytest.mark.parametrize(
    "relpath", ["", "/abs", "a//b", "a/../b", "..", ".", "a/.", "nul\0byte", "a/"]
)
def test_unsafe_relpaths_are_refused(relpath: str) -> None:
    assert not is_safe_relpath(relpath)
    with pytest.raises(UnsafePathError):
        split_relpath(relpath)


@pytest.mark.parametrize("relpath", ["a.jpg", "cats/tom.jpg", "it's <b>&.png", "日本/..x.png"])
def test_safe_relpaths_are_accepted(relpath: str) -> None:
    assert is_safe_relpath(relpath)
    assert "/".join(split_relpath(relpath)) == relpath


def test_same_names_get_numbered_suffixes() -> None:
    allocator = RelpathAllocator(METHODS)
    names = [allocator.allocate(["cats", "tom.jpg"]) for _ in range(3)]
    assert names == ["cats/tom.jpg", "cats/tom.jpg~2", "cats/tom.jpg~3"]


def test_names_differing_only_in_case_or_normalisation_collide() -> None:
    allocator = RelpathAllocator(METHODS)
    assert allocator.allocate(["Tom.JPG"]) == "Tom.JPG"
    assert allocator.allocate(["tom.jpg"]) == "tom.jpg~2"
    assert allocator.allocate(["café.png"]) == "café.png"  # composed é
    assert allocator.allocate(["cafe\u0301.png"]) == "cafe\u0301.png~2"  # decomposed é


def test_the_run_folders_own_names_are_reserved() -> None:
    allocator = RelpathAllocator(METHODS)
    assert allocator.allocate(["manifest.json"]) == "manifest.json~2"
    assert allocator.allocate(["gallery", "x.png"]) == "gallery~2/x.png"
    assert allocator.allocate(["index.html"]) == "index.html~2"


def test_an_input_folder_may_not_cross_another_inputs_output_files() -> None:
    allocator = RelpathAllocator(METHODS)
    assert allocator.allocate(["a.jpg"]) == "a.jpg"
    # A folder "a.jpg" holding an image "gradient.png": OUT/a.jpg/gradient.png is a file.
    assert allocator.allocate(["a.jpg", "gradient.png"]) == "a.jpg/gradient.png~2"
    assert allocator.allocate(["a.jpg", "gradcam.npy", "x.png"]) == "a.jpg/gradcam.npy~2/x.png"
    assert allocator.allocate(["a.jpg", "photo.png"]) == "a.jpg/photo.png"  # no clash


def test_an_input_may_not_be_named_like_a_folder_of_another_inputs_outputs() -> None:
    allocator = RelpathAllocator(METHODS)
    allocator.claim("b.jpg/gradient.png/c.png")
    assert allocator.allocate(["b.jpg"]) == "b.jpg~2"


def test_a_method_familys_output_files_are_reserved_by_their_prefix() -> None:
    # captum:Saliency writes captum-Saliency.png: an input folder "a.jpg" holding an image of
    # that name would collide with input a.jpg's output, without the family's members listed.
    allocator = RelpathAllocator(METHODS, family_prefixes=["captum:"])
    assert allocator.allocate(["a.jpg"]) == "a.jpg"
    assert allocator.allocate(["a.jpg", "captum-Saliency.png"]) == "a.jpg/captum-Saliency.png~2"
    assert allocator.allocate(["a.jpg", "CAPTUM-anything.npy"]) == "a.jpg/CAPTUM-anything.npy~2"
    assert allocator.allocate(["a.jpg", "captum-.png"]) == "a.jpg/captum-.png"  # no member
    assert allocator.allocate(["a.jpg", "captum-x.txt"]) == "a.jpg/captum-x.txt"  # no output
    allocator.claim("b.jpg/captum-IntegratedGradients.webp/c.png")
    assert allocator.allocate(["b.jpg"]) == "b.jpg~2"
    without = RelpathAllocator(METHODS)  # no family: the name is free
    without.claim("a.jpg")
    assert without.allocate(["a.jpg", "captum-Saliency.png"]) == "a.jpg/captum-Saliency.png"


def test_a_run_without_family_methods_never_imports_the_familys_library(tmp_path: Path) -> None:
    # Planning reserves the family's file names by prefix: captum (~1 s to import) stays out.
    Image.new("RGB", (40, 30), (90, 140, 200)).save(tmp_path / "a.png")
    program = (
        "import sys; from saliency.cli.main import main; "
        f"code = main(['explain', {str(tmp_path / 'a.png')!r}, '--model', 'demo:shapes', "
        f"'--method', 'gradient,gradcam', '--out', {str(tmp_path / 'out')!r}, '--quiet']); "
        "print(code, 'captum' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True)
    assert result.stdout.splitlines()[-1].split() == ["0", "False"], result.stderr
    assert (tmp_path / "out" / "a.png" / "gradcam.png").is_file()


def test_a_console_run_on_a_torchvision_model_never_imports_torch_dynamo(tmp_path: Path) -> None:
    # torchvision imports torch._dynamo (1.5–2 s) from roi_align and transforms.v2; the console
    # defers the first (saliency.cli.dynamo_deferral) and framing uses the classic functional API.
    import torchvision

    weights = tmp_path / "squeezenet.pth"
    torch.save(torchvision.models.squeezenet1_1().state_dict(), weights)
    Image.new("RGB", (50, 30), (90, 140, 200)).save(tmp_path / "a.png")  # resized to 32²
    argv = ["explain", str(tmp_path / "a.png"), "--model", "squeezenet1_1", "--weights"]
    argv += [str(weights), "--input-size", "32", "--method", "gradient,gradcam"]
    argv += ["--out", str(tmp_path / "out"), "--quiet"]
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "saliency.cli", *argv],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    imported = [line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines()]
    assert "torchvision.models.squeezenet" in imported and "torch" in imported
    assert not [name for name in imported if name.startswith("torch._dynamo")]
    assert (tmp_path / "out" / "a.png" / "gradcam.png").is_file()


def test_assign_keeps_earlier_relpaths_by_source() -> None:
    inputs = [("/new/a.jpg", ("a.jpg",)), ("/old/a.jpg", ("a.jpg",))]
    relpaths = assign_relpaths(inputs, {"/old/a.jpg": "a.jpg"}, METHODS)
    assert relpaths == ["a.jpg~2", "a.jpg"]


def test_output_folder_stays_inside_out(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    assert output_folder(out, "cats/tom.jpg", create=True) == out / "cats" / "tom.jpg"
    assert (out / "cats" / "tom.jpg").is_dir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (out / "dogs").symlink_to(outside)
    with pytest.raises(UnsafePathError, match="symbolic link"):
        output_folder(out, "dogs/rex.jpg", create=True)
    assert list(outside.iterdir()) == []
    (out / "file.jpg").write_text("x")
    with pytest.raises(UnsafePathError, match="not a folder"):
        output_folder(out, "file.jpg", create=True)
    with pytest.raises(UnsafePathError):
        output_folder(out, "../escape", create=True)


def test_existing_output_ignores_links_and_folders(tmp_path: Path) -> None:
    (tmp_path / "a.jpg").mkdir()
    (tmp_path / "a.jpg" / "gradient.png").write_bytes(b"png")
    assert existing_output(tmp_path, "a.jpg/gradient.png") == tmp_path / "a.jpg" / "gradient.png"
    (tmp_path / "a.jpg" / "gradcam.png").symlink_to(tmp_path / "a.jpg" / "gradient.png")
    assert existing_output(tmp_path, "a.jpg/gradcam.png") is None
    assert existing_output(tmp_path, "a.jpg") is None
    assert existing_output(tmp_path, "missing/gradient.png") is None


# ---- discovery ---------------------------------------------------------------------------------


def make_tree(root: Path) -> Path:
    photos = root / "photos"
    (photos / "cats").mkdir(parents=True)
    for path in (photos / "b.png", photos / "a.JPG", photos / "cats" / "tom.jpg"):
        Image.new("RGB", (4, 4)).save(path, format="PNG" if path.suffix == ".png" else "JPEG")
    (photos / "notes.txt").write_text("x")
    (photos / ".hidden.png").write_bytes(b"")
    (photos / "cats" / "back").symlink_to(photos)
    return photos


def test_discover_top_level_only_without_recursive(tmp_path: Path) -> None:
    found = discover([str(make_tree(tmp_path))], recursive=False, exclude=None)
    assert [item.natural for item in found.inputs] == [("a.JPG",), ("b.png",)]
    assert any("--recursive" in note for note in found.notes)


def test_discover_recursive_skips_loops_hidden_files_and_the_output_folder(
    tmp_path: Path,
) -> None:
    photos = make_tree(tmp_path)
    out = photos / "results"
    out.mkdir()
    Image.new("RGB", (4, 4)).save(out / "old.png")
    found = discover([str(photos)], recursive=True, exclude=out)
    assert [item.natural for item in found.inputs] == [
        ("a.JPG",),
        ("b.png",),
        ("cats", "tom.jpg"),
    ]
    assert all(Path(item.source).is_absolute() for item in found.inputs)
    assert any("loop" in note for note in found.notes)


def test_discover_files_dedups_and_keeps_any_extension(tmp_path: Path) -> None:
    photos = make_tree(tmp_path)
    found = discover(
        [str(photos / "notes.txt"), str(photos), str(photos / "b.png")],
        recursive=False,
        exclude=None,
    )
    assert [item.natural for item in found.inputs] == [("notes.txt",), ("a.JPG",), ("b.png",)]
    with pytest.raises(InputError, match="input not found"):
        discover([str(tmp_path / "missing")], recursive=False, exclude=None)


def test_image_extensions_are_decodable_formats() -> None:
    extensions = image_extensions()
    assert {".jpg", ".jpeg", ".png", ".gif", ".webp", ".tif", ".bmp"} <= extensions
    assert ".txt" not in extensions and ".pdf" not in extensions and ".h5" not in extensions


# ---- manifest -----------------------------------------------------------------------------------


def sample_manifest() -> Manifest:
    ok = InputRecord(
        path="cats/tom.jpg",
        source="/photos/cats/tom.jpg",
        width=4,
        height=3,
        prediction=ClassScore(1, None, 0.5),
        top5=[ClassScore(1, None, 0.5)],
        target=ClassScore(1, None),
        methods={"gradient": MethodRecord("cats/tom.jpg/gradient.png", None, 0.01)},
    )
    bad = InputRecord(path="bad.png", source="/photos/bad.png", status="error", error="bad.png: x")
    return Manifest(RunInfo(model="m", methods=["gradient"]), {r.path: r for r in (ok, bad)})


def test_manifest_round_trip_is_atomic_and_sorted(tmp_path: Path) -> None:
    write_manifest(tmp_path, sample_manifest())
    data = json.loads((tmp_path / "manifest.json").read_text())
    assert data["format"] == 1
    assert [entry["path"] for entry in data["inputs"]] == ["bad.png", "cats/tom.jpg"]
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]  # no temporary file left
    again = read_manifest(tmp_path)
    assert again is not None
    assert again.to_json() == sample_manifest().to_json()


def test_read_manifest_refuses_garbage_and_drops_unsafe_entries(tmp_path: Path) -> None:
    assert read_manifest(tmp_path) is None
    path = tmp_path / "manifest.json"
    path.write_text("[1, 2")
    with pytest.raises(ManifestError, match="not valid JSON"):
        read_manifest(tmp_path)
    path.write_text(json.dumps({"format": 99, "run": {}, "inputs": []}))
    with pytest.raises(ManifestError, match="format-1"):
        read_manifest(tmp_path)
    entry = sample_manifest().inputs["cats/tom.jpg"].to_json()
    evil = {**entry, "path": "../../etc"}
    sneaky = {**entry, "path": "x.jpg", "methods": {"gradient": {"overlay": "/etc/passwd"}}}
    path.write_text(json.dumps({"format": 1, "run": {}, "inputs": [entry, evil, sneaky, entry]}))
    manifest = read_manifest(tmp_path)
    assert manifest is not None
    assert sorted(manifest.inputs) == ["cats/tom.jpg", "x.jpg"]
    assert manifest.inputs["x.jpg"].methods == {}


# ---- resume planning ----------------------------------------------------------------------------


def current_run(**changes: Any) -> RunInfo:
    run: dict[str, Any] = {
        "model": "m",
        "weights": None,
        "target": "predicted",
        "precision": "fp32",
        "methods": ["gradient", "gradcam"],
        "method_options": {"gradient": {}, "gradcam": {"layer": None, "relu": True}},
    }
    run.update(changes)
    return RunInfo(**run)


TINY_PNG = encode_overlay(Image.new("RGB", (2, 2)), "png")


def finished_folder(tmp_path: Path, sources: list[Path]) -> Manifest:
    """An output folder where every source has both methods done."""
    out = tmp_path / "out"
    entries = {}
    for source in sources:
        source.write_bytes(b"image")
        relpath = source.name
        (out / relpath).mkdir(parents=True)
        methods = {}
        for method in METHODS:
            (out / relpath / f"{method}.png").write_bytes(TINY_PNG)  # whole: looks_complete
            methods[method] = MethodRecord(f"{relpath}/{method}.png", None, 0.1)
        entries[relpath] = InputRecord(relpath, str(source), methods=methods)
    return Manifest(current_run(), entries)


def plan(
    tmp_path: Path,
    previous: Manifest | None,
    sources: list[Path],
    *,
    run: RunInfo | None = None,
    extension: str = "png",
    save_raw: bool = False,
    overwrite: bool = False,
) -> Plan:
    found = [FoundInput(str(source), (source.name,)) for source in sources]
    return make_plan(
        previous,
        found,
        run or current_run(),
        out=tmp_path / "out",
        extension=extension,
        save_raw=save_raw,
        overwrite=overwrite,
        output_names=METHODS,
    )


def test_complete_pairs_are_skipped(tmp_path: Path) -> None:
    sources = [tmp_path / "a.jpg", tmp_path / "b.jpg"]
    previous = finished_folder(tmp_path, sources)
    result = plan(tmp_path, previous, sources)
    assert result.jobs == [] and result.skipped == ["a.jpg", "b.jpg"]


def test_missing_files_format_and_raw_make_pairs_incomplete(tmp_path: Path) -> None:
    sources = [tmp_path / "a.jpg", tmp_path / "b.jpg"]
    previous = finished_folder(tmp_path, sources)
    (tmp_path / "out" / "b.jpg" / "gradcam.png").unlink()
    result = plan(tmp_path, previous, sources)
    assert [(j.relpath, j.methods) for j in result.jobs] == [("b.jpg", ("gradcam",))]
    assert "gradcam" not in result.entries["b.jpg"].methods
    assert "gradient" in result.entries["b.jpg"].methods
    as_jpg = plan(tmp_path, previous, sources, extension="jpg")
    assert len(as_jpg.jobs) == 2
    with_raw = plan(tmp_path, previous, sources, save_raw=True)
    assert len(with_raw.jobs) == 2


def test_overwrite_redoes_everything(tmp_path: Path) -> None:
    sources = [tmp_path / "a.jpg"]
    previous = finished_folder(tmp_path, sources)
    result = plan(tmp_path, previous, sources, overwrite=True)
    assert [(j.relpath, j.methods) for j in result.jobs] == [("a.jpg", METHODS)]


def test_other_settings_conflict_unless_overwrite(tmp_path: Path) -> None:
    sources = [tmp_path / "a.jpg"]
    previous = finished_folder(tmp_path, sources)
    other_layer = current_run(
        method_options={"gradient": {}, "gradcam": {"layer": "features", "relu": True}}
    )
    with pytest.raises(ResumeConflict, match="gradcam options"):
        plan(tmp_path, previous, sources, run=other_layer)
    with pytest.raises(ResumeConflict, match="model: 'm' -> 'n'"):
        plan(tmp_path, previous, sources, run=current_run(model="n"))
    replaced = plan(tmp_path, previous, sources, run=other_layer, overwrite=True)
    assert replaced.notes and "gradcam" in replaced.notes[0]


def test_entries_of_other_inputs_are_kept(tmp_path: Path) -> None:
    sources = [tmp_path / "a.jpg", tmp_path / "b.jpg"]
    previous = finished_folder(tmp_path, sources)
    result = plan(tmp_path, previous, sources[:1], run=current_run(methods=["gradient"]))
    assert sorted(result.entries) == ["a.jpg", "b.jpg"]
    assert result.methods == ["gradient", "gradcam"]


def test_a_new_file_with_a_taken_name_gets_a_suffix_and_a_gone_one_is_replaced(
    tmp_path: Path,
) -> None:
    sources = [tmp_path / "a.jpg"]
    previous = finished_folder(tmp_path, sources)
    other = tmp_path / "elsewhere" / "a.jpg"
    other.parent.mkdir()
    other.write_bytes(b"image")
    result = plan(tmp_path, previous, [other])
    assert [j.relpath for j in result.jobs] == ["a.jpg~2"]
    sources[0].unlink()  # the earlier file is gone: its relpath is free again
    result = plan(tmp_path, previous, [other])
    assert [j.relpath for j in result.jobs] == ["a.jpg"]
    assert result.entries["a.jpg"].source == str(other)


# ---- recording ---------------------------------------------------------------------------------


def test_recorder_saves_finished_inputs_and_marks_unfinished_ones(tmp_path: Path) -> None:
    jobs = [Job(f"/p/{name}", name, METHODS) for name in ("a.jpg", "b.jpg", "c.jpg")]
    entries = {job.relpath: InputRecord(job.relpath, job.source) for job in jobs}
    stream = io.StringIO()
    recorder = RunRecorder(
        tmp_path,
        current_run(),
        entries,
        jobs,
        skipped=[],
        class_names=("zero", "one"),
        progress=Progress(3, stream=stream, interactive=False),
    )
    a, b, _ = jobs
    recorder.decoded(a, 4, 3)
    recorder.predicted(a, [1, 0], [0.75, 0.25], target=1)
    for method in METHODS:
        recorder.method_done(a, method, f"a.jpg/{method}.png", None, 0.5)
    recorder.finished(a)
    recorder.decoded(b, 4, 3)
    recorder.method_done(b, "gradient", "b.jpg/gradient.png", None, 0.5)  # then interrupted
    recorder.save()
    data = json.loads((tmp_path / "manifest.json").read_text())
    saved = {entry["path"]: entry for entry in data["inputs"]}
    assert sorted(saved) == ["a.jpg", "b.jpg"]  # c.jpg: nothing done, left out
    assert saved["a.jpg"]["status"] == "ok" and saved["a.jpg"]["error"] is None
    assert saved["a.jpg"]["prediction"] == {"index": 1, "label": "one", "probability": 0.75}
    assert saved["a.jpg"]["target"] == {"index": 1, "label": "one"}
    assert saved["b.jpg"]["status"] == "error" and "not finished" in saved["b.jpg"]["error"]
    assert data["run"]["totals"] == {**data["run"]["totals"], "inputs": 2, "ok": 1, "error": 1}


def test_recorder_lists_failures_with_the_input_path(tmp_path: Path) -> None:
    job = Job("/p/x.png", "x.png", METHODS)
    stream = io.StringIO()
    recorder = RunRecorder(
        tmp_path,
        current_run(),
        {"x.png": InputRecord("x.png", job.source)},
        [job],
        skipped=[],
        class_names=None,
        progress=Progress(1, stream=stream, interactive=False),
    )
    recorder.method_done(job, "gradient", "x.png/gradient.png", None, 0.1)
    recorder.method_failed(job, "gradcam", "cannot write outputs: File too large")
    recorder.finished(job)
    assert recorder.failed == {"x.png"}
    entry = recorder.entries["x.png"]
    assert entry.status == "error"
    assert entry.error == "x.png: gradcam: cannot write outputs: File too large"
    assert "error: x.png: gradcam: cannot write outputs" in stream.getvalue()


# ---- method options, method names, output folder -------------------------------------------


def test_generated_options_cover_every_registered_field() -> None:
    names = {option.name for option in registry_options(reserved=())}
    assert {"steps", "samples", "noise", "layer", "baseline", "base", "relu"} <= names
    assert "base_options" not in names  # a mapping: not a command-line value
    relu = next(option for option in registry_options(()) if option.name == "relu")
    assert relu.flag and relu.switch == "--relu"
    assert "steps" not in {option.name for option in registry_options(reserved={"steps"})}


def test_options_go_only_to_methods_that_have_them() -> None:
    given = {"steps": "8", "samples": "3", "layer": "features"}
    assert options_for("gradient", given) == {}
    assert options_for("integrated_gradients", given) == {"steps": 8}
    assert options_for("gradcam", given) == {"layer": "features"}
    assert options_for("smoothgrad", given) == {"samples": 3}  # base gradient: no steps
    with_base = {**given, "base": "integrated_gradients"}
    assert options_for("smoothgrad", with_base) == {
        "samples": 3,
        "base": "integrated_gradients",
        "steps": 8,
    }
    saliency.get_method("smoothgrad").create(**options_for("smoothgrad", with_base))
    assert options_for("smoothgrad", {"base": "smoothgrad", "samples": "2"}) == {
        "base": "smoothgrad",
        "samples": 2,
    }


def test_option_values_are_parsed_by_field_type() -> None:
    assert parse_value("noise", "0.5", (float,)) == 0.5
    assert parse_value("noise", "1", (float,)) == 1.0
    assert parse_value("seed", "none", (int, type(None))) is None
    assert parse_value("baseline", "blur", (float, str)) == "blur"
    assert parse_value("baseline", "0", (float, str)) == 0.0
    assert parse_value("squared", "yes", (bool,)) is True
    with pytest.raises(InvalidOptionError, match="--steps 'x'"):
        parse_value("steps", "x", (int,))


def test_generated_arguments_parse(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    options = registry_options(())
    add_arguments(parser.add_argument_group("m"), options)
    arguments = parser.parse_args(["--steps", "4", "--no-relu"])
    assert given_options(arguments, options) == {"steps": "4", "relu": False}


@dataclass(frozen=True)
class _ToyMethod(Method):
    """A method with one field of each kind a command line can or cannot set."""

    box: tuple[int, int, int, int] | None = None
    weights: tuple[float, ...] = (1.0,)
    mode: Literal["fast", "exact"] = "fast"
    damping: float = 0.5
    table: Mapping[str, int] = field(default_factory=dict)

    def attribute(self, engine: Engine, inputs: Tensor, target: Target) -> Tensor:
        return inputs


@pytest.fixture
def toy_method() -> Iterator[str]:
    saliency.register_method(_ToyMethod, name="toy_cli_method")
    yield "toy_cli_method"
    saliency.unregister_method("toy_cli_method")


def test_options_are_generated_for_a_new_method_from_its_fields(toy_method: str) -> None:
    options = {option.name: option for option in registry_options(reserved={"weights"})}
    assert {"box", "mode", "damping"} <= set(options) and toy_method in options["box"].methods
    assert "table" not in options and "weights" not in options  # a mapping; a reserved name
    given = {"box": "1,2,3,4", "mode": "exact", "damping": "2", "steps": "3"}
    assert options_for(toy_method, given) == {"box": (1, 2, 3, 4), "mode": "exact", "damping": 2.0}
    assert options_for(toy_method, {"box": "none"}) == {"box": None}
    with pytest.raises(InvalidOptionError, match="4 comma-separated ints or none"):
        options_for(toy_method, {"box": "1,2"})
    assert parse_value("weights", "0.5,2", (NumberTuple(float, None),)) == (0.5, 2.0)


def test_method_names_from_the_registry() -> None:
    assert method_names(["all"]) == saliency.list_methods(families=False)
    assert method_names(["captum:Saliency"]) == ["captum:Saliency"]
    assert method_names(None) == ["gradient", "integrated_gradients", "smoothgrad", "gradcam"]
    assert method_names(["gradcam,gradient", "gradcam"]) == ["gradcam", "gradient"]
    with pytest.raises(UsageError, match=r"unknown method 'x'.*or all"):
        method_names(["x"])


def test_prepare_out_refuses_files(tmp_path: Path) -> None:
    assert prepare_out(str(tmp_path / "new" / "out")) == tmp_path / "new" / "out"
    (tmp_path / "file").write_text("")
    with pytest.raises(UsageError, match="not a folder"):
        prepare_out(str(tmp_path / "file"))
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(UsageError, match="not a writable folder"):
            prepare_out(str(locked))


# ---- progress ---------------------------------------------------------------------------------


def test_plain_progress_prints_a_few_lines() -> None:
    stream = io.StringIO()
    progress = Progress(100, stream=stream, interactive=False)
    for index in range(100):
        progress.advance(failed=index == 3)
    lines = stream.getvalue().splitlines()
    assert 1 <= len(lines) <= 11
    assert lines[-1].startswith("saliency explain: 100/100 images, 1 failed,")
    assert "images/s" in lines[-1] and "ETA" in lines[-1]


def test_terminal_progress_draws_a_bar_and_messages_above_it() -> None:
    stream = io.StringIO()
    progress = Progress(2, stream=stream, interactive=True)
    progress.advance()
    progress.message("error: x")
    progress.advance()
    progress.close()
    text = stream.getvalue()
    assert "\r[" in text and "2/2 images" in text and "error: x\n" in text
    quiet = io.StringIO()
    silent = Progress(2, stream=quiet, enabled=False)
    silent.advance()
    assert quiet.getvalue() == ""


def test_format_duration() -> None:
    assert format_duration(4.25) == "4.2s"
    assert format_duration(125) == "2:05"
    assert format_duration(3725) == "1:02:05"


# ---- worker processes --------------------------------------------------------------------------


def test_image_load_error_survives_pickling() -> None:
    error = ImageLoadError("/photos/a.png", "truncated or corrupt image data")
    copy = pickle.loads(pickle.dumps(error))
    assert isinstance(copy, ImageLoadError)
    assert (copy.path, copy.reason, str(copy)) == (error.path, error.reason, str(error))


def test_workers_decode_in_processes_with_the_pixel_limit(tmp_path: Path) -> None:
    small, large = tmp_path / "small.png", tmp_path / "large.png"
    Image.new("RGB", (20, 10), (255, 0, 0)).save(small)
    Image.new("RGB", (300, 300), (0, 0, 255)).save(large)
    model_input = ModelInput(Preprocess(), 8)
    pool, kind = start_workers(2, model_input, max_image_pixels=20_000)
    try:
        assert kind == "processes"
        image, pixels = pool.submit(decode, Job(str(small), "small.png", ("gradient",))).result()
        with pytest.raises(ImageLoadError, match="image too large"):  # 90,000 > 2 × 20,000
            pool.submit(decode, Job(str(large), "large.png", ("gradient",))).result()
        pids = set(pool.submit(os.getpid).result() for _ in range(4))
    finally:
        pool.shutdown()
    assert image.size == (20, 10) and pixels.shape == (3, 8, 8) and pixels.dtype == torch.uint8
    assert pixels[0].min() == 255 and pixels[2].max() == 0
    assert os.getpid() not in pids


def _crash_on_width_13(image: Image.Image) -> torch.Tensor:
    """A model transform that kills its worker process on 13-pixel-wide images."""
    if image.width == 13:
        os._exit(3)
    return torch.zeros(3, 4, 4)


def test_a_dying_worker_fails_only_its_own_task(tmp_path: Path) -> None:
    sizes = {"a.png": 10, "bad.png": 13, "b.png": 11, "c.png": 12}
    jobs = []
    for name, width in sizes.items():
        Image.new("RGB", (width, 8)).save(tmp_path / name)
        jobs.append(Job(str(tmp_path / name), name, ("gradient",)))
    workers = Workers(2, ModelInput(Preprocess(), 4, custom=_crash_on_width_13), None)
    try:
        futures = [workers.submit(decode, job) for job in jobs]
        outcomes = {}
        for job, future in zip(jobs, futures, strict=True):
            try:
                outcomes[job.relpath] = workers.result(future, decode, job)[0].width
            except WorkerCrashed as exc:
                outcomes[job.relpath] = str(exc)
        # the pool still works after the crashes
        after = workers.result(workers.submit(decode, jobs[0]), decode, jobs[0])
    finally:
        workers.shutdown()
    assert outcomes["a.png"] == 10 and outcomes["b.png"] == 11 and outcomes["c.png"] == 12
    assert "worker process died" in str(outcomes["bad.png"])
    assert workers.restarts >= 2  # the first crash, and the crash of the task's second run
    assert after[0].width == 10


# ---- the run journal (issue #13, item 4) -------------------------------------------------------


def _journal_record(path: str, method: str, mtime: int = 5) -> InputRecord:
    record = InputRecord(path=path, source=f"/photos/{path}", size=10, mtime_ns=mtime)
    record.methods[method] = MethodRecord(f"{path}/{method}.png")
    return record


def test_journals_are_read_back_line_by_line_and_adopted_only_for_the_same_settings(
    tmp_path: Path,
) -> None:
    from saliency.cli.journal import Journal, append_line, journal_files, read_journals
    from saliency.cli.plan import adopt_journals

    run = RunInfo(model="demo:shapes", methods=["gradient"], method_options={"gradient": {}})
    journal = Journal(tmp_path, "manifest.json", run)
    for name in ("a.png", "b.png"):  # as the writers append them
        append_line(str(journal.path), journal.line(_journal_record(name, "gradient")))
    with open(journal.path, "ab") as handle:
        handle.write(b'{"input": {"path": "c.png", "sou')  # cut short by a kill
    (found,) = read_journals(tmp_path)
    assert [r.path for r in found.inputs] == ["a.png", "b.png"]
    assert found.run.model == "demo:shapes"

    known = _journal_record("a.png", "gradcam")  # same file: the methods add up
    replaced = _journal_record("b.png", "gradcam", mtime=4)  # an older version: replaced
    base = Manifest(run, {"a.png": known, "b.png": replaced})
    manifest, adopted = adopt_journals(base, [found])
    assert manifest is not None and adopted == 2
    assert set(manifest.inputs["a.png"].methods) == {"gradient", "gradcam"}
    assert set(manifest.inputs["b.png"].methods) == {"gradient"}
    other = Manifest(RunInfo(model="resnet50", methods=["gradient"]), {})
    assert adopt_journals(other, [found]) == (other, 0)  # other results settings: redone
    alone, adopted = adopt_journals(None, [found])
    assert alone is not None and sorted(alone.inputs) == ["a.png", "b.png"] and adopted == 2

    journal.remove()
    assert not journal_files(tmp_path)
    outside = tmp_path / "elsewhere"
    outside.write_text('{"journal": 1, "run": {}}\n')
    (tmp_path / ".manifest.json.journal").symlink_to(outside)
    os.mkfifo(tmp_path / ".manifest.rank-1.json.journal")
    assert read_journals(tmp_path) == []  # neither followed nor waited on
