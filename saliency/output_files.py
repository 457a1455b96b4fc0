"""Atomic output files: written to a temporary name in the same folder, then renamed.

A crash or a full disk never leaves a half-written file under the final name, and an existing
file is replaced only by a complete new one.
"""

from __future__ import annotations

import os
import re
import stat
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO


def file_stem(method: str) -> str:
    """A method name as a portable file name: a family's ``captum:Saliency`` becomes
    ``captum-Saliency`` (``:`` is not allowed in Windows file names)."""
    return method.replace(":", "-")


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` if the block succeeds."""
    target = Path(path)
    descriptor, temporary = tempfile.mkstemp(
        prefix=f".{target.name}.", suffix=".tmp", dir=target.parent
    )
    os.close(descriptor)
    try:
        # mkstemp creates 0600; give the file the mode a plain open() would (0666 & ~umask)
        os.chmod(temporary, 0o666 & ~_UMASK)
        yield Path(temporary)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_atomic(path: str | os.PathLike[str], write: Callable[[IO[bytes]], object]) -> Path:
    """Write a file by calling ``write`` on a binary file object, atomically."""
    with atomic_path(path) as temporary, open(temporary, "wb") as handle:
        write(handle)
        handle.flush()
        os.fsync(handle.fileno())
    return Path(path)


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    return write_atomic(path, lambda handle: handle.write(data))


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    return write_bytes_atomic(path, text.encode("utf-8"))


# What atomic_path leaves if its process is killed: ".<name>.<8 mkstemp characters>.tmp".
STALE_TEMPORARY = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp")


def remove_stale_temporaries(folder: str | os.PathLike[str]) -> int:
    """Remove the temporary files of :func:`atomic_path` left under ``folder`` by killed
    processes; returns how many. Only regular files whose name matches
    :data:`STALE_TEMPORARY`, found without following symbolic links, so nothing outside
    ``folder`` and nothing of anyone else is touched. Call it only while no other process
    writes there (a run holds the run folder's lock).
    """
    removed = 0
    for root, _folders, files in os.walk(folder):  # os.walk does not follow links to folders
        for name in files:
            path = os.path.join(root, name)
            try:
                if STALE_TEMPORARY.fullmatch(name) and stat.S_ISREG(os.lstat(path).st_mode):
                    os.unlink(path)
                    removed += 1
            except OSError:
                continue
    return removed


def _read_umask() -> int:
    """The process umask (read by setting it and setting it back: once, at import, since the
    two calls are not atomic with respect to other threads creating files)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()
