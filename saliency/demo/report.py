"""The demo's run folder: scenes with their masks outlined, overlays, manifest, metrics, gallery.

:func:`write_model` writes one demo model's scenes and overlays; :func:`write_run` the
``saliency explain``-style manifest, ``metrics.json`` / ``metrics.csv`` and the gallery.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import PIL.Image
import torch
import torch.nn.functional as F
from torch import Tensor

from saliency.demo.scenes import CLASS_NAMES, Scenes, save_scenes
from saliency.explanation import Explanation
from saliency.gallery.builder import build_gallery
from saliency.gallery.from_explanations import run_section, write_inputs
from saliency.metrics.report import MethodEvaluation, write_metrics
from saliency.run_folder import InputRecord, Manifest, write_manifest

__all__ = ["MARKER_OUTLINE", "OBJECT_OUTLINE", "mask_outlines", "outlined_pictures"]

OBJECT_OUTLINE = (0, 255, 0)
MARKER_OUTLINE = (255, 0, 255)


def mask_outlines(masks: Tensor) -> Tensor:
    """Boundary pixels of ``(N, H, W)`` boolean masks: inside, with an outside pixel (or the
    image border) among their 8 neighbours."""
    solid = masks[:, None].float()
    eroded = -F.max_pool2d(-F.pad(solid, (1, 1, 1, 1), value=0.0), 3, stride=1, padding=0)
    return (solid.bool() & ~eroded.bool())[:, 0]


def outlined_pictures(scenes: Scenes) -> list[PIL.Image.Image]:
    """The scenes as PIL images with the object mask outlined in green, the marker in magenta."""
    pixels = scenes.images.clone()
    for masks, colour in ((scenes.masks, OBJECT_OUTLINE), (scenes.marker_masks, MARKER_OUTLINE)):
        edge = mask_outlines(masks)[:, None].expand_as(pixels)
        paint = torch.tensor(colour, dtype=pixels.dtype, device=pixels.device).view(1, 3, 1, 1)
        pixels = torch.where(edge, paint.expand_as(pixels), pixels)
    array = pixels.permute(0, 2, 3, 1).cpu().numpy()
    return [PIL.Image.fromarray(image, mode="RGB") for image in array]


def write_model(
    folder: Path, name: str, scenes: Scenes, evaluations: Sequence[MethodEvaluation]
) -> list[InputRecord]:
    """Write one demo model's scenes (``scenes/<name>/``) and, per scene, the outlined original
    and one overlay per method (``<name>/scene_NNNN.png/``).

    Returns:
        The manifest entries of the scenes.
    """
    save_scenes(scenes, folder / "scenes" / name)
    relpaths = [f"{name}/scene_{scenes.start + i:04d}.png" for i in range(len(scenes))]
    results = [evaluation.explanation for evaluation in evaluations]
    per_input = [evaluation.seconds / len(scenes) for evaluation in evaluations]
    return write_inputs(
        results,
        folder,
        relpaths,
        outlined_pictures(scenes),
        labels=CLASS_NAMES,
        seconds=per_input,
    )


def write_run(
    folder: Path,
    *,
    models: Sequence[str],
    entries: list[InputRecord],
    results: Sequence[Explanation],
    rows: Sequence[Mapping[str, Any]],
    notes: str,
    started: str,
    seconds: float,
    gallery: bool,
) -> Path | None:
    """Write ``manifest.json``, ``metrics.json``, ``metrics.csv`` and, with ``gallery``,
    ``index.html``.

    Args:
        folder: The run folder.
        models: The demo model names, in order.
        entries: The manifest entries of every scene (:func:`write_model`).
        results: Explanations of the last model, one per method (method names and options).
        rows: The metrics rows.
        notes: How the metrics were measured (``metrics.json``'s ``notes``).
        started: When the run started (ISO 8601).
        seconds: Wall time of the run so far.
        gallery: Build the gallery.

    Returns:
        The gallery page, or None.
    """
    run = run_section(
        list(results),
        ", ".join(f"demo:{name}" for name in models),
        CLASS_NAMES,
        started,
        inputs=len(entries),
        seconds=round(seconds, 2),
    )
    write_manifest(folder, Manifest(run, {entry.path: entry for entry in entries}), sort=False)
    write_metrics(rows, folder, notes=notes)
    return build_gallery(folder, title="saliency demo") if gallery else None
