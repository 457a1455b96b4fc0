"""The detail view's heatmap layers, rendered from raw ``.npy`` maps (``--save-raw``).

Per input, one JPEG *sheet* holds every method's pure heatmap (left column) and signed heatmap
(right column), one row per method. Each cell is padded to 16-px boundaries with its own edge
pixels, so neither JPEG blocks nor the browser's scaling bleed colour across cells. The page
shows one cell at a time (the sign toggle moves the sheet); one file per input keeps builds fast.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image

from saliency.gallery.imaging import colour_scale, heatmaps, jpeg_bytes, raw_attributions
from saliency.gallery.sinks import Sink

_ALIGN = 16


@dataclass(frozen=True)
class Layers:
    """One method's two heatmaps in an input's sheet.

    Attributes:
        url: The sheet.
        sheet_width: The sheet's width in pixels.
        sheet_height: The sheet's height in pixels.
        width: The width of each heatmap (the raw map's, at most the display size).
        height: The height of each heatmap.
        absolute: ``(x, y)`` of the pure heatmap (|a|, sequential colours).
        signed: ``(x, y)`` of the signed heatmap (diverging colours).
        scale: |attribution| at the top of the colour scale.
    """

    url: str
    sheet_width: int
    sheet_height: int
    width: int
    height: int
    absolute: tuple[int, int]
    signed: tuple[int, int]
    scale: float


def heatmap_layers(
    key: str,
    raws: dict[str, Path],
    sink: Sink,
    colormaps: tuple[str, str],
    limit: int,
) -> tuple[dict[str, Layers], dict[str, str]]:
    """The heatmap layers of one input's methods, made or reused from an earlier build.

    Args:
        key: The input's asset key.
        raws: Raw map files by method.
        sink: Where the sheet goes.
        colormaps: The sequential and the diverging colormap.
        limit: Longest side of a heatmap.

    Returns:
        ``(layers, problems)``: the layers by method, and why a method has none.
    """
    if not raws:
        return {}, {}
    name = f"heatmap/{key}-{_safe(colormaps[0])}-{_safe(colormaps[1])}.jpg"
    sources = list(raws.values())
    hit = sink.cached(name, sources)
    url, facts = hit if hit is not None and _valid(hit[1]) else (None, None)
    if url is None or facts is None:
        url, facts = _make_sheet(name, raws, sources, sink, colormaps, limit)
    layers = {
        method: Layers(
            url or "",
            facts["size"][0],
            facts["size"][1],
            cell["w"],
            cell["h"],
            (cell["absolute"][0], cell["absolute"][1]),
            (cell["signed"][0], cell["signed"][1]),
            float(cell["scale"]),
        )
        for method, cell in facts["cells"].items()
    }
    return layers, dict(facts["problems"])


def _make_sheet(
    name: str,
    raws: dict[str, Path],
    sources: list[Path],
    sink: Sink,
    colormaps: tuple[str, str],
    limit: int,
) -> tuple[str | None, dict[str, Any]]:
    pairs: dict[str, tuple[PIL.Image.Image, PIL.Image.Image]] = {}
    scales: dict[str, float] = {}
    problems: dict[str, str] = {}
    for method, path in raws.items():
        try:
            attributions = raw_attributions(path, limit)
            scales[method] = colour_scale(attributions)
            pairs[method] = heatmaps(attributions, colormaps[0], colormaps[1], limit)
        except Exception as error:  # one bad file must not stop the gallery
            problems[method] = f"the raw attributions cannot be rendered ({error})"
    if not pairs:
        return None, {"size": [0, 0], "cells": {}, "problems": problems}
    column = max(_aligned(pair[0].width) for pair in pairs.values())
    height = sum(_aligned(pair[0].height) for pair in pairs.values())
    sheet = np.zeros((height, 2 * column, 3), dtype=np.uint8)
    cells: dict[str, Any] = {}
    top = 0
    for method, (absolute, signed) in pairs.items():
        for left, image in ((0, absolute), (column, signed)):
            cell = _padded(np.asarray(image))
            sheet[top : top + cell.shape[0], left : left + cell.shape[1]] = cell
        cells[method] = {
            "w": absolute.width,
            "h": absolute.height,
            "absolute": [0, top],
            "signed": [column, top],
            "scale": scales[method],
        }
        top += _aligned(absolute.height)
    facts = {"size": [2 * column, height], "cells": cells, "problems": problems}
    data = jpeg_bytes(PIL.Image.fromarray(sheet), 92)
    return sink.put(name, data, sources, **facts), facts


def _padded(pixels: np.ndarray) -> np.ndarray:
    """``(h, w, 3)`` pixels extended to 16-px multiples by repeating their edges."""
    height, width = pixels.shape[:2]
    padding = ((0, _aligned(height) - height), (0, _aligned(width) - width), (0, 0))
    return np.pad(pixels, padding, mode="edge")


def _aligned(size: int) -> int:
    return -(-size // _ALIGN) * _ALIGN


def _valid(facts: dict[str, Any]) -> bool:
    return {"size", "cells", "problems"} <= facts.keys()


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", name)
