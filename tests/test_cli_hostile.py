"""``saliency explain`` and ``saliency gallery`` against hostile file names, option values and run
folders (issue #13), run in process where they can be (milliseconds each once torch is
imported); signals and concurrent runs are subprocesses with timeouts.

The model is the offline ``demo:shapes`` network on small images, one fast method.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from saliency.cli.main import main
from saliency.run_folder import from_name_bytes, name_bytes, read_manifest, text_form

pytestmark = pytest.mark.usefixtures("one_torch_thread")

BASE = ["--model", "demo:shapes", "--method", "gradient", "--workers", "1", "--quiet"]


def picture(path: Path, seed: int = 0, size: tuple[int, int] = (20, 16)) -> Path:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format="PNG")
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, str, str]:
    """``saliency ARGV`` in process: exit code, stdout, stderr."""
    code = main([*map(str, argv)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ---- 1. file names that are not valid UTF-8 ------------------------------------------------


def test_name_forms_are_text_and_reversible() -> None:
    name = os.fsdecode(b"/photos/caf\xe9 \\x41.png")
    assert text_form(name) == "/photos/caf\\xe9 \\x41.png"
    raw = name_bytes(name)
    assert raw is not None and raw.isascii() and from_name_bytes(raw) == name
    assert text_form("café.png") == "café.png" and name_bytes("café.png") is None
    assert text_form("\ud800") == "\\ud800"  # a JSON escape no file name decodes to


def test_latin1_file_name_is_processed_recorded_and_resumed(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    picture(photos / "good.png")
    latin1 = picture(Path(os.fsdecode(bytes(photos) + b"/caf\xe9.png")), seed=1)
    out = tmp_path / "out"
    code, _, err = run(capsys, "explain", photos, "--out", out, *BASE)
    assert code == 0, err
    data = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    entry = next(e for e in data["inputs"] if e["path"] != "good.png")
    assert entry["status"] == "ok" and entry["path"] == "caf\\xe9.png"
    assert entry["source"] == text_form(str(latin1)) and "\\xe9" in entry["source"]
    assert from_name_bytes(entry["source_bytes"]) == str(latin1)
    assert (out / "caf\\xe9.png" / "gradient.png").is_file()
    code, _, err = run(capsys, "explain", photos, "--out", out, *BASE)
    assert code == 0 and "2 of 2 inputs already done" in err
    code, _, err = run(capsys, "gallery", out)
    assert code == 0, err
    assert "caf\\\\xe9.png" in (out / "index.html").read_text(encoding="utf-8")  # in JSON


def test_lone_surrogate_escape_in_a_manifest_neither_crashes_resume_nor_gallery(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    picture(photos / "good.png")
    out = tmp_path / "out"
    assert run(capsys, "explain", photos, "--out", out, *BASE)[0] == 0
    text = (out / "manifest.json").read_text(encoding="utf-8")
    text = text.replace('"error": null', '"error": "bad \\udcff \\ud800"', 1)
    text = text.replace('"model": "demo:shapes"', '"model": "demo:shapes", "note\\udcff": 1', 1)
    (out / "manifest.json").write_text(text, encoding="utf-8")
    manifest = read_manifest(out)
    assert manifest is not None and manifest.run.extra == {"note\\xff": 1}
    code, _, err = run(capsys, "gallery", out)
    assert code == 0, err
    code, _, err = run(capsys, "explain", photos, "--out", out, *BASE, "--overwrite")
    assert code == 0, err
    json.loads((out / "manifest.json").read_text(encoding="utf-8"))
