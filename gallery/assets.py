"""The gallery's images: thumbnail strips, display-size originals and heatmap layers.

Per input, the builder writes one JPEG *strip* holding its thumbnails side by side (the original,
then each method's overlay, every tile ≤ :data:`THUMBNAIL_SIZE` px; the page shows one tile per
cell), a display-size original for the detail view and, from raw ``.npy`` maps, one sheet of
heatmap layers (:mod:`.layers`). Three files per input, whatever the number of methods, keep
builds and page loads fast.

One task per input runs in a worker thread (Pillow and torch release the GIL while they work).
Asset names come from a hash of the input's path, never from the file name itself, so they need
no escaping; a rebuild reuses every asset whose sources did not change (see :mod:`.sinks`).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import PIL.Image
import torch

from saliency.gallery.imaging import (
    contain,
    contained_size,
    fit_to_frame,
    jpeg_bytes,
    load_rgb,
    png_bytes,
    resized,
)
from saliency.gallery.layers import Layers, heatmap_layers
from saliency.gallery.sinks import Sink
from saliency.run_folder import InputRecord

THUMBNAIL_SIZE = 192
"""Longest side of a thumbnail tile in pixels (≤ 256; sharp at 96 CSS pixels on 2× screens)."""
DISPLAY_SIZE = 1024
"""Longest side of the originals and heatmap layers of the detail view."""
_TILE_ALIGN = 16  # tiles start on JPEG block boundaries: no colour bleeds between tiles
_STRIP_BACKGROUND = (128, 128, 128)
_STRIP_FACTS = {"overlays", "problems", "tiles", "original", "tile", "stride"}
_LOSSLESS_PIXELS = 320 * 320  # smaller display originals are PNG: no JPEG artefacts when enlarged


@dataclass(frozen=True)
class Picture:
    """An image the page shows: its URL and pixel size."""

    url: str
    width: int
    height: int


@dataclass(frozen=True)
class Strip:
    """One input's thumbnails side by side: tile ``k`` starts at x = ``k * stride``."""

    url: str
    width: int
    height: int
    stride: int
    count: int


@dataclass
class MethodAssets:
    """One method's images for one input.

    Attributes:
        tile: The overlay thumbnail's position in the input's strip.
        overlay: The stored overlay at full size.
        layers: The pure and signed heatmaps rendered from the raw map (``--save-raw``).
        problem: Why an image is missing (unreadable overlay, bad raw file).
    """

    tile: int | None = None
    overlay: Picture | None = None
    layers: Layers | None = None
    problem: str | None = None


@dataclass
class InputAssets:
    """The images of one input: its thumbnail strip, the display original, each method's."""

    strip: Strip | None = None
    original_tile: int | None = None
    original: Picture | None = None
    original_problem: str | None = None
    methods: dict[str, MethodAssets] = field(default_factory=dict)


@dataclass(frozen=True)
class Colours:
    """The colormaps of the sequential (absolute) and diverging (signed) views."""

    sequential: str = "inferno"
    diverging: str = "RdBu_r"


def build_assets(
    inputs: Sequence[RunInput],
    methods: Sequence[str],
    sink: Sink,
    colours: Colours,
    workers: int | None = None,
) -> list[InputAssets]:
    """Make every input's images in parallel worker threads, in input order.

    Each worker renders with one torch thread: the maps are small and the parallelism is
    across inputs (torch's intra-op threads would only contend, badly so on a busy machine).
    """
    workers = workers or max(1, min(16, os.cpu_count() or 1))
    threads = torch.get_num_threads()
    try:
        with ThreadPoolExecutor(
            max_workers=workers,
            thread_name_prefix="gallery",
            initializer=torch.set_num_threads,
            initargs=(1,),
        ) as pool:
            return list(pool.map(lambda item: input_assets(item, methods, sink, colours), inputs))
    finally:
        if torch.get_num_threads() != threads:  # backends whose setting is process-wide
            torch.set_num_threads(threads)


def asset_key(text: str) -> str:
    """A short, stable, file-name-safe key for an input path or method name."""
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:12]
    readable = re.sub(r"[^a-z0-9_]+", "_", text.lower())[-24:].strip("_")
    return f"{readable}-{digest}" if readable else digest


@dataclass(frozen=True)
class MethodFiles:
    """One method's files for one input: paths inside the run folder, or None."""

    overlay: Path | None
    raw: Path | None
    seconds: float | None


@dataclass(frozen=True)
class RunInput:
    """An entry of the manifest with its files resolved in the run folder.

    Attributes:
        record: The entry.
        source: Its source image (None when the entry names none).
        methods: Each method's files; a method whose record names a path outside the run
            folder has no files (the reader dropped its record).
    """

    record: InputRecord
    source: Path | None
    methods: dict[str, MethodFiles]

    @property
    def path(self) -> str:
        """The input's relpath."""
        return self.record.path

    @property
    def failed(self) -> bool:
        """Whether the input failed."""
        return self.record.status == "error"

    @classmethod
    def of(cls, directory: Path, record: InputRecord) -> RunInput:
        """The entry's files (its paths are checked to stay inside ``directory``)."""
        methods = {
            name: MethodFiles(
                directory / item.overlay,
                directory / item.raw if item.raw is not None else None,
                item.seconds,
            )
            for name, item in record.methods.items()
        }
        for name in record.dropped:
            methods.setdefault(name, MethodFiles(None, None, None))
        return cls(record, directory / record.source if record.source else None, methods)


def input_assets(
    item: RunInput, methods: Sequence[str], sink: Sink, colours: Colours
) -> InputAssets:
    """The thumbnail strip, the display original and the heatmap layers of one input."""
    key = asset_key(item.path)
    present = [name for name in methods if name in item.methods]
    overlays = {n: p for n in present if (p := item.methods[n].overlay) is not None}
    sources = ([item.source] if item.source is not None else []) + list(overlays.values())
    names = {"strip": f"strip/{key}.jpg", "original": f"original/{key}"}
    urls, facts = _cached_thumbnails(names, sources, sink)
    if facts is None:
        urls, facts = _make_thumbnails(names, item, overlays, sources, sink)
    result = InputAssets(original_problem=facts.get("original_problem"))
    tile = facts.get("tile")
    if tile is not None and "strip" in urls:
        tiles = facts["tiles"]
        result.strip = Strip(urls["strip"], tile[0], tile[1], facts["stride"], len(tiles))
        result.original_tile = tiles.get("")
    if facts.get("original") is not None and "original" in urls:
        result.original = Picture(urls["original"], *facts["original"])
    for name in present:
        assets = result.methods[name] = MethodAssets(problem=facts["problems"].get(name))
        if name in facts["overlays"] and name in overlays:
            assets.tile = facts["tiles"].get(name)
            reference = sink.reference(overlays[name], f"overlay/{key}--{asset_key(name)}.png")
            assets.overlay = Picture(reference, *facts["overlays"][name])
        elif assets.problem is None:
            assets.problem = "no overlay file"
    raws = {n: p for n in present if (p := item.methods[n].raw) is not None}
    colormaps = (colours.sequential, colours.diverging)
    layers, problems = heatmap_layers(key, raws, sink, colormaps, DISPLAY_SIZE)
    for name, method_layers in layers.items():
        result.methods[name].layers = method_layers
    for name, problem in problems.items():
        result.methods[name].problem = problem
    return result


def _cached_thumbnails(
    names: dict[str, str], sources: list[Path], sink: Sink
) -> tuple[dict[str, str], dict[str, Any] | None]:
    """The strip's and display original's URLs and facts from an earlier build, if still valid."""
    strip = sink.cached(names["strip"], sources)
    if strip is None:
        return {}, None
    urls, facts = {"strip": strip[0]}, strip[1]
    if not facts.keys() >= _STRIP_FACTS:  # written by another version: make it again
        return {}, None
    if facts.get("original") is not None:
        original = sink.cached(str(facts.get("original_name")), sources)
        if original is None:
            return {}, None
        urls["original"] = original[0]
    return urls, facts


def _make_thumbnails(
    names: dict[str, str],
    item: RunInput,
    overlays: dict[str, Path],
    sources: list[Path],
    sink: Sink,
) -> tuple[dict[str, str], dict[str, Any]]:
    """Decode the overlays and the original; write the display original and the strip."""
    facts: dict[str, Any] = {"overlays": {}, "problems": {}, "tiles": {}, "original": None}
    thumbnails: dict[str, PIL.Image.Image] = {}
    frame: tuple[int, int] | None = None
    for name, path in overlays.items():
        try:
            with PIL.Image.open(path) as image:
                size = image.size
                image.draft("RGB", (THUMBNAIL_SIZE, THUMBNAIL_SIZE))
                thumbnails[name] = contain(image.convert("RGB"), THUMBNAIL_SIZE)
        except Exception as error:  # one unreadable overlay must not stop the gallery
            facts["problems"][name] = f"the overlay cannot be read ({error})"
            continue
        facts["overlays"][name] = list(size)
        frame = frame or size
    urls: dict[str, str] = {}
    original = _display_original(item, frame, facts)
    if original is not None:
        small = original.width * original.height <= _LOSSLESS_PIXELS
        name = names["original"] + (".png" if small else ".jpg")
        data = png_bytes(original) if small else jpeg_bytes(original, 90)
        urls["original"] = sink.put(name, data, sources)
        facts.update(original=list(original.size), original_name=name)
        thumbnails = {"": contain(original, THUMBNAIL_SIZE), **thumbnails}
    if thumbnails:
        basis = frame or (original.size if original is not None else (1, 1))
        tile = contained_size(basis, THUMBNAIL_SIZE)
        strip, stride = _strip([resized(t, tile) for t in thumbnails.values()], tile)
        facts.update(tile=list(tile), stride=stride, tiles={n: k for k, n in enumerate(thumbnails)})
        urls["strip"] = sink.put(names["strip"], jpeg_bytes(strip, 85), sources, **facts)
    return urls, facts


def _display_original(
    item: RunInput, frame: tuple[int, int] | None, facts: dict[str, Any]
) -> PIL.Image.Image | None:
    """The source image, upright, cropped to the overlays' aspect, ≤ DISPLAY_SIZE; or ``None``."""
    if item.source is None:
        facts["original_problem"] = "the manifest names no source image"
        return None
    if not item.source.is_file():
        facts["original_problem"] = "the source image is no longer at its recorded path"
        return None
    try:
        return contain(fit_to_frame(load_rgb(item.source, DISPLAY_SIZE), frame), DISPLAY_SIZE)
    except Exception as error:  # an unreadable source must not stop the gallery
        facts["original_problem"] = f"the source image cannot be read ({error})"
        return None


def _strip(tiles: list[PIL.Image.Image], tile: tuple[int, int]) -> tuple[PIL.Image.Image, int]:
    stride = -(-tile[0] // _TILE_ALIGN) * _TILE_ALIGN
    strip = PIL.Image.new("RGB", (stride * (len(tiles) - 1) + tile[0], tile[1]), _STRIP_BACKGROUND)
    for k, image in enumerate(tiles):
        strip.paste(image, (k * stride, 0))
    return strip, stride


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", name)
