"""A run folder from :class:`saliency.Explanation` results (Python API), and its gallery.

The explanations are written in the documented layout (``manifest.json``, ``<name>/<method>.png``
overlays, ``<name>/<method>.npy`` raw maps, and the original image as ``<name>/_original.png``,
which the manifest's ``source`` names); the gallery is then built from that folder by
:func:`saliency.gallery.build_gallery`, exactly as for ``saliency explain`` runs.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import TypeAlias

import numpy as np
import PIL.Image
import torch
from torch import Tensor

from saliency.errors import InvalidOptionError
from saliency.explanation import Explanation
from saliency.gallery.builder import build_gallery
from saliency.run_folder import (
    InputRecord,
    Manifest,
    MethodRecord,
    RunInfo,
    Totals,
    class_of,
    is_safe_relpath,
    json_safe,
    now,
    output_name,
    top_classes,
    versions,
    write_manifest,
    write_overlay,
    write_raw,
)

ORIGINAL = "_original.png"

ImagesArg: TypeAlias = Tensor | Sequence[Tensor | PIL.Image.Image]


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
        labels: Class names, indexed by class, for predictions and targets (default: the
            explanations' ``class_names``).
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
    """Write explanations as a run folder (``manifest.json``, ``<name>/<method>.png`` overlays,
    ``<name>/<method>.npy`` raw maps, the original as ``<name>/_original.png``); the folder.

    Args:
        explanations: One :class:`~saliency.Explanation` per method, all of the same ``N``
            inputs (one Explanation alone is fine).
        out_dir: The run folder (created; existing files of the same names are replaced).
        images: The ``N`` original images (a ``(N, 3, H, W)`` tensor in ``[0, 1]`` or uint8, or
            tensors / PIL images); default: the first explanation's ``backgrounds()``.
        names: ``N`` relative names, e.g. ``"cats/tom.jpg"`` (default ``image_0000.png``, ...).
        labels: Class names, indexed by class, for predictions and targets (default: the
            explanations' ``class_names``).
        model: The model's name.
        save_raw: Also write raw ``.npy`` maps.

    Raises:
        InvalidOptionError: No explanations, different ``N``, a repeated method, a method name
            that is not a safe file name, bad ``names`` or a wrong number of images.
    """
    results = _explanation_list(explanations)
    count = _check_explanations(results)
    if labels is None:
        labels = results[0].class_names
    relpaths = relpaths_of(names, count)
    backgrounds = images if images is not None else results[0].backgrounds()
    pictures = [_to_pil(item) for item in _exactly(backgrounds, count)]
    folder = Path(out_dir).absolute()
    started = now()
    entries = write_inputs(
        results, folder, relpaths, pictures, labels=labels, save_raw=save_raw
    )
    run = run_section(results, model, labels, started, inputs=count)
    write_manifest(folder, Manifest(run, {entry.path: entry for entry in entries}), sort=False)
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
) -> list[InputRecord]:
    """Write each input's original and every method's overlay and raw map; their records.

    Args:
        results: One explanation per method, all of the ``len(relpaths)`` inputs.
        folder: The run folder.
        relpaths: Checked relative names of the inputs (folders under ``folder``).
        pictures: The originals the overlays are drawn on.
        labels: Class names for predictions and targets.
        save_raw: Also write raw ``.npy`` maps.
        seconds: Per method, the seconds it took per input, or None.
    """
    outputs = next((r.outputs for r in results if r.outputs is not None), None)
    targets = next((r.targets for r in results if r.targets is not None), None)
    top = top_classes(outputs, labels) if outputs is not None else [[] for _ in relpaths]
    entries = []
    for i, (relpath, picture) in enumerate(zip(relpaths, pictures, strict=True)):
        item_folder = folder / relpath
        item_folder.mkdir(parents=True, exist_ok=True)
        write_overlay(item_folder / ORIGINAL, picture)
        entries.append(
            InputRecord(
                path=relpath,
                source=str(item_folder / ORIGINAL),
                width=picture.width,
                height=picture.height,
                prediction=top[i][0] if top[i] else None,
                top5=top[i],
                target=None if targets is None else class_of(int(targets[i]), labels),
            )
        )
    timings = list(seconds) if seconds is not None else [None] * len(results)
    for result, method_seconds in zip(results, timings, strict=True):
        overlays = result.pictures(list(pictures))
        raw = result.attributions.detach().float().cpu().numpy() if save_raw else None
        for i, (relpath, overlay) in enumerate(zip(relpaths, overlays, strict=True)):
            record = MethodRecord(output_name(relpath, result.method, "png"), None, method_seconds)
            write_overlay(folder / record.overlay, overlay)
            if raw is not None:
                record.raw = output_name(relpath, result.method, "npy")
                write_raw(folder / record.raw, raw[i])
            entries[i].methods[result.method] = record
    return entries


def run_section(
    results: Sequence[Explanation],
    model: str | None,
    labels: Sequence[str] | None,
    started: str,
    *,
    inputs: int,
    seconds: float | None = None,
) -> RunInfo:
    """The run section of explanations (``target``: ``"given"``, the explanations' classes; None
    for a callable target)."""
    first = results[0]
    return RunInfo(
        model=model,
        methods=[r.method for r in results],
        method_options={r.method: json_safe(r.options) for r in results},
        target=None if first.targets is None else "given",
        device=str(first.attributions.device),
        class_names=labels is not None,
        versions=versions(),
        started=started,
        finished=now(),
        totals=Totals(inputs=inputs, ok=inputs, seconds=seconds),
    )


def relpaths_of(names: Sequence[str] | None, count: int) -> list[str]:
    """Checked relative ``/`` names, made unique with ``~2``, ``~3`` suffixes.

    Raises:
        InvalidOptionError: Not ``count`` names, or a name that is absolute or has ``..``.
    """
    if names is None:
        return [f"image_{i:04d}.png" for i in range(count)]
    if isinstance(names, str) or len(names) != count:
        raise InvalidOptionError(f"names must be a sequence of {count} strings")
    seen: set[str] = set()
    result = []
    for name in names:
        path = PurePosixPath(str(name).replace("\\", "/"))
        if not str(name) or not is_safe_relpath(str(path)):
            raise InvalidOptionError(
                f"name {name!r} is not a relative path without '..'; e.g. 'cats/tom.jpg'"
            )
        unique, suffix = str(path), 2
        while unique in seen:
            unique, suffix = f"{path}~{suffix}", suffix + 1
        seen.add(unique)
        result.append(unique)
    return result


def _explanation_list(explanations: Explanation | Sequence[Explanation]) -> list[Explanation]:
    return [explanations] if isinstance(explanations, Explanation) else list(explanations)


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


def _exactly(images: ImagesArg, count: int) -> list[Tensor | PIL.Image.Image]:
    items = list(images)
    if len(items) != count:
        raise InvalidOptionError(f"got {len(items)} images for {count} inputs")
    return items


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
