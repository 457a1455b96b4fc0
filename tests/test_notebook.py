"""``examples/quickstart.ipynb`` runs top to bottom, offline, on the shipped demo models."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "quickstart.ipynb"


def test_quickstart_notebook_executes(tmp_path: Path) -> None:
    nbformat = pytest.importorskip("nbformat", reason="pip install -e '.[test]' installs it")
    nbclient = pytest.importorskip("nbclient", reason="pip install -e '.[test]' installs it")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": tmp_path}}
    )
    client.execute()  # raises CellExecutionError on the first failing cell
    text = "\n".join(
        output.get("text", "") + str(output.get("data", {}).get("text/plain", ""))
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
    )
    assert "integrated_gradients" in text and "pointing game" in text
    images = [
        output
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
        if "image/png" in output.get("data", {})
    ]
    assert len(images) >= 2  # the matplotlib figure and the Explanation's own PNG
    masses = dict(re.findall(r"(shapes(?:-\w+)?)\s+marker mass (\d\.\d+)", text))
    assert float(masses["shapes-shortcut"]) > float(masses["shapes"])
