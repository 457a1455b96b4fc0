"""Image helpers of the gallery builder: decoding, fitting, encoding, heatmaps from raw maps."""

from __future__ import annotations

import functools
import io
import os
import stat
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from PIL import ImageOps

from saliency.images import open_image
from saliency.rendering import LUT_SIZE, colormap_lut, normalize_maps, reduce_channels, render

PERCENTILE = 99.0
"""The scale of the colour bar: ``saliency.render``'s default percentile of |map|."""
_ASPECT_TOLERANCE = 0.01


def load_rgb(path: Path, size: int) -> PIL.Image.Image:
    """Decode an image upright in RGB; JPEGs are decoded at a reduced scale ≥ ``size``."""
    with PIL.Image.open(path) as image:
        if image.format == "JPEG":
            image.draft("RGB", (size, size))
            upright = ImageOps.exif_transpose(image)
            return (upright or image).convert("RGB")
    return open_image(path)  # every other format: the project's EXIF-, mode- and alpha-aware path


def fit_to_frame(image: PIL.Image.Image, frame: tuple[int, int] | None) -> PIL.Image.Image:
    """Centre-crop ``image`` to the aspect ratio of ``frame`` (the overlays), if it differs."""
    if frame is None:
        return image
    width, height = frame
    if abs(image.width * height - image.height * width) <= _ASPECT_TOLERANCE * image.height * width:
        return image
    scale = min(image.width / width, image.height / height)
    return ImageOps.fit(image, (max(1, round(width * scale)), max(1, round(height * scale))))


def contained_size(size: tuple[int, int], limit: int) -> tuple[int, int]:
    """``size`` scaled down (never up) so that its longest side is at most ``limit``."""
    width, height = size
    if max(width, height) <= limit:
        return width, height
    scale = limit / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def contain(image: PIL.Image.Image, limit: int) -> PIL.Image.Image:
    """``image`` shrunk (never enlarged) so that its longest side is at most ``limit``."""
    size = contained_size(image.size, limit)
    return image if size == image.size else resized(image, size)


def resized(image: PIL.Image.Image, size: tuple[int, int]) -> PIL.Image.Image:
    """``image`` resampled to exactly ``size`` (Lanczos, with a fast pre-reduction)."""
    if image.size == size:
        return image
    return image.resize(size, PIL.Image.Resampling.LANCZOS, reducing_gap=2.0)


def jpeg_bytes(image: PIL.Image.Image, quality: int) -> bytes:
    """``image`` as a baseline JPEG without chroma subsampling (crisp colour edges)."""
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, "JPEG", quality=quality, subsampling=0)
    return buffer.getvalue()


def png_bytes(image: PIL.Image.Image) -> bytes:
    """``image`` as a PNG (fast compression)."""
    buffer = io.BytesIO()
    image.save(buffer, "PNG", compress_level=1)
    return buffer.getvalue()


def colour_bar(name: str) -> bytes:
    """A 256 × 1 PNG of a colormap (stretched by CSS into the colour scale)."""
    lut = (colormap_lut(name) * 255).round().to(torch.uint8).numpy()
    return png_bytes(PIL.Image.fromarray(lut[None, :, :]))


# Raw maps are read this many bytes at a time, so a map of any size (a 16000² float32 map is
# 1 GB) is shrunk to the display size in bounded memory.
_RAW_READ_BYTES = 1 << 25
_RAW_MAX_CHANNELS = 64


def raw_attributions(path: Path, limit: int | None = None) -> torch.Tensor:
    """A raw ``.npy`` map as a ``(1, C, H, W)`` float32 tensor; ``(H, W)`` and ``(C, H, W)`` too.

    A map whose longest side exceeds ``limit`` is shrunk while it is read, band by band, by the
    mean over ``k × k`` blocks (``k = ⌈side / limit⌉``; blocks at the edges average what they
    cover): the whole map is never in memory. Only regular files; the header is checked against
    the file's size before anything is read.
    """
    with open(path, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            raise ValueError("not a regular file")
        shape, fortran, dtype = _npy_header(handle)
        start = handle.tell()
        size = os.fstat(handle.fileno()).st_size
        shape = _map_shape(shape)
        _, channels, height, width = shape
        if channels > _RAW_MAX_CHANNELS:
            raise ValueError(f"expected at most {_RAW_MAX_CHANNELS} channels, got shape {shape}")
        if size - start < channels * height * width * dtype.itemsize:
            raise ValueError(f"the file holds fewer bytes than its header's shape {shape} needs")
        factor = 1 if limit is None else -(-max(height, width) // limit)
        if factor == 1 or fortran:
            if factor > 1:
                raise ValueError(f"a Fortran-ordered map larger than {limit} px is not supported")
            data = np.frombuffer(handle.read(channels * height * width * dtype.itemsize), dtype)
            array = data.reshape(shape, order="F" if fortran else "C")
            return torch.from_numpy(np.array(array, dtype=np.float32, order="C"))  # writable
        return _shrunk(handle, start, shape, dtype, factor)


def _npy_header(handle: BinaryIO) -> tuple[tuple[int, ...], bool, np.dtype[Any]]:
    version = np.lib.format.read_magic(handle)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(handle)
    elif version == (2, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(handle)
    else:
        raise ValueError(f".npy format version {version} is not supported; accepted: 1.0, 2.0")
    if dtype.kind not in "biuf" or dtype.hasobject:
        raise ValueError(f"expected a numeric array, got dtype {dtype}")
    return tuple(int(n) for n in shape), bool(fortran), dtype


def _map_shape(shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    """``(1, C, H, W)`` from ``(H, W)``, ``(C, H, W)`` or ``(1, ..., 1, C, H, W)``."""
    while len(shape) > 4 and shape[0] == 1:
        shape = shape[1:]
    full = (1, 1, *shape) if len(shape) == 2 else (1, *shape) if len(shape) == 3 else shape
    if len(full) != 4 or full[0] != 1 or 0 in full:
        raise ValueError(f"expected a (C, H, W) or (H, W) array, got shape {shape}")
    return full[0], full[1], full[2], full[3]


def _shrunk(
    handle: BinaryIO,
    start: int,
    shape: tuple[int, int, int, int],
    dtype: np.dtype[Any],
    factor: int,
) -> torch.Tensor:
    """The C-ordered map at ``start`` averaged over ``factor × factor`` blocks, read in bands."""
    _, channels, height, width = shape
    row_bytes = width * dtype.itemsize
    rows = factor * max(1, _RAW_READ_BYTES // (row_bytes * factor))
    planes = []
    for channel in range(channels):
        bands = []
        for top in range(0, height, rows):
            count = min(rows, height - top)
            handle.seek(start + (channel * height + top) * row_bytes)
            band = np.frombuffer(handle.read(count * row_bytes), dtype).reshape(count, width)
            values = torch.from_numpy(band.astype(np.float32))[None, None]
            bands.append(F.avg_pool2d(values, factor, ceil_mode=True)[0, 0])
        planes.append(torch.cat(bands))
    return torch.stack(planes)[None]


def colour_scale(attributions: torch.Tensor) -> float:
    """|attribution| at the top of the colour bar: the channel-summed map's 99th percentile.

    Matches :func:`saliency.render`'s default normalisation (a zero percentile falls back to
    the maximum).
    """
    magnitudes = reduce_channels(attributions).abs().flatten().numpy()
    scale = float(np.percentile(magnitudes, PERCENTILE))
    return scale if scale > 0 else float(magnitudes.max())


def heatmaps(
    attributions: torch.Tensor, sequential: str, diverging: str, limit: int
) -> tuple[PIL.Image.Image, PIL.Image.Image]:
    """The pure heatmap (|a|, ``sequential`` colours) and the signed one (``diverging``).

    The pixels of ``saliency.render(style="heatmap")`` with ``sign="absolute"`` and
    ``sign="all"``, at the map's own resolution; the page stretches them over the original as
    ``render`` stretches maps onto a larger image. Both views share one normalisation (the scale
    is a percentile of |a| for either sign), so the map is normalised once and coloured twice
    through the lookup tables: a third of the cost of two ``render`` calls. Maps larger than
    ``limit`` go through ``render`` itself, which resamples them.
    """
    height, width = attributions.shape[-2:]
    if max(height, width) > limit:
        target_width, target_height = contained_size((width, height), limit)
        background = [torch.zeros(3, target_height, target_width, dtype=torch.uint8)]
        return (
            render(attributions, background, style="heatmap", cmap=sequential, as_pil=True)[0],
            render(
                attributions, background, style="heatmap", sign="all", cmap=diverging, as_pil=True
            )[0],
        )
    signed = normalize_maps(reduce_channels(attributions.detach().float()), sign="all")[0]
    last = LUT_SIZE - 1
    absolute_index = (signed.abs() * last).round().long().clamp(0, last)
    signed_index = ((signed + 1.0) * (last / 2)).round().long().clamp(0, last)
    return (
        PIL.Image.fromarray(_lut_bytes(sequential)[absolute_index].numpy()),
        PIL.Image.fromarray(_lut_bytes(diverging)[signed_index].numpy()),
    )


@functools.lru_cache(maxsize=16)
def _lut_bytes(name: str) -> torch.Tensor:
    """A colormap's ``(256, 3)`` uint8 lookup table, rounded as ``render`` rounds colours."""
    return (colormap_lut(name) * 255.0).round().clamp(0, 255).to(torch.uint8)
