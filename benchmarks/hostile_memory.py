"""Peak memory and file sizes of the large-input cases of the reliability issue (#13, items 10–12).

Not a timed benchmark: each case runs the ``saliency`` command in a fresh subprocess and reads
its peak resident set size (``ru_maxrss`` of the waited-for children: the largest single
process of the run, the main process or one of its workers). The inputs are generated in a
temporary folder:

- ``explain_64mp``: one 8000×8000 photo-like JPEG (64 MP, under the default pixel limit),
  ``saliency explain --method gradient`` on the offline ``demo:shapes`` model. Target ≤ 2 GiB.
- ``gallery_npy``: a run folder whose raw ``.npy`` map claims 16000×16000 float32 (a sparse
  file: 1 GB apparent, a few KB on disk); ``saliency gallery`` on it.
- ``single_file``: 10 photo-like images (smooth noise and gradients, so that PNG does not
  compress them trivially), one of them 6000×4000, explained, then
  ``saliency gallery --single-file``: its peak and the size of the one HTML file
  (target ≤ 15 MB).

``python -m benchmarks.hostile_memory [--source DIR] [--case NAME] [--json FILE]``:
``--source`` measures the code of another checkout (put first on ``PYTHONPATH``; e.g. an export
of an older commit). The numbers measured are in ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

MODEL = ["--model", "demo:shapes", "--workers", "1", "--quiet"]


def photo(width: int, height: int, seed: int) -> Image.Image:
    """A photo-like RGB image: smooth random colour fields, a gradient and fine grain, built in
    horizontal bands so that a 64 MP image needs little memory to make."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).resize(
        (width, height), Image.Resampling.BICUBIC
    )
    image = Image.new("RGB", (width, height))
    band = 500
    ramp = np.linspace(0, 60, width, dtype=np.float32)[None, :, None]
    for top in range(0, height, band):
        bottom = min(height, top + band)
        field = np.asarray(coarse.crop((0, top, width, bottom)), dtype=np.float32)
        grain = rng.normal(0.0, 6.0, field.shape).astype(np.float32)
        pixels = np.clip(field * 0.75 + ramp + grain, 0, 255).astype(np.uint8)
        image.paste(Image.fromarray(pixels), (0, top))
    return image


def measured(argv: Sequence[str], source: Path | None) -> dict[str, object]:
    """Run ``python -m saliency.cli ARGV`` in a fresh measuring process: its exit code and the
    peak RSS (bytes) of the largest process of the run."""
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    if source is not None:
        environment["PYTHONPATH"] = f"{source}{os.pathsep}{environment.get('PYTHONPATH', '')}"
    # The measuring process is fresh: its RUSAGE_CHILDREN sees this one command only.
    probe = (
        "import resource, subprocess, sys, json\n"
        "code = subprocess.call([sys.executable, '-m', 'saliency.cli', *sys.argv[1:]],"
        " stdout=subprocess.DEVNULL)\n"
        "peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024\n"
        "print(json.dumps({'code': code, 'peak': peak}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe, *argv],
        env=environment,
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    if result["code"] != 0:
        result["stderr"] = done.stderr[-2000:]
    return result


def explain_64mp(root: Path, source: Path | None) -> dict[str, object]:
    path = root / "big.jpg"
    photo(8000, 8000, seed=1).save(path, quality=90)
    out = root / "out_64mp"
    result = measured(
        ["explain", str(path), "--method", "gradient", "--out", str(out), *MODEL], source
    )
    overlay = out / "big.jpg" / "gradient.png"
    result["overlay"] = list(Image.open(overlay).size) if overlay.exists() else None
    return result


def gallery_npy(root: Path, source: Path | None) -> dict[str, object]:
    pictures = root / "small"
    pictures.mkdir()
    photo(64, 48, seed=2).save(pictures / "a.png")
    out = root / "out_npy"
    explained = measured(
        ["explain", str(pictures), "--method", "gradient", "--save-raw", "--out", str(out), *MODEL],
        source,
    )
    assert explained["code"] == 0, explained
    raw = out / "a.png" / "gradient.npy"
    raw.unlink()
    claimed = np.lib.format.open_memmap(raw, mode="w+", dtype=np.float32, shape=(16000, 16000))
    del claimed  # a sparse file: the header and a hole
    result = measured(["gallery", str(out)], source)
    result["npy_apparent_bytes"] = raw.stat().st_size
    result["npy_disk_bytes"] = raw.stat().st_blocks * 512
    return result


def single_file(root: Path, source: Path | None) -> dict[str, object]:
    pictures = root / "photos"
    pictures.mkdir()
    sizes = [(6000, 4000)] + [(1600, 1200)] * 5 + [(1024, 768)] * 4
    for index, (width, height) in enumerate(sizes):
        photo(width, height, seed=10 + index).save(pictures / f"p{index}.png")
    out = root / "out_single"
    explained = measured(
        ["explain", str(pictures), "--method", "gradient", "--out", str(out), *MODEL], source
    )
    assert explained["code"] == 0, explained
    page = root / "single.html"
    result = measured(["gallery", str(out), "--single-file", "--out", str(page)], source)
    result["explain_peak"] = explained["peak"]
    result["html_bytes"] = page.stat().st_size if page.exists() else None
    return result


CASES = {"explain_64mp": explain_64mp, "gallery_npy": gallery_npy, "single_file": single_file}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=None, help="checkout to measure")
    parser.add_argument("--case", action="append", choices=sorted(CASES), help="default: all")
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    arguments = parser.parse_args(argv)
    results = {}
    with tempfile.TemporaryDirectory(prefix="saliency-memory-") as folder:
        for name in arguments.case or list(CASES):
            case = Path(folder) / name
            case.mkdir()
            results[name] = CASES[name](case, arguments.source)
            print(name, json.dumps(results[name]), flush=True)
    if arguments.json is not None:
        arguments.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
