"""A synthetic run folder in the documented layout, without a model: for tests and benchmarks.

Each input is a small picture (a gradient background with a coloured ellipse) and each method's
"attributions" a signed blob on the ellipse; overlays are drawn with :func:`saliency.render`, so
the files look like those of ``saliency explain``. Seeded: the same arguments give the same files.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import PIL.Image
import torch

from saliency.methods.registry import list_methods
from saliency.output_files import atomic_path, file_stem, write_text_atomic
from saliency.rendering import render
from saliency.run_folder import (
    METRICS_NAME,
    ClassScore,
    InputRecord,
    Manifest,
    MethodRecord,
    RunInfo,
    Totals,
    class_of,
    write_manifest,
)

LABELS = ("tabby cat", "golden retriever", "red fox", "fire truck", "espresso", "tulip")


def write_synthetic_run(
    folder: str | Path,
    count: int = 10,
    methods: Sequence[str] | None = None,
    *,
    size: tuple[int, int] = (64, 48),
    raw: bool = True,
    failed: int = 1,
    names: Sequence[str] | None = None,
    metrics: bool = True,
    seed: int = 0,
    sources: str | Path | None = None,
) -> Path:
    """Write a run folder of ``count`` inputs; the last ``failed`` of them failed.

    Args:
        folder: The run folder to create.
        count: Number of inputs (including the failed ones).
        methods: Method names (default: the first four registered methods).
        size: ``(width, height)`` of every picture.
        raw: Also write raw ``.npy`` maps (``--save-raw``).
        failed: How many inputs failed: the first failure has no output (a decoding error),
            the next ones finished their first method only.
        names: Relative input paths (default ``set_<k>/image_<i>.png``).
        metrics: Also write ``metrics.json``.
        seed: Seed of the pictures, predictions and maps.
        sources: Folder of the original pictures (default: ``<folder>-inputs`` beside it).

    Returns:
        The run folder.
    """
    folder = Path(folder).absolute()
    methods = list(methods) if methods is not None else list_methods(families=False)[:4]
    names = (
        list(names)
        if names is not None
        else [f"set_{i % 3}/image_{i:04d}.png" for i in range(count)]
    )
    if len(names) != count:
        raise ValueError(f"got {len(names)} names for {count} inputs")
    source_folder = (
        Path(sources) if sources is not None else folder.parent / f"{folder.name}-inputs"
    )
    generator = np.random.default_rng(seed)
    width, height = size
    pictures, centres = _pictures(generator, count, width, height)
    first_failure = count - failed
    files: list[tuple[Path, PIL.Image.Image | np.ndarray]] = []
    entries = []
    for i, name in enumerate(names):
        source = source_folder / name
        kind = "ok" if i < first_failure else "decode" if i == first_failure else "partial"
        if kind == "decode":
            files.append((source, np.zeros(0)))  # an unreadable file, as a real failure has
        else:
            files.append((source, PIL.Image.fromarray(pictures[i])))
        entries.append(_entry(generator, name, source, kind, width, height))
    for k, method in enumerate(methods):
        maps = _maps(generator, centres, width, height, channels=1 if "cam" in method else 3)
        overlays = render(
            torch.from_numpy(maps), torch.from_numpy(pictures).permute(0, 3, 1, 2), as_pil=True
        )
        for i, name in enumerate(names):
            finished = i < first_failure or (i > first_failure and k == 0)
            if not finished:
                continue
            stem = file_stem(method)
            files.append((folder / name / f"{stem}.png", overlays[i]))
            output = MethodRecord(f"{name}/{stem}.png", None, 0.01 * (k + 1))
            if raw:
                files.append((folder / name / f"{stem}.npy", maps[i]))
                output.raw = f"{name}/{stem}.npy"
            entries[i].methods[method] = output
    for path, _ in files:
        path.parent.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(lambda item: _save(*item), files))
    write_manifest(folder, _manifest(methods, entries), sort=False)
    if metrics:
        rows = [
            {
                "model": "demo:shapes",
                "method": m,
                "pointing_game": 0.9 - 0.1 * k,
                "deletion_auc": 0.2 + 0.05 * k,
            }
            for k, m in enumerate(methods)
        ]
        text = json.dumps({"rows": rows, "notes": "synthetic metrics of a synthetic run"})
        write_text_atomic(folder / METRICS_NAME, text)
    return folder


def _pictures(
    generator: np.random.Generator, count: int, width: int, height: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(count, H, W, 3)`` uint8 pictures and the ``(count, 2)`` ellipse centres in [0, 1]."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    u, v = x / max(1, width - 1), y / max(1, height - 1)
    base = generator.uniform(0.25, 0.85, size=(count, 1, 1, 3)).astype(np.float32)
    tint = generator.uniform(-0.2, 0.2, size=(count, 1, 1, 3)).astype(np.float32)
    pictures = base + tint * (u[None, :, :, None] - v[None, :, :, None])
    centres = generator.uniform(0.3, 0.7, size=(count, 2)).astype(np.float32)
    radii = generator.uniform(0.15, 0.3, size=(count, 2)).astype(np.float32)
    inside = (
        ((u[None] - centres[:, None, None, 0]) / radii[:, None, None, 0]) ** 2
        + ((v[None] - centres[:, None, None, 1]) / radii[:, None, None, 1]) ** 2
    ) <= 1.0
    colours = generator.uniform(0.0, 1.0, size=(count, 3)).astype(np.float32)
    pictures = np.where(inside[..., None], colours[:, None, None, :], pictures)
    return (pictures.clip(0, 1) * 255).round().astype(np.uint8), centres


def _maps(
    generator: np.random.Generator, centres: np.ndarray, width: int, height: int, channels: int
) -> np.ndarray:
    """Signed float32 maps ``(N, C, H, W)``: a positive blob, a negative ring, some noise."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    u, v = x / max(1, width - 1), y / max(1, height - 1)
    du, dv = u[None] - centres[:, None, None, 0], v[None] - centres[:, None, None, 1]
    distance = du**2 + dv**2
    blob = np.exp(-distance / 0.01) - 0.5 * np.exp(-((np.sqrt(distance) - 0.3) ** 2) / 0.004)
    noise = generator.normal(0.0, 0.05, size=(len(centres), channels, height, width))
    return (blob[:, None] / channels + noise).astype(np.float32)


def _entry(
    generator: np.random.Generator, name: str, source: Path, kind: str, width: int, height: int
) -> InputRecord:
    """A manifest entry; ``kind``: ``"ok"``, ``"decode"`` (nothing ran) or ``"partial"``."""
    picks = generator.permutation(len(LABELS))[:5]
    probabilities = np.sort(generator.dirichlet(np.full(len(LABELS), 0.4)))[::-1][:5]
    top5 = [
        ClassScore(int(k), LABELS[k], round(float(p), 4))
        for k, p in zip(picks, probabilities, strict=True)
    ]
    errors = {
        "ok": None,
        "decode": f"{name}: truncated or corrupt image data (synthetic failure)",
        "partial": "RuntimeError: CUDA out of memory while explaining (synthetic failure)",
    }
    decoded = kind != "decode"
    return InputRecord(
        path=name,
        source=str(source),
        status="ok" if kind == "ok" else "error",
        error=errors[kind],
        width=width if decoded else None,
        height=height if decoded else None,
        prediction=top5[0] if decoded else None,
        top5=top5 if decoded else [],
        target=class_of(top5[0].index, LABELS) if decoded else None,
    )


def _manifest(methods: list[str], entries: list[InputRecord]) -> Manifest:
    run = RunInfo(
        model="synthetic",
        methods=methods,
        method_options={m: {} for m in methods},
        target="predicted",
        device="cpu",
        precision="fp32",
        class_names=True,
        totals=Totals.of(entries, seconds=0.0),
    )
    return Manifest(run, {entry.path: entry for entry in entries})


def _save(path: Path, content: PIL.Image.Image | np.ndarray) -> None:
    """Write one file atomically (renamed into place; test data, so not fsynced)."""
    with atomic_path(path) as temporary, open(temporary, "wb") as handle:
        if isinstance(content, np.ndarray) and content.size == 0:
            handle.write(b"\x89PNG\r\n\x1a\n truncated")  # an unreadable image file
        elif isinstance(content, np.ndarray):
            np.save(handle, content)
        else:
            content.save(handle, "PNG", compress_level=1)
