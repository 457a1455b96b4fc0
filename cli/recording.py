"""The manifest of a run while it happens: results recorded as they come, saved atomically.

The recorder is only called from the main thread. It saves the manifest every few seconds (so
even a killed run leaves a recent, valid one) and at the end. An input still in progress at a
save is left out when nothing of it is done yet, else listed as an error saying it is not
finished, so a rerun completes it.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from saliency.cli.manifest import (
    MANIFEST_NAME,
    ClassScore,
    InputRecord,
    Manifest,
    MethodRecord,
    TargetClass,
    write_manifest,
)
from saliency.cli.plan import Job
from saliency.cli.progress import Progress

SAVE_INTERVAL_SECONDS = 5.0
NOT_FINISHED = "not finished: the run stopped before every method was done; rerun to complete it"


def now_iso() -> str:
    """The current UTC time, ISO 8601 to the second."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


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
        run: Mapping[str, Any],
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
        self.run = dict(run)
        self.entries = entries
        self.requested = {job.relpath: tuple(run["methods"]) for job in jobs}
        self.requested.update({relpath: tuple(run["methods"]) for relpath in skipped})
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

    def decoded(self, job: Job, width: int, height: int) -> None:
        """The input was decoded: record its size."""
        entry = self.entries[job.relpath]
        entry.width, entry.height = width, height

    def predicted(
        self, job: Job, indices: Sequence[int], probabilities: Sequence[float], target: int
    ) -> None:
        """The model's top classes (most probable first) and the explained class."""
        top5 = [self._class_score(i, p) for i, p in zip(indices, probabilities, strict=True)]
        entry = self.entries[job.relpath]
        entry.prediction = top5[0]
        entry.top5 = top5
        entry.target = TargetClass(index=target, label=self._label(target))

    def method_done(
        self, job: Job, method: str, overlay: str, raw: str | None, seconds: float
    ) -> None:
        """One method's outputs exist."""
        self.entries[job.relpath].methods[method] = MethodRecord(overlay, raw, seconds)

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

    def save(self) -> Path:
        """Write the manifest atomically with what is done now."""
        started = time.monotonic()
        path = write_manifest(self.out, self.snapshot(), self.manifest_name)
        self._saved = time.monotonic()
        self._save_seconds = self._saved - started
        return path

    def _saved_entries(self) -> Iterable[tuple[str, InputRecord]]:
        for relpath, entry in self.entries.items():
            if relpath not in self.unfinished:
                yield relpath, entry
            elif entry.methods:
                partial = copy.copy(entry)
                partial.status, partial.error = "error", entry.error or f"{relpath}: {NOT_FINISHED}"
                yield relpath, partial

    def _run_section(self, saved: Mapping[str, InputRecord]) -> dict[str, Any]:
        ok = sum(1 for entry in saved.values() if entry.status == "ok")
        return {
            **self.run,
            "finished": now_iso(),
            "totals": {
                "inputs": len(saved),
                "ok": ok,
                "error": len(saved) - ok,
                "skipped": self.skipped,
                "seconds": round(time.monotonic() - self._started, 3),
                **self._device_totals(),
            },
        }

    def _device_totals(self) -> dict[str, float]:
        if self.device_seconds is None or self.device_idle is None:
            return {}
        return {
            "device_seconds": round(self.device_seconds, 3),
            "device_idle": round(self.device_idle, 4),
        }

    def device_time(self, seconds: float, idle: float) -> None:
        """Record the device's busy seconds and idle fraction (saved in the totals)."""
        self.device_seconds, self.device_idle = seconds, idle

    def _error(self, job: Job, message: str) -> None:
        text = message if message.startswith(f"{job.relpath}: ") else f"{job.relpath}: {message}"
        entry = self.entries[job.relpath]
        entry.error = text if entry.error is None else f"{entry.error}; {text}"
        self.progress.message(f"{self.prefix}error: {text}")

    def _label(self, index: int) -> str | None:
        names = self.class_names
        return names[index] if names is not None and 0 <= index < len(names) else None

    def _class_score(self, index: int, probability: float) -> ClassScore:
        return ClassScore(index=index, label=self._label(index), probability=round(probability, 6))
