"""The records of a run: which (input, method) pairs it does, given what an earlier run left,
and the manifest as results come in.

Resuming: a pair is *complete* when the earlier manifest lists it for the same source file, that
file has the size and modification time recorded then (a replaced picture is redone), and its
output files (the overlay in the current format, and the raw array when ``--save-raw`` asks for
it) still exist as regular files inside the output folder and look whole (their format's first
and last bytes: an overwritten or truncated file is redone). Complete pairs are skipped unless
``overwrite``. Entries of inputs this run does not name are kept, so the manifest keeps
describing the whole folder. Results are only comparable between runs of the same model,
weights, target and precision and of the same method options: a difference is a conflict that
needs ``--overwrite`` (which then replaces the outdated records) or another output folder.

Recording: the recorder is only called from the main thread. It saves the manifest every few
seconds (so even a killed run leaves a recent, valid one) and at the end. An input still in
progress at a save is left out when nothing of it is done yet, else listed as an error saying it
is not finished, so a rerun completes it.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from saliency.cli.inputs import FoundInput, assign_relpaths
from saliency.cli.journal import Journal, JournalRecords
from saliency.cli.progress import Progress
from saliency.run_folder import (
    MANIFEST_NAME,
    InputRecord,
    Manifest,
    MethodRecord,
    RunInfo,
    Totals,
    class_of,
    class_score,
    existing_output,
    looks_complete,
    now,
    output_name,
    without_rank,
    write_manifest,
)

# Settings of the run section that change the results (device, batch size, format do not).
RESULT_SETTINGS = ("model", "weights", "target", "precision", "fit")
# Always recorded by saliency explain: None there means an earlier run that did not record it
# (a folder written from Python, or before --fit), which is no conflict. None weights are
# random weights.
_NONE_IS_UNKNOWN = frozenset({"model", "target", "precision", "fit"})
SAVE_INTERVAL_SECONDS = 5.0
NOT_FINISHED = "not finished: the run stopped before every method was done; rerun to complete it"


class ResumeConflict(ValueError):
    """The output folder holds results made with other settings."""


@dataclass(frozen=True)
class Job:
    """One input to process and the methods still to run on it."""

    source: str
    relpath: str
    methods: tuple[str, ...]


@dataclass
class Plan:
    """What a run does and the manifest it starts from.

    Attributes:
        jobs: Inputs with work to do, in processing order.
        entries: The manifest's records to start from, by relpath: kept entries of earlier
            inputs, and the current inputs' entries with their complete method records.
        skipped: Relpaths of current inputs whose every requested method is complete.
        methods: Every method the manifest will list: the requested ones, then earlier ones.
        method_options: JSON options of each method in ``methods``.
        notes: What the user should know about the earlier results.
    """

    jobs: list[Job]
    entries: dict[str, InputRecord]
    skipped: list[str]
    methods: list[str]
    method_options: dict[str, dict[str, Any]]
    notes: list[str] = field(default_factory=list)


def conflicts(previous: RunInfo | None, current: RunInfo) -> list[str]:
    """How an earlier run section differs from the current one in what changes the results.

    Only methods of the current run are compared; a setting the earlier run did not record is
    no conflict.
    """
    if previous is None:
        return []
    found = [
        f"{key}: {getattr(previous, key)!r} -> {getattr(current, key)!r}"
        for key in RESULT_SETTINGS
        if _differs(previous, current, key)
    ]
    for method in sorted(_changed_methods(previous, current)):
        before, after = previous.method_options[method], current.method_options[method]
        found.append(f"{method} options: {before} -> {after}")
    return found


def _differs(previous: RunInfo, current: RunInfo, key: str) -> bool:
    before = getattr(previous, key)
    if before is None and key in _NONE_IS_UNKNOWN:
        return False
    return bool(before != getattr(current, key))


def _changed_methods(previous: RunInfo | None, current: RunInfo) -> set[str]:
    """Methods of the current run whose options differ from the earlier run's."""
    before = previous.method_options if previous is not None else {}
    return {
        method
        for method, options in current.method_options.items()
        if method in before and before[method] != options
    }


def adopt_journals(
    base: Manifest | None, journals: Sequence[JournalRecords]
) -> tuple[Manifest | None, int]:
    """``base`` with the records of the journals that killed runs left (outputs their last
    manifest save did not hold, see :mod:`saliency.cli.journal`); and how many (input, method)
    records were added.

    A journal whose run differs from ``base``'s in what changes the results is ignored (its work
    is redone). A journaled record of the same source file, size and modification time adds its
    methods to the manifest's record; any other replaces it (it is the newer). Whether each
    output really is complete is checked by :func:`make_plan`, as for every earlier record.
    """
    adopted = 0
    for journal in journals:
        if base is not None and conflicts(base.run, journal.run):
            continue
        if base is None:
            base = Manifest(without_rank(journal.run), {})
        entries = base.inputs
        for record in journal.inputs:
            known = entries.get(record.path)
            stamp = (record.source, record.size, record.mtime_ns)
            if known is not None and (known.source, known.size, known.mtime_ns) == stamp:
                new = [m for m in record.methods if m not in known.methods]
                known.methods.update({m: record.methods[m] for m in new})
                known.width, known.height = record.width, record.height
                known.prediction, known.top5 = record.prediction, record.top5
                known.target = record.target
            else:
                new = list(record.methods)
                record.status, record.error = "ok", None
                entries[record.path] = record
            adopted += len(new)
    return base, adopted


def make_plan(
    previous: Manifest | None,
    found: Sequence[FoundInput],
    run: RunInfo,
    *,
    out: Path,
    extension: str,
    save_raw: bool,
    overwrite: bool,
    output_names: Sequence[str],
    family_prefixes: Sequence[str] = (),
) -> Plan:
    """Decide the work of a run.

    Args:
        previous: The earlier manifest of the output folder, if any.
        found: The current inputs, in processing order.
        run: The current run section (its ``model``, ``weights``, ``target``,
            ``precision``, ``methods`` and ``method_options`` are used).
        out: The output folder.
        extension: The overlay format's extension.
        save_raw: Whether raw arrays are asked for.
        overwrite: Redo complete pairs and replace results made with other settings.
        output_names: The methods registered one by one, and
        family_prefixes: the method families' prefixes, whose output files no input's relpath
            may cross (see :class:`~saliency.cli.inputs.RelpathAllocator`).

    Raises:
        ResumeConflict: The earlier results were made with other settings and not
            ``overwrite``.
    """
    requested = list(run.methods)
    notes: list[str] = []
    earlier_run = previous.run if previous is not None else None
    entries = copy.deepcopy(previous.inputs) if previous is not None else {}
    differences = conflicts(earlier_run, run)
    if differences and not overwrite:
        raise ResumeConflict(
            f"{out} holds results made with other settings ({'; '.join(differences)}); pass "
            "--overwrite to replace them, or choose another --out"
        )
    current_sources = {item.source for item in found}
    if differences:
        notes.append(f"replacing results made with other settings: {'; '.join(differences)}")
        outdated = _changed_methods(earlier_run, run)
        if earlier_run is not None and any(
            _differs(earlier_run, run, key) for key in RESULT_SETTINGS
        ):
            # Another model or target: nothing earlier is comparable; keep only the relpaths.
            entries = {p: e for p, e in entries.items() if e.source in current_sources}
            outdated = {m for e in entries.values() for m in e.methods}
        for entry in entries.values():
            for method in outdated:
                entry.methods.pop(method, None)

    # Earlier inputs keep their relpaths; one whose file is gone only if no input needs it.
    kept = {
        entry.source: path
        for path, entry in entries.items()
        if entry.source in current_sources or os.path.lexists(entry.source)
    }
    relpaths = assign_relpaths(
        [(item.source, item.natural) for item in found], kept, output_names, family_prefixes
    )
    taken = set(relpaths)
    for path in [p for p, e in entries.items() if e.source not in kept and p in taken]:
        del entries[path]

    jobs: list[Job] = []
    skipped: list[str] = []
    changed: list[str] = []
    for item, relpath in zip(found, relpaths, strict=True):
        known = entries.get(relpath)
        stamp = _stamp(item.source)
        if known is not None and known.source == item.source and _replaced(known, stamp):
            changed.append(relpath)
            known = None  # another picture under the same name: nothing earlier applies
        entry = (
            known
            if known is not None and known.source == item.source
            else InputRecord(path=relpath, source=item.source)
        )
        entry.size, entry.mtime_ns = stamp
        todo = tuple(
            method
            for method in requested
            if overwrite or not _complete(entry, method, out, extension, save_raw)
        )
        for method in todo:
            entry.methods.pop(method, None)
        entry.status, entry.error = "ok", None
        entries[relpath] = entry
        if todo:
            jobs.append(Job(item.source, relpath, todo))
        else:
            skipped.append(relpath)

    if changed:
        notes.append(
            f"{len(changed)} input(s) changed since the earlier run (size or modification time), "
            f"redone: {', '.join(changed[:5])}{' ...' if len(changed) > 5 else ''}"
        )
    earlier_methods = earlier_run.methods if earlier_run is not None else []
    earlier_options = earlier_run.method_options if earlier_run is not None else {}
    listed = {m for entry in entries.values() for m in entry.methods}
    methods = requested + [m for m in earlier_methods if m in listed and m not in requested]
    options = {m: run.method_options.get(m, earlier_options.get(m, {})) for m in methods}
    return Plan(jobs, entries, skipped, methods, options, notes)


def _stamp(source: str) -> tuple[int | None, int | None]:
    """The input file's size and modification time (None, None: it cannot be read)."""
    try:
        info = os.stat(source)
    except OSError:
        return None, None
    return info.st_size, info.st_mtime_ns


def _replaced(entry: InputRecord, stamp: tuple[int | None, int | None]) -> bool:
    """Whether the earlier record was made from another version of the file (a record without
    a stamp, from an older version of this program, is trusted)."""
    if entry.size is None or entry.mtime_ns is None:
        return False
    return (entry.size, entry.mtime_ns) != stamp


def _complete(entry: InputRecord, method: str, out: Path, extension: str, save_raw: bool) -> bool:
    """Whether an earlier record of ``method`` for this input has all its files."""
    record: MethodRecord | None = entry.methods.get(method)
    if record is None:
        return False
    overlay = output_name(entry.path, method, extension)
    if record.overlay != overlay or not _readable(out, overlay, extension):
        return False
    if not save_raw:
        return True
    raw = output_name(entry.path, method, "npy")
    return record.raw == raw and _readable(out, raw, "npy")


def _readable(out: Path, relpath: str, extension: str) -> bool:
    """Whether an earlier output exists as a regular file and looks whole (not overwritten
    with something else, not truncated)."""
    path = existing_output(out, relpath)
    return path is not None and looks_complete(path, extension)


class RunRecorder:
    """Collects per-input results into manifest records and saves the manifest.

    Args:
        out: The output folder.
        run: The run section (without ``finished`` and ``totals``, filled in at each save).
        entries: The records to start from (see :class:`~saliency.cli.plan.Plan`).
        jobs: This run's work.
        skipped: Relpaths of this run's inputs with nothing left to do.
        class_names: The model's class names, for labels.
        progress: Where errors and progress go.
        manifest_name: The manifest's file name in ``out`` (a rank of a torchrun job: its own).
        prefix: Put before every error line (a rank of a torchrun job: which one).
    """

    def __init__(
        self,
        out: Path,
        run: RunInfo,
        entries: dict[str, InputRecord],
        jobs: Sequence[Job],
        skipped: Sequence[str],
        class_names: Sequence[str] | None,
        progress: Progress,
        *,
        manifest_name: str = MANIFEST_NAME,
        prefix: str = "",
    ) -> None:
        self.out = out
        self.manifest_name = manifest_name
        self.prefix = prefix
        self.run = run
        self.entries = entries
        self.requested = {job.relpath: tuple(run.methods) for job in jobs}
        self.requested.update({relpath: tuple(run.methods) for relpath in skipped})
        self.unfinished = {job.relpath for job in jobs}
        self.skipped = len(skipped)
        self.failed: set[str] = set()
        self.class_names = class_names
        self.progress = progress
        self._started = time.monotonic()
        self._saved = self._started
        self._save_seconds = 0.0
        self.device_seconds: float | None = None
        self.device_idle: float | None = None
        self._journal: Journal | None = None

    def decoded(self, job: Job, width: int, height: int) -> None:
        """The input was decoded: record its size."""
        entry = self.entries[job.relpath]
        entry.width, entry.height = width, height

    def predicted(
        self, job: Job, indices: Sequence[int], probabilities: Sequence[float], target: int
    ) -> None:
        """The model's top classes (most probable first) and the explained class."""
        names = self.class_names
        top5 = [class_score(i, p, names) for i, p in zip(indices, probabilities, strict=True)]
        entry = self.entries[job.relpath]
        entry.prediction = top5[0]
        entry.top5 = top5
        entry.target = class_of(target, names)

    def method_done(
        self, job: Job, method: str, overlay: str, raw: str | None, seconds: float
    ) -> None:
        """One method's outputs exist."""
        self.entries[job.relpath].methods[method] = MethodRecord(overlay, raw, seconds)

    def journal_line(
        self, job: Job, method: str, overlay: str, raw: str | None, seconds: float
    ) -> tuple[str, bytes] | None:
        """The journal and the line its writer appends once the pair's files are in place (see
        :mod:`saliency.cli.journal`); None when there is no journal (it cannot be made)."""
        try:
            if self._journal is None:
                self._journal = Journal(self.out, self.manifest_name, self.run)
        except OSError:  # the journal only saves a killed run's work: the run goes on
            return None
        entry = copy.copy(self.entries[job.relpath])
        entry.methods = {**entry.methods, method: MethodRecord(overlay, raw, seconds)}
        return str(self._journal.path), self._journal.line(entry)

    def method_failed(self, job: Job, method: str, message: str) -> None:
        """One method failed for this input (the others go on)."""
        self._error(job, f"{method}: {message}")

    def input_failed(self, job: Job, message: str) -> None:
        """The input cannot be used at all (e.g. it cannot be decoded)."""
        entry = self.entries[job.relpath]
        entry.width = entry.height = entry.prediction = entry.target = None
        entry.top5 = []
        self._error(job, message)

    def finished(self, job: Job) -> None:
        """Every method of the input is done or failed."""
        self.unfinished.discard(job.relpath)
        entry = self.entries[job.relpath]
        missing = [m for m in self.requested[job.relpath] if m not in entry.methods]
        if entry.error is None and missing:  # cannot happen unless a method vanished
            entry.error = f"{job.relpath}: no output for {', '.join(missing)}"
        entry.status = "error" if entry.error is not None else "ok"
        if entry.status == "error":
            self.failed.add(job.relpath)
        self.progress.advance(failed=entry.status == "error")
        self.save_if_due()

    def save_if_due(self) -> None:
        """Save the manifest if the last save is old enough.

        A few seconds, and at least 20 times what the last save took, so that saving a huge
        manifest never takes more than a twentieth of the run.
        """
        interval = max(SAVE_INTERVAL_SECONDS, 20 * self._save_seconds)
        if time.monotonic() - self._saved >= interval:
            self.save()

    def snapshot(self) -> Manifest:
        """The manifest as it would be saved now."""
        entries = dict(self._saved_entries())
        return Manifest(self._run_section(entries), entries)

    def save(self, final: bool = False) -> Path:
        """Write the manifest atomically with what is done now; the ``final`` save (every
        result collected) also deletes the journal, whose records are all in it then."""
        started = time.monotonic()
        path = write_manifest(self.out, self.snapshot(), self.manifest_name)
        if final:
            self._close_journal()
        self._saved = time.monotonic()
        self._save_seconds = self._saved - started
        return path

    def _close_journal(self) -> None:
        journal, self._journal = self._journal, None
        if journal is not None:
            with contextlib.suppress(OSError):
                journal.remove()

    def _saved_entries(self) -> Iterable[tuple[str, InputRecord]]:
        for relpath, entry in self.entries.items():
            if relpath not in self.unfinished:
                yield relpath, entry
            elif entry.methods:
                partial = copy.copy(entry)
                partial.status, partial.error = "error", entry.error or f"{relpath}: {NOT_FINISHED}"
                yield relpath, partial

    def _run_section(self, saved: Mapping[str, InputRecord]) -> RunInfo:
        device = {}
        if self.device_seconds is not None and self.device_idle is not None:
            device = {
                "device_seconds": round(self.device_seconds, 3),
                "device_idle": round(self.device_idle, 4),
            }
        totals = Totals.of(
            saved.values(),
            skipped=self.skipped,
            seconds=round(time.monotonic() - self._started, 3),
            **device,
        )
        return dataclasses.replace(self.run, finished=now(), totals=totals)

    def device_time(self, seconds: float, idle: float) -> None:
        """Record the device's busy seconds and idle fraction (saved in the totals)."""
        self.device_seconds, self.device_idle = seconds, idle

    def _error(self, job: Job, message: str) -> None:
        text = message if message.startswith(f"{job.relpath}: ") else f"{job.relpath}: {message}"
        entry = self.entries[job.relpath]
        entry.error = text if entry.error is None else f"{entry.error}; {text}"
        self.progress.message(f"{self.prefix}error: {text}")
