"""The import name clash with Google PAIR's ``saliency`` distribution is reported."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def _import_with(site: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), *sys.path])}
    return subprocess.run(
        [sys.executable, "-W", "always", "-c", "import saliency"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def test_import_warns_when_pair_saliency_is_installed_too(tmp_path: Path) -> None:
    info = tmp_path / "saliency-0.2.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: saliency\nVersion: 0.2.1\n")
    result = _import_with(tmp_path)
    assert result.returncode == 0, result.stderr
    assert "'saliency-kit'" in result.stderr
    assert "'saliency' 0.2.1 (Google PAIR saliency)" in result.stderr
    assert "separate virtual environments" in result.stderr


def test_import_is_quiet_without_the_other_distribution(tmp_path: Path) -> None:
    result = _import_with(tmp_path)
    assert result.returncode == 0, result.stderr
    assert "PAIR" not in result.stderr
