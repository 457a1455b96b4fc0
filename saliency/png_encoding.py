"""A fast lossless PNG encoder for 8-bit overlays: one filter for every row, run-length deflate.

Pillow chooses a filter for each row by trying all five (its adaptive heuristic) and then
deflates with LZ77 matching; on a 400 × 400 RGB overlay that is ~15–20 ms, most of a writer's
time. Overlays are smooth photos under smooth colour maps, so the *Up* filter
(:math:`x_{r,i} - x_{r-1,i}` modulo 256) alone leaves mostly small values, and deflate's
run-length strategy (``Z_RLE``: runs only, no distant matches) codes them in as few bytes as
Pillow's level 1, 3–4× faster (measured on the benchmark's photos: ``benchmarks/RESULTS.md``).

Rows are filtered and compressed a band at a time, so memory stays near one band whatever the
image's size. The file holds IHDR, one IDAT and IEND: what every decoder reads.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np
import PIL.Image

# PNG colour type and channels of each Pillow mode encoded here (8 bits per sample).
_COLOUR_TYPES = {"L": (0, 1), "RGB": (2, 3), "RGBA": (6, 4)}
_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_UP = 2
_BAND_BYTES = 1 << 22


def encodes(picture: PIL.Image.Image) -> bool:
    """Whether :func:`encode_png` takes this image: mode ``L``, ``RGB`` or ``RGBA``, not empty."""
    return picture.mode in _COLOUR_TYPES and picture.width > 0 and picture.height > 0


def encode_png(picture: PIL.Image.Image, level: int = 1) -> bytes:
    """The PNG file of an ``L``, ``RGB`` or ``RGBA`` image: the same pixels, Up-filtered rows,
    ``Z_RLE`` deflate at ``level``.

    Raises:
        ValueError: another mode, or an empty image (see :func:`encodes`).
    """
    if not encodes(picture):
        raise ValueError(
            "encode_png takes non-empty images of mode L, RGB or RGBA; got mode "
            f"{picture.mode!r}, size {picture.size}"
        )
    colour_type, channels = _COLOUR_TYPES[picture.mode]
    width, height = picture.size
    stride = width * channels
    compressor = zlib.compressobj(level, zlib.DEFLATED, 15, 9, zlib.Z_RLE)
    parts: list[bytes] = []
    previous = np.zeros(stride, dtype=np.uint8)  # the row above the first is zeros
    band = max(1, _BAND_BYTES // max(1, stride))
    for top in range(0, height, band):
        bottom = min(height, top + band)
        rows = np.frombuffer(
            picture.crop((0, top, width, bottom)).tobytes(), dtype=np.uint8
        ).reshape(bottom - top, stride)
        filtered = np.empty((bottom - top, stride + 1), dtype=np.uint8)
        filtered[:, 0] = _UP
        np.subtract(rows[:1], previous, out=filtered[:1, 1:])  # uint8: modulo 256, as PNG
        np.subtract(rows[1:], rows[:-1], out=filtered[1:, 1:])
        parts.append(compressor.compress(filtered.data))
        previous = rows[-1].copy()
        del rows, filtered  # before the next band's: at most one band in memory
    parts.append(compressor.flush())
    header = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    return b"".join(
        [_SIGNATURE, _chunk(b"IHDR", header), _chunk(b"IDAT", b"".join(parts)), _chunk(b"IEND")]
    )


def _chunk(kind: bytes, data: bytes = b"") -> bytes:
    """A PNG chunk: length, type, data, CRC-32 of type and data."""
    crc = zlib.crc32(data, zlib.crc32(kind))
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)
