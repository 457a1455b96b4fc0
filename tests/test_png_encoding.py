"""Tests for saliency.png_encoding: lossless, well formed, as small as Pillow, bounded memory."""

from __future__ import annotations

import io
import struct
import tracemalloc
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from saliency import png_encoding
from saliency.png_encoding import encode_png, encodes
from saliency.rendering import render
from saliency.run_folder import encode_overlay


def decoded(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def chunks(data: bytes) -> list[tuple[bytes, bytes, int]]:
    """(type, data, stored CRC) of every chunk of a PNG file."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    found, at = [], 8
    while at < len(data):
        (length,) = struct.unpack(">I", data[at : at + 4])
        kind, body = data[at + 4 : at + 8], data[at + 8 : at + 8 + length]
        (crc,) = struct.unpack(">I", data[at + 8 + length : at + 12 + length])
        found.append((kind, body, crc))
        at += 12 + length
    return found


def photo(width: int, height: int, seed: int = 0) -> Image.Image:
    """A smooth photo-like RGB image with sensor noise."""
    rng = np.random.default_rng(seed)
    field = Image.fromarray(rng.integers(0, 256, (4, 5, 3), dtype=np.uint8))
    smooth = np.asarray(field.resize((width, height), Image.Resampling.BICUBIC), dtype=np.float32)
    noisy = smooth + rng.normal(0, 6, smooth.shape)
    return Image.fromarray(noisy.clip(0, 255).astype(np.uint8))


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA"])
@pytest.mark.parametrize("size", [(1, 1), (7, 3), (3, 7), (64, 1), (1, 64), (129, 67)])
def test_pixels_come_back_exactly(mode: str, size: tuple[int, int]) -> None:
    rng = np.random.default_rng(size[0] * 1000 + size[1])
    channels = {"L": 1, "RGB": 3, "RGBA": 4}[mode]
    pixels = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    image = Image.fromarray(pixels[..., 0] if channels == 1 else pixels, mode)
    back = decoded(encode_png(image))
    assert back.mode == mode and back.size == size
    assert np.array_equal(np.asarray(back), np.asarray(image))


def test_bands_of_rows_give_the_same_file(monkeypatch: pytest.MonkeyPatch) -> None:
    image = photo(53, 41)
    whole = encode_png(image)
    for band_bytes in (1, 53 * 3, 53 * 3 * 4 + 1):  # one row, one row, four rows and a bit
        monkeypatch.setattr(png_encoding, "_BAND_BYTES", band_bytes)
        assert np.array_equal(np.asarray(decoded(encode_png(image))), np.asarray(image))
        assert zlib.decompress(chunks(encode_png(image))[1][1]) == zlib.decompress(
            chunks(whole)[1][1]
        )


def test_the_file_is_well_formed() -> None:
    data = encode_png(photo(30, 20))
    found = chunks(data)
    assert [kind for kind, _, _ in found] == [b"IHDR", b"IDAT", b"IEND"]
    for kind, body, crc in found:
        assert zlib.crc32(kind + body) == crc, kind
    assert struct.unpack(">IIBBBBB", found[0][1]) == (30, 20, 8, 2, 0, 0, 0)
    raw = zlib.decompress(found[1][1])
    assert len(raw) == 20 * (1 + 30 * 3)
    assert all(raw[row * 91] == 2 for row in range(20))  # every row: the Up filter


def test_overlays_are_no_larger_than_pillows_level_1_and_encode_faster() -> None:
    image = photo(420, 360, seed=3)
    maps = torch.nn.functional.interpolate(
        torch.rand(1, 1, 7, 7, generator=torch.Generator().manual_seed(0)), size=(224, 224)
    )
    (overlay,) = render(maps, [image], as_pil=True)
    ours = encode_overlay(overlay, "png")
    buffer = io.BytesIO()
    overlay.save(buffer, format="PNG", compress_level=1)
    assert np.array_equal(np.asarray(decoded(ours)), np.asarray(overlay))
    assert len(ours) <= 1.05 * buffer.tell()


@pytest.mark.parametrize("mode", ["P", "I;16", "1", "CMYK"])
def test_other_modes_are_refused_and_encoded_by_pillow_instead(mode: str) -> None:
    image = photo(12, 9).convert(mode)
    assert not encodes(image)
    with pytest.raises(ValueError, match=rf"mode L, RGB or RGBA; got mode '{mode}'"):
        encode_png(image)
    if mode != "CMYK":  # PNG has no CMYK
        back = decoded(encode_overlay(image, "png"))
        assert np.array_equal(np.asarray(back), np.asarray(image))


def test_empty_images_are_refused() -> None:
    assert not encodes(Image.new("RGB", (0, 5)))


def test_memory_stays_near_one_band_whatever_the_size() -> None:
    # A constant 3000 × 2000 RGB image (18 MB of pixels) compresses to almost nothing: encoding
    # it whole would hold the pixels and their filtered copy at once; in bands it holds a few.
    image = Image.new("RGB", (3000, 2000), (12, 200, 99))
    tracemalloc.start()
    try:
        data = encode_png(image)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert np.array_equal(np.asarray(decoded(data))[1234, 2345], [12, 200, 99])
    # One band's pixels and its filtered copy (2 × 4 MiB), against 36 MB for the whole image.
    assert peak < 3 * png_encoding._BAND_BYTES
