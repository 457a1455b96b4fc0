"""Large buffers in a ``saliency explain`` process: kept in the heap for the next batch.

glibc's ``malloc`` serves a request above its *mmap threshold* (at most 32 MiB by default)
with a fresh ``mmap`` and returns it with ``munmap`` on ``free``; smaller blocks freed at the
top of the heap are returned once more than 128 KiB is free there (the *trim threshold*).
Torch's CPU tensors are plain ``malloc`` blocks and a batch's activations are tens of MiB each
(ResNet-18, 16 images at 224²: 51 MiB after the first convolution), so every batch gets its
memory from the kernel anew, which zeroes each page on first touch: on the benchmark's 64
photos, ~650,000 page faults and ~2.4 s of system time.

Both thresholds are raised to :data:`HEAP_LIMIT`: the blocks a batch frees stay in the heap
and the next batch reuses them (~315,000 faults, ~1.6 s of system time, most of what is left
being start-up's). What the process holds between batches is then what it held during the
last one, so the peak resident set is unchanged; requests above the limit are still mapped
and unmapped alone.

The cost is memory: blocks freed in the middle of the heap are kept for reuse, and requests
of other sizes may grow the heap beside them. On the large-input cases of
``benchmarks/hostile_memory.py`` the peak resident set grows by 12–16% (``benchmarks/RESULTS.md``).

The setting is the process's: the console sets it for ``explain`` (see
:mod:`saliency.cli.launch`), forked workers inherit it, importing saliency never sets it.
A malloc setting of the user's own (``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``,
``GLIBC_TUNABLES`` naming ``glibc.malloc``) is left alone, and so is another C library.
"""

from __future__ import annotations

import ctypes
import os

_USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")

# mallopt's parameter numbers (glibc <malloc.h>).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

HEAP_LIMIT = 1 << 30
"""Blocks up to 1 GiB come from the heap, and up to 1 GiB freed at its top stays there."""


def reuse_large_buffers() -> bool:
    """Raise glibc's mmap and trim thresholds to :data:`HEAP_LIMIT`; whether both were set
    (not when the environment holds a malloc setting of the user's)."""
    if any(name in os.environ for name in _USER_SETTINGS):
        return False
    if "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    if not runs_on_glibc():
        return False
    try:
        process = ctypes.CDLL(None)  # the running program's symbols, glibc's among them
        return bool(process.mallopt(_M_MMAP_THRESHOLD, HEAP_LIMIT)) and bool(
            process.mallopt(_M_TRIM_THRESHOLD, HEAP_LIMIT)
        )
    except (OSError, AttributeError):  # no libc symbols to be found
        return False


def runs_on_glibc() -> bool:
    """Whether this process's C library is glibc."""
    try:
        return (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc")
    except (ValueError, OSError, AttributeError):  # not Linux: no such name, or no confstr
        return False
