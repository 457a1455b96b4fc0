"""Garbage collection in a ``saliency`` process: off while it starts, frozen when it exits.

Importing torch and torchvision creates about a million long-lived objects and no garbage, yet
the collector runs full collections over them as they appear (~0.5 s on a 2-core CPU).
:func:`saliency.cli.launch.console` turns collection off (:func:`pause_for_start_up`) from its
first line; :func:`start_collecting` (called once a command's set-up is done: imports made,
model loaded) freezes every object made so far, so that no collection scans them again, and
turns collection back on for the work, where cycles can be garbage.

In a process not started by the console (tests, notebooks calling
:func:`saliency.cli.main.main`), the functions here change nothing.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

_managed = False
"""Whether this process's collection is managed here (set by the console script)."""


def pause_for_start_up() -> None:
    """Turn collection off until :func:`start_collecting` (the console's first call)."""
    global _managed
    _managed = True
    gc.disable()


def start_collecting() -> None:
    """Set-up is done: freeze what exists and collect garbage from now on (console only)."""
    if _managed and not gc.isenabled():
        gc.freeze()
        gc.enable()


@contextlib.contextmanager
def set_up_without_collecting() -> Iterator[None]:
    """A command's set-up (imports, model loading): no collection inside, then
    :func:`start_collecting` (console only; a no-op block otherwise)."""
    if not _managed:
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        start_collecting()
