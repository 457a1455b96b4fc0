"""Smoke test of the benchmark harness (benchmarks/): tiny sizes, every profile's rows present.

The harness runs as users run it, ``python -m benchmarks.run`` from the repository root. The
numbers mean nothing at this size; the test checks that every implementation ran (positive
images/s), that the overlays were written, and that the results file is updated in place.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

CPU_ROWS = {  # ours: defaults and channels_last=True
    ("forward+backward", "torch"): 2,  # eager, and eager channels-last
    ("gradient", "saliency-kit"): 2,
    ("gradient", "captum"): 1,
    ("IG-2", "saliency-kit"): 2,
    ("IG-2", "captum"): 2,  # defaults and best of the internal_batch_size sweep
    ("SmoothGrad-2", "saliency-kit"): 2,
    ("SmoothGrad-2", "captum"): 2,
    ("Grad-CAM", "saliency-kit"): 3,  # automatic layer (and channels-last) and explicit layer
    ("Grad-CAM", "captum"): 1,
    ("Grad-CAM", "pytorch-grad-cam"): 1,
}
E2E_ROWS = {
    ("saliency explain", "gradient, gradcam"): 4,  # overlays: 2 photos × 2 methods
    ("saliency explain", "gradcam"): 2,
    ("captum + matplotlib", "gradient, gradcam"): 4,
    ("pytorch-grad-cam", "gradcam"): 2,
}


def _section(text: str, profile: str) -> str:
    match = re.search(
        rf"<!-- profile:{profile} -->\n(.*?)<!-- /profile:{profile} -->", text, re.DOTALL
    )
    assert match, f"no {profile} section in the results file"
    return match.group(1)


def _rows(section: str, first_header: str) -> list[list[str]]:
    """The body rows of the Markdown table whose first header cell is ``first_header``."""
    lines = section.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |"))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip().strip("*") for cell in line.strip("|").split(" | ")])
    return rows


def _positive(cell: str) -> float:
    value = float(cell.replace(",", ""))
    assert value > 0, cell
    return value


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    results = tmp_path_factory.mktemp("bench") / "RESULTS.md"
    results.write_text("# Benchmark results\n\nkept text\n", encoding="utf-8")
    env = dict(os.environ, MPLBACKEND="Agg", PYTHONWARNINGS="ignore")
    command = [sys.executable, "-m", "benchmarks.run", "--profile", "cpu,gpu,e2e", "--smoke"]
    process = subprocess.run(
        [*command, "--threads", "1", "--out", str(results)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert process.returncode == 0, process.stdout + process.stderr
    return process.stdout, results.read_text(encoding="utf-8")


def test_cpu_profile_has_every_implementation(smoke_run: tuple[str, str]) -> None:
    stdout, text = smoke_run
    section = _section(text, "cpu")
    assert section in stdout  # the tables are printed too
    rows = _rows(section, "method")
    found: dict[tuple[str, str], int] = {}
    for method, library, _options, rate, _range, passes, memory, speed, _mem in rows:
        found[method, library] = found.get((method, library), 0) + 1
        _positive(rate)
        _positive(passes)
        assert float(memory.replace(",", "")) >= 0
        if library != "saliency-kit" and method != "forward+backward":
            assert speed.endswith("×") and _positive(speed[:-1])
    assert found == CPU_ROWS
    assert "internal_batch_size=1" in section and "nt_samples_batch_size=1" in section
    for name in ("torch ", "captum ", "grad-cam ", " cores", "- date "):
        assert name in section
    assert len(_rows(section, "target")) == 5


def test_e2e_profile_runs_every_pipeline(smoke_run: tuple[str, str]) -> None:
    _stdout, text = smoke_run
    section = _section(text, "e2e")
    rows = _rows(section, "pipeline")
    written = {}
    for pipeline, methods, rate, _range, after, peak, idle, overlays, _speed in rows:
        _positive(rate)
        _positive(after)
        _positive(peak)
        written[pipeline, methods] = int(overlays)
        if "saliency explain" in pipeline:  # measured by our CLI, read from its manifest
            assert idle.endswith("%") and 0 <= int(idle[:-1]) <= 100
        else:
            assert idle == "—"
    assert written == E2E_ROWS
    assert len(_rows(section, "target")) == 2


def test_gpu_profile_skips_without_cuda(smoke_run: tuple[str, str]) -> None:
    stdout, text = smoke_run
    import torch

    if torch.cuda.is_available():
        _section(text, "gpu")
    else:
        assert "[gpu] skipped: CUDA is not available" in stdout
        assert "<!-- profile:gpu -->" not in text


def test_results_file_keeps_other_text_and_replaces_sections(
    smoke_run: tuple[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _stdout, text = smoke_run
    assert text.startswith("# Benchmark results\n\nkept text\n")
    monkeypatch.syspath_prepend(str(ROOT))
    from benchmarks.report import write_section

    path = tmp_path / "RESULTS.md"
    write_section(path, "cpu", "## cpu\nfirst")
    write_section(path, "e2e", "## e2e\nother")
    write_section(path, "cpu", "## cpu\nsecond")
    updated = path.read_text(encoding="utf-8")
    assert "second" in updated and "first" not in updated and "other" in updated
    assert updated.count("<!-- profile:cpu -->") == 1
    assert [p.name for p in tmp_path.iterdir()] == ["RESULTS.md"]  # no temporary left
