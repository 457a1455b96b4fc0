"""Finding the image files named on the command line.

A file argument is always an input (whatever its extension: a broken one gets a clear error
later). A folder argument contributes the files in it whose extension Pillow can decode; with
``recursive`` also those in its subfolders, following symbolic links to folders but never
around a loop. Hidden entries (names starting with ``.``) and the output folder itself are
skipped, so running on ``.`` never picks up earlier results.
"""

from __future__ import annotations

import functools
import os
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import EpsImagePlugin, Image, ImageFile

# Pillow can identify these files but not decode their pixels without extra programs.
_IDENTIFY_ONLY_FORMATS = frozenset({"MPEG"})


class InputError(ValueError):
    """An input argument that is neither an existing file nor a folder."""


@dataclass(frozen=True)
class FoundInput:
    """One input file.

    Attributes:
        source: Its absolute path (symbolic links kept as named).
        natural: Its path relative to the folder argument it was found in (a file argument:
            its name), as components.
    """

    source: str
    natural: tuple[str, ...]


@dataclass
class Discovery:
    """What :func:`discover` found.

    Attributes:
        inputs: The input files, in argument order, folders sorted, without duplicates.
        notes: Things the user should know (folders skipped, symbolic-link loops avoided).
    """

    inputs: list[FoundInput] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@functools.lru_cache(maxsize=1)
def image_extensions() -> frozenset[str]:
    """Lower-case extensions (with the dot) of every format this Pillow can decode."""
    Image.init()
    decodable = set()
    for extension, format_id in Image.registered_extensions().items():
        opener = Image.OPEN.get(format_id)
        if opener is None or format_id in _IDENTIFY_ONLY_FORMATS:
            continue
        if isinstance(opener[0], type) and issubclass(opener[0], ImageFile.StubImageFile):
            continue  # a stub: decoding needs a handler that is rarely installed
        if format_id == "EPS" and not EpsImagePlugin.has_ghostscript():
            continue
        decodable.add(extension.lower())
    return frozenset(decodable)


def discover(arguments: Sequence[str], recursive: bool, exclude: Path | None) -> Discovery:
    """Find the input files of ``arguments`` (files and folders).

    Args:
        arguments: Paths as given on the command line.
        recursive: Also search the subfolders of folder arguments.
        exclude: A folder never to search (the output folder), if it exists.

    Raises:
        InputError: An argument that does not exist (not even as a broken symbolic link).
    """
    found = Discovery()
    seen: set[str] = set()
    excluded = _identity(exclude) if exclude is not None else None
    for argument in arguments:
        if not os.path.lexists(argument):
            raise InputError(f"input not found: {argument}")
        if os.path.isdir(argument):
            walker = _FolderWalker(Path(argument), recursive, excluded, found.notes)
            candidates: Iterator[FoundInput] = walker.walk()
        else:
            source = os.path.abspath(argument)
            candidates = iter([FoundInput(source, (os.path.basename(source),))])
        for candidate in candidates:
            if candidate.source not in seen:
                seen.add(candidate.source)
                found.inputs.append(candidate)
    return found


def _identity(path: Path) -> tuple[int, int] | None:
    """``(device, inode)`` of an existing folder, followed through links; None if absent."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_dev, info.st_ino


@dataclass
class _FolderWalker:
    """Depth-first, sorted walk of one folder argument."""

    root: Path
    recursive: bool
    excluded: tuple[int, int] | None
    notes: list[str]

    def walk(self) -> Iterator[FoundInput]:
        """The input files under the root."""
        root_id = _identity(self.root)
        yield from self._walk(self.root, (), {root_id} if root_id else set())

    def _walk(
        self, folder: Path, prefix: tuple[str, ...], ancestors: set[tuple[int, int]]
    ) -> Iterator[FoundInput]:
        try:
            entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
        except OSError as exc:
            self.notes.append(f"cannot list folder {folder}: {exc.strerror or exc}")
            return
        skipped_folders = 0
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if _is_folder(entry):
                identity = _identity(Path(entry.path))
                if identity is None or identity == self.excluded:
                    continue
                if not self.recursive:
                    skipped_folders += 1
                elif identity in ancestors:
                    self.notes.append(
                        f"skipped {entry.path}: a symbolic link back to a folder that contains "
                        "it (a loop)"
                    )
                else:
                    yield from self._walk(
                        Path(entry.path), (*prefix, entry.name), ancestors | {identity}
                    )
            elif os.path.splitext(entry.name)[1].lower() in image_extensions():
                yield FoundInput(os.path.abspath(entry.path), (*prefix, entry.name))
        if skipped_folders:
            self.notes.append(
                f"{folder}: {skipped_folders} subfolder(s) not searched; pass --recursive to "
                "include them"
            )


def _is_folder(entry: os.DirEntry[str]) -> bool:
    """Whether an entry is a folder or a link to one (a broken link or a loop is not)."""
    try:
        return stat.S_ISDIR(os.stat(entry.path).st_mode)
    except OSError:
        return False
