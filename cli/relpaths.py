"""Where each input's outputs go: relpaths inside ``--out``, collisions, and path safety.

An input's *relpath* is its path relative to the folder argument it was found in (a file given
directly: its name), extension kept, always written with ``/``. Its outputs are the files
``OUT/<relpath>/<method>.<ext>``. Two inputs must never share an output file, so a relpath that
would collide with another input's folder or output files (case and Unicode normalisation
folded, as some file systems do), or with the run folder's own files (``manifest.json``, the
gallery), gets a ``~2``, ``~3``... suffix on the first component that collides.

Every path written is checked to stay inside ``--out``: relpath components can never be
``..`` or absolute, and no folder on the way may be a symbolic link.
"""

from __future__ import annotations

import contextlib
import os
import stat
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

# What the run folder itself holds at its top (docs/manifest.md): never an input's folder.
RESERVED_TOP_NAMES = ("manifest.json", "metrics.json", "index.html", "gallery")
# Every extension an output file may have: overlay formats and raw arrays.
OUTPUT_EXTENSIONS = ("png", "jpg", "webp", "npy")
_MAX_SUFFIX = 100_000


class UnsafePathError(ValueError):
    """A path that would leave the output folder, or pass through a symbolic link."""


def split_relpath(relpath: str) -> tuple[str, ...]:
    """The components of a ``/``-separated relpath, checked to stay inside the output folder.

    Raises:
        UnsafePathError: An empty, absolute or ``.``/``..`` component, or a NUL character.
    """
    parts = tuple(relpath.split("/"))
    for part in parts:
        if part in ("", ".", "..") or "\0" in part:
            raise UnsafePathError(
                f"unsafe output path {relpath!r}: components must be non-empty names, not "
                "'.', '..' or absolute"
            )
    return parts


def is_safe_relpath(relpath: object) -> bool:
    """Whether ``relpath`` is a string that :func:`split_relpath` accepts."""
    if not isinstance(relpath, str):
        return False
    try:
        split_relpath(relpath)
    except UnsafePathError:
        return False
    return True


def _key(parts: Iterable[str]) -> str:
    """Collision key: what case-insensitive, normalising file systems treat as one name."""
    return unicodedata.normalize("NFC", "/".join(parts)).casefold()


@dataclass
class RelpathAllocator:
    """Gives each input a relpath whose outputs collide with no other input's.

    Args:
        output_names: The file stems an input folder may hold (every registered method name);
            a relpath may not pass through ``<other relpath>/<stem>.<ext>``.
    """

    output_names: Sequence[str]
    _relpaths: set[str] = field(default_factory=set)
    _folders: set[str] = field(default_factory=set)
    _output_files: frozenset[str] = field(init=False)

    def __post_init__(self) -> None:
        self._output_files = frozenset(
            _key([f"{name}.{extension}"])
            for name in self.output_names
            for extension in OUTPUT_EXTENSIONS
        )

    def claim(self, relpath: str) -> None:
        """Record a relpath that is already in use (e.g. kept from an earlier run)."""
        parts = split_relpath(relpath)
        self._relpaths.add(_key(parts))
        for end in range(1, len(parts) + 1):
            self._folders.add(_key(parts[:end]))

    def is_free(self, relpath: str) -> bool:
        """Whether ``relpath`` collides with nothing claimed."""
        return self._first_collision(split_relpath(relpath)) is None

    def allocate(self, natural: Sequence[str]) -> str:
        """Claim and return ``natural`` (components), suffixed ``~N`` where it collides."""
        parts = list(split_relpath("/".join(natural)))
        collision = self._first_collision(parts)
        if collision is not None:
            stem = parts[collision]
            for number in range(2, _MAX_SUFFIX):
                parts[collision] = f"{stem}~{number}"
                later = self._first_collision(parts)
                if later is None:
                    break
                if later != collision:  # a deeper component collides now: suffix that one
                    return self.allocate(parts)
            else:  # pragma: no cover - needs 100,000 inputs of one name
                raise UnsafePathError(f"too many inputs named {'/'.join(natural)!r}")
        relpath = "/".join(parts)
        self.claim(relpath)
        return relpath

    def _is_file(self, parts: Sequence[str]) -> bool:
        """Whether ``parts`` names a file of the run folder or of a claimed input."""
        if len(parts) == 1 and parts[0].casefold() in RESERVED_TOP_NAMES:
            return True
        return _key(parts[-1:]) in self._output_files and _key(parts[:-1]) in self._relpaths

    def _first_collision(self, parts: Sequence[str]) -> int | None:
        """Index of the first component that makes ``parts`` collide, or None."""
        for end in range(1, len(parts)):  # folders on the way must not be anyone's files
            if self._is_file(parts[:end]):
                return end - 1
        last = len(parts) - 1
        if _key(parts) in self._relpaths or self._is_file(parts):
            return last
        for name in self._output_files:  # this input's outputs must not be others' folders
            if f"{_key(parts)}/{name}" in self._folders:
                return last
        return None


def assign_relpaths(
    inputs: Sequence[tuple[str, Sequence[str]]],
    kept: Mapping[str, str],
    output_names: Sequence[str],
) -> list[str]:
    """Relpaths for ``inputs`` (``(source, natural components)``, in processing order).

    Args:
        inputs: Each input's absolute source path and natural relpath components.
        kept: Relpaths already in use in the output folder, by source (from the manifest of an
            earlier run). An input whose source is there keeps that relpath, so reruns resume.
        output_names: See :class:`RelpathAllocator`.

    Returns:
        One relpath per input, in order; all distinct and collision-free.
    """
    allocator = RelpathAllocator(output_names)
    for relpath in kept.values():
        allocator.claim(relpath)
    return [
        kept[source] if source in kept else allocator.allocate(natural)
        for source, natural in inputs
    ]


def output_folder(out: Path, relpath: str, create: bool) -> Path:
    """``out/<relpath>``, refusing any way out of ``out`` (``..``, symbolic links, files).

    Args:
        out: The output folder (must exist).
        relpath: The input's relpath.
        create: Create missing folders; otherwise a missing folder raises FileNotFoundError.

    Raises:
        UnsafePathError: A component is a symbolic link or not a folder.
        OSError: A folder cannot be created.
    """
    folder = out
    for part in split_relpath(relpath):
        folder = folder / part
        if create:
            with contextlib.suppress(FileExistsError):
                folder.mkdir()
        mode = os.lstat(folder).st_mode
        if stat.S_ISLNK(mode):
            raise UnsafePathError(
                f"{folder} is a symbolic link; refusing to write through it, outside the output "
                "folder"
            )
        if not stat.S_ISDIR(mode):
            raise UnsafePathError(f"{folder} exists and is not a folder")
    return folder


def existing_output(out: Path, relpath: str) -> Path | None:
    """``out/<relpath>`` (a file written by an earlier run) if it is a regular file reached
    through real folders only; else None."""
    parts = split_relpath(relpath)
    try:
        folder = output_folder(out, "/".join(parts[:-1]), create=False) if len(parts) > 1 else out
        mode = os.lstat(folder / parts[-1]).st_mode
    except (OSError, UnsafePathError):
        return None
    return folder / parts[-1] if stat.S_ISREG(mode) else None
