"""A gallery from :class:`saliency.Explanation` results (Python API).

The explanations are first written as a run folder in the documented layout (``manifest.json``,
``<name>/<method>.png`` overlays, ``<name>/<method>.npy`` raw maps, and the original image as
``<name>/_original.png``, which the manifest's ``source`` names); the gallery is then built from
that folder by :func:`saliency.gallery.build_gallery`, exactly as for ``saliency explain`` runs.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import PIL.Image
import torch
from torch import Tensor

from saliency.errors import InvalidOptionError
from saliency.explanation import Explanation, json_safe, versions
from saliency.gallery.builder import build_gallery
from saliency.gallery.run_folder import MANIFEST, SUPPORTED_FORMAT
from saliency.output_files import write_atomic, write_text_atomic

ORIGINAL = "_original.png"
ImagesArg = Tensor | Sequence[Tensor | PIL.Image.Image]


def build_gallery_from_explanations(
    explanations: Explanation | Sequence[Explanation],
    out_dir: str | Path,
    images: ImagesArg | None = None,
    names: Sequence[str] | None = None,
    title: str | None = None,
    *,
    labels: Sequence[str] | None = None,
    model: str | None = None,
    save_raw: bool = True,
    single_file: bool = False,
) -> Path:
    """Write ``explanations`` as a run folder in ``out_dir`` and build its gallery.

    Args:
        explanations: One :class:`~saliency.Explanation` per method, all of the same ``N``
            inputs (one Explanation alone is fine).
        out_dir: The run folder to write (created; existing files of the same names are
            replaced).
        images: The ``N`` original images (a ``(N, 3, H, W)`` tensor in ``[0, 1]`` or uint8, or
            tensors / PIL images); default: the first explanation's :meth:`backgrounds`.
        names: ``N`` relative names, e.g. ``"cats/tom.jpg"`` (default ``image_0000.png``, ...).
        title: The page title.
        labels: Class names, indexed by class, for predictions and targets.
        model: The model's name for the page header.
        save_raw: Also write raw ``.npy`` maps (enables the signed view and the colour scale's
            values).
        single_file: Build a single self-contained HTML file.

    Returns:
        The path of the gallery page, ``out_dir/index.html`` (self-contained with
        ``single_file``).
    """
    folder = write_run_folder(
        explanations, out_dir, images, names, labels=labels, model=model, save_raw=save_raw
    )
    return build_gallery(folder, title=title, single_file=single_file)


def write_run_folder(
    explanations: Explanation | Sequence[Explanation],
    out_dir: str | Path,
    images: ImagesArg | None = None,
    names: Sequence[str] | None = None,
    *,
    labels: Sequence[str] | None = None,
    model: str | None = None,
    save_raw: bool = True,
) -> Path:
    """Write explanations in the run-folder layout of ``docs/manifest.md``; return the folder.

    Raises:
        InvalidOptionError: No explanations, different ``N``, a repeated method, a method name
            that is not a safe file name, bad ``names`` or a wrong number of images.
    """
    results = [explanations] if isinstance(explanations, Explanation) else list(explanations)
    count = _check_explanations(results)
    relpaths = relpaths_of(names, count)
    pictures = _pictures(images if images is not None else results[0].backgrounds(), count)
    folder = Path(out_dir).absolute()
    started = _now()
    entries = write_inputs(results, folder, relpaths, pictures, labels=labels, save_raw=save_raw)
    write_manifest(folder, entries, run_section(results, model, labels, started))
    return folder


def write_inputs(
    results: Sequence[Explanation],
    folder: Path,
    relpaths: Sequence[str],
    pictures: Sequence[PIL.Image.Image],
    *,
    labels: Sequence[str] | None = None,
    save_raw: bool = True,
    seconds: Sequence[float | None] | None = None,
) -> list[dict[str, Any]]:
    """Write each input's original and per-method overlay (and raw map); return its entries.

    Args:
        results: One explanation per method, all of the ``len(relpaths)`` inputs.
        folder: The run folder.
        relpaths: Validated relative names of the inputs (folders under ``folder``).
        pictures: The originals the overlays are drawn on.
        labels: Class names for predictions and targets.
        save_raw: Also write raw ``.npy`` maps.
        seconds: Per method, the seconds it took per input (for the manifest), or None.

    Returns:
        The manifest's ``inputs`` entries, in order.
    """
    entries = []
    for i, (relpath, picture) in enumerate(zip(relpaths, pictures, strict=True)):
        item_folder = folder / relpath
        item_folder.mkdir(parents=True, exist_ok=True)
        _save_png(picture, item_folder / ORIGINAL)
        entries.append(_entry(i, relpath, item_folder, picture, list(results), labels))
    timings = list(seconds) if seconds is not None else [None] * len(results)
    for result, method_seconds in zip(results, timings, strict=True):
        overlays = result.pictures(list(pictures))
        raw = result.attributions.detach().float().cpu().numpy() if save_raw else None
        for i, (relpath, overlay) in enumerate(zip(relpaths, overlays, strict=True)):
            _save_png(overlay, folder / relpath / f"{result.method}.png")
            output = {
                "overlay": f"{relpath}/{result.method}.png",
                "raw": None,
                "seconds": method_seconds,
            }
            if raw is not None:
                _save_npy(np.ascontiguousarray(raw[i]), folder / relpath / f"{result.method}.npy")
                output["raw"] = f"{relpath}/{result.method}.npy"
            entries[i]["methods"][result.method] = output
    return entries


def run_section(
    results: Sequence[Explanation],
    model: str | None,
    labels: Sequence[str] | None,
    started: str,
    *,
    inputs: int | None = None,
    seconds: float | None = None,
) -> dict[str, Any]:
    """The manifest's ``run`` section for explanations (``inputs``: default their ``N``)."""
    count = len(results[0]) if inputs is None else inputs
    return {
        "model": model,
        "weights": None,
        "methods": [r.method for r in results],
        "method_options": {r.method: json_safe(r.options) for r in results},
        "target": "given" if results[0].targets is not None else None,
        "class_names": labels is not None,
        "format": "png",
        "versions": versions(),
        "started": started,
        "finished": _now(),
        "totals": {"inputs": count, "ok": count, "error": 0, "skipped": 0, "seconds": seconds},
    }


def write_manifest(folder: Path, entries: list[dict[str, Any]], run: dict[str, Any]) -> Path:
    """Write ``folder/manifest.json`` atomically."""
    manifest = {"format": SUPPORTED_FORMAT, "run": run, "inputs": entries}
    return write_text_atomic(folder / MANIFEST, json.dumps(manifest, indent=2, ensure_ascii=False))


def _check_explanations(results: list[Explanation]) -> int:
    if not results:
        raise InvalidOptionError("explanations is empty; pass one Explanation per method")
    counts = {len(r) for r in results}
    if len(counts) != 1:
        raise InvalidOptionError(f"explanations cover different numbers of inputs: {counts}")
    methods = [r.method for r in results]
    for method in methods:
        if methods.count(method) > 1:
            raise InvalidOptionError(f"method {method!r} appears twice; pass one per method")
        if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", method):
            raise InvalidOptionError(f"method name {method!r} is not usable as a file name")
    return counts.pop()


def relpaths_of(names: Sequence[str] | None, count: int) -> list[str]:
    """Validated relative ``/`` names, made unique with ``~2``, ``~3`` suffixes."""
    if names is None:
        return [f"image_{i:04d}.png" for i in range(count)]
    if isinstance(names, str) or len(names) != count:
        raise InvalidOptionError(f"names must be a sequence of {count} strings")
    seen: set[str] = set()
    result = []
    for name in names:
        path = PurePosixPath(str(name).replace("\\", "/"))
        if not str(name) or path.is_absolute() or any(p in ("..", ".", "") for p in path.parts):
            raise InvalidOptionError(
                f"name {name!r} is not a relative path without '..'; e.g. 'cats/tom.jpg'"
            )
        unique, suffix = str(path), 2
        while unique in seen:
            unique, suffix = f"{path}~{suffix}", suffix + 1
        seen.add(unique)
        result.append(unique)
    return result


def _pictures(images: ImagesArg, count: int) -> list[PIL.Image.Image]:
    items = list(images)
    if len(items) != count:
        raise InvalidOptionError(f"got {len(items)} images for {count} inputs")
    return [_to_pil(item) for item in items]


def _to_pil(image: Tensor | PIL.Image.Image) -> PIL.Image.Image:
    if isinstance(image, PIL.Image.Image):
        return image.convert("RGB")
    if not isinstance(image, Tensor) or image.dim() != 3 or image.shape[0] not in (1, 3):
        raise InvalidOptionError("each image must be a PIL image or a (3, H, W) tensor")
    pixels = image.detach().cpu()
    if pixels.is_floating_point():
        pixels = (pixels.float().clamp(0, 1) * 255).round()
    array = pixels.to(torch.uint8).expand(3, -1, -1).permute(1, 2, 0).numpy()
    return PIL.Image.fromarray(np.ascontiguousarray(array))


def _entry(
    i: int,
    relpath: str,
    item_folder: Path,
    picture: PIL.Image.Image,
    results: list[Explanation],
    labels: Sequence[str] | None,
) -> dict[str, Any]:
    outputs = next((r.outputs for r in results if r.outputs is not None), None)
    targets = next((r.targets for r in results if r.targets is not None), None)
    top5: list[dict[str, Any]] = []
    if outputs is not None:
        probabilities = _probabilities(outputs[i].detach().float().cpu())
        values, indices = probabilities.topk(min(5, probabilities.numel()))
        top5 = [_score(int(k), float(p), labels) for p, k in zip(values, indices, strict=True)]
    target = None
    if targets is not None:
        index = int(targets[i])
        target = {"index": index, "label": _label(index, labels)}
    return {
        "path": relpath,
        "source": str(item_folder / ORIGINAL),
        "status": "ok",
        "error": None,
        "width": picture.width,
        "height": picture.height,
        "prediction": top5[0] if top5 else None,
        "top5": top5,
        "target": target,
        "methods": {},
    }


def _probabilities(scores: Tensor) -> Tensor:
    """Scores that already are probabilities stay as they are; others go through softmax."""
    if bool((scores >= 0).all()) and abs(float(scores.sum()) - 1.0) < 1e-3:
        return scores
    return scores.softmax(dim=0)


def _score(index: int, probability: float, labels: Sequence[str] | None) -> dict[str, Any]:
    return {"index": index, "label": _label(index, labels), "probability": probability}


def _label(index: int, labels: Sequence[str] | None) -> str | None:
    return str(labels[index]) if labels is not None and 0 <= index < len(labels) else None


def _save_png(picture: PIL.Image.Image, path: Path) -> None:
    write_atomic(path, lambda handle: picture.save(handle, "PNG"))


def _save_npy(array: np.ndarray, path: Path) -> None:
    write_atomic(path, lambda handle: np.save(handle, array))


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
