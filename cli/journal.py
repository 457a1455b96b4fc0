"""The run journal: every output a run has written, so that a rerun after a kill redoes none.

The manifest is rewritten every few seconds (a whole file, atomically), from the results the
main process has collected; outputs written by the workers since are not in it. So every
(input, method) pair appends one line to ``OUT/.<manifest>.journal`` as soon as its files are
renamed into place, in the process that wrote them: the input's record as the manifest would
hold it (prepared by the main process, which knows the prediction). Each line is one ``write``
of a whole line to a file opened with ``O_APPEND`` (no buffer in the process, lines of several
workers never interleave), so a run killed even by SIGKILL leaves every line it wrote, at worst
a partial last one, which is ignored. The final save of the manifest deletes the journal (a
periodic save cannot: a worker may be about to append a pair the save does not hold). A rerun
folds the journals into the earlier manifest (see
:func:`saliency.cli.plan.adopt_journals`), and the usual resume checks (the input's size and
modification time, the outputs' presence and integrity) decide what is really done.

The first line is the run section of the run that writes the journal, so a rerun can tell
whether its records are comparable. Only regular files are read, never through a symbolic
link, and at most :data:`MAX_JOURNAL_BYTES`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from saliency.run_folder import InputRecord, RunInfo, valid_text

FORMAT = 1
MAX_JOURNAL_BYTES = 1024**3  # ~2 M pairs
_JOURNAL_FILE = re.compile(r"\.manifest(\.rank-\d+)?\.json\.journal")


def journal_name(manifest_name: str) -> str:
    """The journal of the manifest ``manifest_name``: ``.manifest.json.journal``."""
    return f".{manifest_name}.journal"


class Journal:
    """An open journal, written by the run's recorder (the main thread only).

    Args:
        folder: The run folder.
        manifest_name: The manifest the journal completes.
        run: The run section, the journal's first line.
    """

    def __init__(self, folder: Path, manifest_name: str, run: RunInfo) -> None:
        self.path = folder / journal_name(manifest_name)
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND | os.O_CLOEXEC
        self._fd: int | None = os.open(self.path, flags | getattr(os, "O_NOFOLLOW", 0), 0o644)
        self._write({"journal": FORMAT, "run": run.to_json()})

    def line(self, entry: InputRecord) -> bytes:
        """The journal line of the input's record, for :func:`append_line`."""
        return _line({"input": entry.to_json()})

    def remove(self) -> None:
        """Close and delete the journal (its records are in a saved manifest)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def _write(self, data: object) -> None:
        assert self._fd is not None
        os.write(self._fd, _line(data))


def _line(data: object) -> bytes:
    text = json.dumps(valid_text(data), ensure_ascii=True, allow_nan=False) + "\n"
    return text.encode("ascii")


def append_line(path: str, line: bytes) -> None:
    """Append one journal line (in a writer: a worker process or thread). Best effort: a
    journal that is gone (the run saved its final manifest) or cannot be written is left alone,
    the pair is then redone after a kill."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        return
    try:
        os.write(fd, line)
    except OSError:
        pass
    finally:
        os.close(fd)


@dataclass(frozen=True)
class JournalRecords:
    """What one journal holds: the run that wrote it and its input records, in order."""

    path: Path
    run: RunInfo
    inputs: list[InputRecord]


def journal_files(folder: Path) -> list[Path]:
    """The journals in ``folder`` (``manifest.json``'s and the per-rank manifests')."""
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return []
    return [folder / name for name in names if _JOURNAL_FILE.fullmatch(name)]


def read_journals(folder: Path) -> list[JournalRecords]:
    """Every readable journal of ``folder``; an unreadable one, or one whose first line is not
    a journal header, is left out (its work is redone)."""
    found = []
    for path in journal_files(folder):
        lines = _read_lines(path)
        if not lines:
            continue
        header = _parse(lines[0])
        if not isinstance(header, dict) or header.get("journal") != FORMAT:
            continue
        if not isinstance(header.get("run"), dict):
            continue
        records = []
        for line in lines[1:]:
            data = _parse(line)
            record = InputRecord.from_json(data.get("input")) if isinstance(data, dict) else None
            if record is not None:
                records.append(record)
        found.append(JournalRecords(path, RunInfo.from_json(header["run"]), records))
    return found


def remove_journals(folder: Path) -> None:
    """Delete every journal of ``folder`` (after a manifest holding their records is saved)."""
    for path in journal_files(folder):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _read_lines(path: Path) -> list[bytes]:
    """The complete lines of a regular file (not followed through a link, no FIFO wait)."""
    flags = os.O_RDONLY | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0) | os.O_NONBLOCK
    try:
        fd = os.open(path, flags)
    except OSError:
        return []
    with open(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_JOURNAL_BYTES:
            return []
        # A last line without its newline was cut short by a kill: left out.
        return [line for line in handle if line.endswith(b"\n")]


def _parse(line: bytes) -> object:
    try:
        return json.loads(line)
    except (ValueError, RecursionError):
        return None
