"""One input's outputs for one method: the overlay, and the raw array on request.

The overlay is rendered by torch in the device thread; encoding and writing run in writer
threads while the device computes the next batch (Pillow releases the GIL while encoding).
Every file is written under a temporary name and renamed, into folders checked to stay inside
the output folder.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
from torch import Tensor

from saliency.cli.plan import output_name
from saliency.cli.relpaths import output_folder
from saliency.output_files import file_stem, write_atomic, write_bytes_atomic
from saliency.rendering import render

FORMATS = ("png", "jpg", "webp")
# Fast settings: PNG level 1 is several times faster than the default 6 for ~20% more bytes.
_ENCODER_OPTIONS: Mapping[str, Mapping[str, Any]] = {
    "png": {"format": "PNG", "compress_level": 1},
    "jpg": {"format": "JPEG", "quality": 90},
    "webp": {"format": "WEBP", "quality": 90, "method": 4},
}


@dataclass(frozen=True)
class OutputSpec:
    """What to write for every (input, method) pair.

    Attributes:
        out: The output folder.
        extension: The overlay format (one of :data:`FORMATS`).
        save_raw: Also write the raw float32 attributions as ``.npy``.
        render_options: Keyword options of :func:`saliency.render`.
    """

    out: Path
    extension: str
    save_raw: bool
    render_options: Mapping[str, Any]


def encode(picture: PIL.Image.Image, extension: str) -> bytes:
    """The image file's bytes in the chosen format."""
    buffer = io.BytesIO()
    picture.save(buffer, **_ENCODER_OPTIONS[extension])
    return buffer.getvalue()


def render_overlay(
    spec: OutputSpec, attributions: Tensor, original: PIL.Image.Image
) -> PIL.Image.Image:
    """The overlay of one map on the decoded image, at the image's size.

    Runs in the device thread: rendering is torch work on the attributions' device, and torch
    ops from several threads at once oversubscribe the CPU's intra-op thread pool.

    Args:
        spec: What to write (the render options).
        attributions: ``(1, C, h, w)`` raw attributions at the model's input size.
        original: The decoded image.
    """
    (picture,) = render(attributions, [original], as_pil=True, **spec.render_options)
    return picture


def write_method_outputs(
    spec: OutputSpec,
    relpath: str,
    method: str,
    picture: PIL.Image.Image,
    raw: np.ndarray | None,
) -> tuple[str, str | None]:
    """Encode and write one pair's files (runs in writer threads).

    Args:
        spec: What to write.
        relpath: The input's relpath.
        method: The method name (checked to be a safe file name).
        picture: The rendered overlay.
        raw: The raw float32 attributions to save, when asked for.

    Returns:
        The manifest paths of the overlay and of the raw array (None when not asked for).
    """
    folder = output_folder(spec.out, relpath, create=True)
    stem = file_stem(method)
    write_bytes_atomic(folder / f"{stem}.{spec.extension}", encode(picture, spec.extension))
    raw_path = None
    if raw is not None:
        write_atomic(folder / f"{stem}.npy", lambda handle: np.save(handle, raw))
        raw_path = output_name(relpath, method, "npy")
    return output_name(relpath, method, spec.extension), raw_path
