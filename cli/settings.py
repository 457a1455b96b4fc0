"""Checking the command-line choices of ``saliency explain`` that need no model.

Each check raises :class:`UsageError` (exit code 2) with what is
accepted: method names (``all`` = every registered method), method options (through each
method's own validation), the output format, overlay options, and the output folder.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, features

from saliency.cli.method_options import options_for
from saliency.errors import SaliencyError
from saliency.explanation import json_safe
from saliency.methods.base import Method
from saliency.methods.registry import get_method, list_methods
from saliency.output_files import file_stem
from saliency.rendering import colormap_lut

DEFAULT_METHODS = ("gradient", "integrated_gradients", "smoothgrad", "gradcam")
# Method names become file names: keep them to a portable, harmless alphabet.
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")
_FORMAT_FEATURES = {"jpg": "jpg", "webp": "webp"}


class UsageError(ValueError):
    """A command-line or set-up problem found before any work (exit code 2)."""


@dataclass(frozen=True)
class ChosenMethod:
    """A method of the run, built once to validate its options.

    Attributes:
        instance: The method object (its options checked).
        options: The options to pass to :func:`saliency.explain` for it.
        recorded: Its option values as JSON, for the manifest.
    """

    instance: Method
    options: dict[str, Any]
    recorded: dict[str, Any]


def method_names(values: Sequence[str] | None) -> list[str]:
    """The ``--method`` values: repeatable, comma-separated, ``all``; default the four core ones.

    Raises:
        UsageError: An unknown name, or a name unusable as a file name.
    """
    registered = list_methods()
    if not values:
        return [name for name in DEFAULT_METHODS if name in registered]
    names: list[str] = []
    for value in values:
        for name in (part.strip() for part in value.split(",")):
            # all: every method but the members of method families (captum:NAME...), many of
            # which need options (Occlusion's window) or are exponential (ShapleyValues).
            chosen = list_methods(families=False) if name == "all" else [name] if name else []
            for item in chosen:
                if item not in registered:
                    raise UsageError(
                        f"unknown method {item!r}; accepted: {', '.join(registered)}, or all"
                    )
                if item not in names:
                    names.append(item)
    if not names:
        raise UsageError(f"--method is empty; accepted: {', '.join(registered)}, or all")
    for name in names:
        if not _SAFE_NAME.fullmatch(file_stem(name)):
            raise UsageError(f"method {name!r} cannot be used: its name is not a safe file name")
    return names


def choose_methods(names: Iterable[str], given: Mapping[str, Any]) -> dict[str, ChosenMethod]:
    """Build every chosen method with the given options it accepts.

    Raises:
        UsageError: An option value a method rejects.
    """
    chosen = {}
    for name in names:
        try:
            options = options_for(name, given)
            instance = get_method(name).create(**options)
        except (SaliencyError, ValueError, TypeError) as exc:
            raise UsageError(f"{name}: {exc}") from None
        recorded = json.loads(json.dumps(json_safe(instance.options())))
        chosen[name] = ChosenMethod(instance, options, recorded)
    return chosen


def check_format(extension: str) -> None:
    """Raise unless this Pillow can encode the overlay format."""
    feature = _FORMAT_FEATURES.get(extension)
    if feature is not None and not features.check(feature):
        raise UsageError(f"--format {extension}: this Pillow cannot write it; use --format png")


def render_options(alpha: float, colormap: str | None, sign: str | None) -> dict[str, Any]:
    """Keyword options of :func:`saliency.render` for the overlays, checked.

    Raises:
        UsageError: ``alpha`` outside [0, 1] or an unknown colormap.
    """
    if not 0.0 <= alpha <= 1.0:
        raise UsageError(f"--overlay-alpha {alpha}: accepted: a number in [0, 1]")
    options: dict[str, Any] = {"alpha": alpha}
    if colormap is not None:
        try:
            colormap_lut(colormap)
        except SaliencyError as exc:
            raise UsageError(f"--overlay-cmap: {exc}") from None
        options["cmap"] = colormap
    if sign is not None:
        options["sign"] = sign
    return options


def prepare_out(text: str) -> Path:
    """Create the output folder if needed and check that files can be written in it.

    Raises:
        UsageError: It is a file, cannot be created, or is not writable.
    """
    out = Path(text)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {text} exists and is not a folder; accepted: a folder path")
    try:
        out.mkdir(parents=True, exist_ok=True)
        descriptor, probe = tempfile.mkstemp(prefix=".saliency-write-test.", dir=out)
        os.close(descriptor)
        os.unlink(probe)
    except OSError as exc:
        raise UsageError(f"--out {text} is not a writable folder: {exc.strerror or exc}") from None
    return out


@contextmanager
def image_pixel_limit(limit: int | None) -> Iterator[None]:
    """Pillow's decompression-bomb limit for the block (None: no limit), restored after."""
    before = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = limit
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = before


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: accepted: an integer >= 1") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text}: accepted: an integer >= 1")
    return value


_BYTE_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
}


def byte_size(text: str) -> int:
    """An argparse type: a positive number of bytes, e.g. ``4000000000``, ``512MiB``, ``2GB``."""
    stripped = text.strip().lower()
    digits = stripped.rstrip("abcdefghijklmnopqrstuvwxyz").strip()
    unit = stripped[len(digits) :].strip()
    try:
        value = float(digits) * _BYTE_UNITS[unit]
    except (KeyError, ValueError):
        value = 0
    if not value >= 1:
        raise argparse.ArgumentTypeError(
            f"{text!r}: accepted: a positive size in bytes, optionally with a unit "
            "(kB, MB, GB, KiB, MiB, GiB), e.g. 2GiB"
        )
    return int(value)
