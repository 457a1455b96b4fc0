"""The inputs of a run: finding the image files named on the command line, and where each
input's outputs go inside ``--out``.

A file argument is always an input (whatever its extension: a broken one gets a clear error
later). A folder argument contributes the files in it whose extension Pillow can decode; with
``recursive`` also those in its subfolders, following symbolic links to folders but never
around a loop. Hidden entries (names starting with ``.``) and the output folder itself are
skipped, so running on ``.`` never picks up earlier results.

An input's *relpath* is its path relative to the folder argument it was found in (a file given
directly: its name), extension kept, always written with ``/``. Its outputs are the files
``OUT/<relpath>/<method>.<ext>``. Two inputs must never share an output file, so a relpath that
would collide with another input's folder or output files (case and Unicode normalisation
folded, as some file systems do), or with the run folder's own files (``manifest.json``, the
gallery), gets a ``~2``, ``~3``... suffix on the first component that collides. Every path
written is checked to stay inside ``--out``: relpath components can never be ``..`` or
absolute, and no folder on the way may be a symbolic link.
"""

from __future__ import annotations

import functools
import os
import stat
import unicodedata
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import EpsImagePlugin, Image, ImageFile

from saliency.output_files import file_stem
from saliency.run_folder import (
    OUTPUT_EXTENSIONS,
    RESERVED_NAMES,
    UnsafePathError,
    split_relpath,
    text_form,
)

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


# ---- relpaths ---------------------------------------------------------------------------------


_MAX_SUFFIX = 100_000


def _key(parts: Iterable[str]) -> str:
    """Collision key: what case-insensitive, normalising file systems treat as one name."""
    return unicodedata.normalize("NFC", "/".join(parts)).casefold()


@dataclass
class RelpathAllocator:
    """Gives each input a relpath whose outputs collide with no other input's.

    Args:
        output_names: The methods whose files an input folder may hold (every method registered
            one by one); a relpath may not pass through ``<other relpath>/<file stem>.<ext>``.
        family_prefixes: The method families' prefixes (``"captum:"``): any file named
            ``<prefix stem><member>.<ext>`` (``captum-Saliency.png``) is reserved the same way,
            without listing the members (which would import the family's library).
    """

    output_names: Sequence[str]
    family_prefixes: Sequence[str] = ()
    _relpaths: set[str] = field(default_factory=set)
    _children: dict[str, set[str]] = field(default_factory=dict)
    """Folder key → the keys of the components claimed directly inside it."""
    _output_files: frozenset[str] = field(init=False)
    _family_stems: tuple[str, ...] = field(init=False)
    _extensions: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        self._output_files = frozenset(
            _key([f"{file_stem(name)}.{extension}"])
            for name in self.output_names
            for extension in OUTPUT_EXTENSIONS
        )
        self._family_stems = tuple(_key([file_stem(prefix)]) for prefix in self.family_prefixes)
        self._extensions = tuple(f".{extension}" for extension in OUTPUT_EXTENSIONS)

    def _is_output_name(self, key: str) -> bool:
        """Whether a file name (its key) is one a method's output may have."""
        if key in self._output_files:
            return True
        stem, dot, extension = key.rpartition(".")
        return (
            bool(dot)
            and f".{extension}" in self._extensions
            and any(stem.startswith(prefix) and stem != prefix for prefix in self._family_stems)
        )

    def claim(self, relpath: str) -> None:
        """Record a relpath that is already in use (e.g. kept from an earlier run)."""
        parts = split_relpath(relpath)
        self._relpaths.add(_key(parts))
        for end in range(1, len(parts) + 1):
            self._children.setdefault(_key(parts[: end - 1]), set()).add(_key(parts[end - 1 : end]))

    def allocate(self, natural: Sequence[str]) -> str:
        """Claim and return ``natural`` (components), suffixed ``~N`` where it collides.

        A name that is not valid UTF-8 is taken in its :func:`~saliency.run_folder.text_form`
        (``caf\\xe9.png``), so that every output path is text.
        """
        parts = list(split_relpath("/".join(text_form(part) for part in natural)))
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
        if len(parts) == 1 and parts[0].casefold() in RESERVED_NAMES:
            return True
        return self._is_output_name(_key(parts[-1:])) and _key(parts[:-1]) in self._relpaths

    def _first_collision(self, parts: Sequence[str]) -> int | None:
        """Index of the first component that makes ``parts`` collide, or None."""
        for end in range(1, len(parts)):  # folders on the way must not be anyone's files
            if self._is_file(parts[:end]):
                return end - 1
        last = len(parts) - 1
        if _key(parts) in self._relpaths or self._is_file(parts):
            return last
        inside = self._children.get(_key(parts), set())
        if any(self._is_output_name(name) for name in inside):  # its outputs: others' folders
            return last
        return None


def assign_relpaths(
    inputs: Sequence[tuple[str, Sequence[str]]],
    kept: Mapping[str, str],
    output_names: Sequence[str],
    family_prefixes: Sequence[str] = (),
) -> list[str]:
    """Relpaths for ``inputs`` (``(source, natural components)``, in processing order).

    Args:
        inputs: Each input's absolute source path and natural relpath components.
        kept: Relpaths already in use in the output folder, by source (from the manifest of an
            earlier run). An input whose source is there keeps that relpath, so reruns resume.
        output_names: See :class:`RelpathAllocator`.
        family_prefixes: See :class:`RelpathAllocator`.

    Returns:
        One relpath per input, in order; all distinct and collision-free.
    """
    allocator = RelpathAllocator(output_names, family_prefixes)
    for relpath in kept.values():
        allocator.claim(relpath)
    return [
        kept[source] if source in kept else allocator.allocate(natural)
        for source, natural in inputs
    ]
