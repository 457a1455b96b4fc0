"""The manifests of a ``saliency explain`` run started with ``torchrun`` (docs/manifest.md).

Every rank plans the whole run from the same files, so every input gets the same relpath on
every rank; then each rank takes its share of the inputs and records its own results in
``OUT/manifest.rank-R.json`` (same format as ``manifest.json``, only its inputs). Before any rank
works, rank 0 writes ``manifest.json`` as a single-process run would save it first (the plan's
records, the run's shared start time) and removes earlier per-rank files. At the end, rank 0
merges the ranks' records (sent to it in memory, so a network file system's caching does not
matter) into ``manifest.json``.

The next run, with or without torchrun, with any number of processes, starts from
``manifest.json`` updated with the per-rank manifests *of the same run* (same ``run.started``):
an interrupted torchrun job resumes where each rank stopped, and per-rank files of an older run
are ignored.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from saliency.cli.manifest import (
    MANIFEST_NAME,
    InputRecord,
    Manifest,
    ManifestError,
    read_manifest,
)
from saliency.cli.plan import Plan
from saliency.cli.progress import Progress
from saliency.cli.recording import RunRecorder, now_iso

_RANK_FILE = re.compile(r"manifest\.rank-(\d+)\.json")
# Keys of a per-rank run section that the run as a whole does not have.
_RANK_KEYS = ("rank", "world_size")


def rank_manifest_name(rank: int) -> str:
    """The file name of rank ``rank``'s manifest: ``manifest.rank-R.json``."""
    return f"manifest.rank-{rank}.json"


def rank_manifest_files(out: Path) -> dict[int, Path]:
    """The per-rank manifests in ``out``, by rank (in rank order)."""
    try:
        names = os.listdir(out)
    except OSError:
        return {}
    found = {int(m[1]): out / name for name in names if (m := _RANK_FILE.fullmatch(name))}
    return dict(sorted(found.items()))


@dataclass
class Earlier:
    """What earlier runs left in the output folder.

    Attributes:
        manifest: ``manifest.json`` updated with the per-rank manifests of its run (None: none).
        warnings: Files that could not be read, and what is done instead.
    """

    manifest: Manifest | None
    warnings: list[str] = field(default_factory=list)


def read_earlier(out: Path) -> Earlier:
    """Read ``manifest.json`` and the per-rank manifests of ``out`` (see the module docstring)."""
    warnings: list[str] = []
    base = _read(out, MANIFEST_NAME, warnings, "starting a new manifest")
    parts = [
        _read(out, path.name, warnings, "ignoring it") for path in rank_manifest_files(out).values()
    ]
    return Earlier(fold(base, [part for part in parts if part is not None]), warnings)


def _read(out: Path, name: str, warnings: list[str], instead: str) -> Manifest | None:
    try:
        return read_manifest(out, name)
    except ManifestError as exc:
        warnings.append(f"{exc}; {instead}")
        return None


def fold(base: Manifest | None, parts: Sequence[Manifest]) -> Manifest | None:
    """``base`` (``manifest.json``) with the records of the per-rank manifests of its run.

    A per-rank manifest belongs to ``base``'s run when both have the same ``run.started``.
    Without ``base``, the latest-started per-rank manifests are used.
    """
    started = base.run.get("started") if base is not None else _latest(parts)
    current = [part for part in parts if part.run.get("started") == started]
    if not current:
        return base
    run = base.run if base is not None else without_rank(current[0].run)
    entries = dict(base.inputs) if base is not None else {}
    for part in current:
        entries.update(part.inputs)
    return Manifest(run, entries)


def _latest(parts: Sequence[Manifest]) -> object:
    times = [str(part.run.get("started")) for part in parts]
    return max(times) if times else None


def without_rank(run: Mapping[str, Any]) -> dict[str, Any]:
    """A per-rank run section without what only a rank has (``rank``, ``world_size``)."""
    return {key: value for key, value in run.items() if key not in _RANK_KEYS}


def write_start(
    out: Path, run: Mapping[str, Any], plan: Plan, class_names: Sequence[str] | None
) -> Path:
    """Rank 0, before any rank works: ``manifest.json`` as a single-process run saves it first.

    Then the earlier per-rank manifests are removed: their records are in it now.

    Args:
        out: The output folder.
        run: The run section, with the start time every rank records.
        plan: The whole run's plan.
        class_names: The model's class names.
    """
    recorder = RunRecorder(
        out, run, plan.entries, plan.jobs, plan.skipped, class_names, Progress(0, enabled=False)
    )
    path = recorder.save()
    for earlier in rank_manifest_files(out).values():
        earlier.unlink(missing_ok=True)
    return path


@dataclass
class RankResult:
    """What one rank did, sent to rank 0 at the end.

    Attributes:
        manifest: Its manifest as saved (its inputs only); kept in memory even if the file
            could not be written.
        done: Inputs finished without error.
        skipped: Inputs already done by an earlier run.
        failed: Inputs that failed.
        unfinished: Inputs not finished (interrupted).
        images: Inputs processed, for the rate.
        interrupted: Whether it was interrupted.
        code: Its own exit code.
    """

    manifest: Manifest
    done: int
    skipped: int
    failed: int
    unfinished: int
    images: int
    interrupted: bool
    code: int


def merge(
    run: Mapping[str, Any],
    kept: Mapping[str, InputRecord],
    results: Sequence[RankResult],
) -> Manifest:
    """The run's ``manifest.json`` from every rank's records.

    Args:
        run: The run section (rank 0's, without ``finished`` and ``totals``).
        kept: Records of earlier inputs this run does not name.
        results: Every rank's result, in rank order.

    Returns:
        Every input once; totals summed over the ranks (``seconds``: the slowest rank's), the
        devices and ``world_size`` in the run section.
    """
    entries = dict(kept)
    for result in results:
        entries.update(result.manifest.inputs)
    ok = sum(1 for entry in entries.values() if entry.status == "ok")
    rank_runs = [result.manifest.run for result in results]
    totals = {
        "inputs": len(entries),
        "ok": ok,
        "error": len(entries) - ok,
        "skipped": sum(int(r["totals"]["skipped"]) for r in rank_runs),
        "seconds": max(float(r["totals"]["seconds"]) for r in rank_runs),
    }
    idle = [float(r["totals"]["device_idle"]) for r in rank_runs if "device_idle" in r["totals"]]
    if len(idle) == len(rank_runs):
        totals["device_seconds"] = round(
            sum(float(r["totals"]["device_seconds"]) for r in rank_runs), 3
        )
        totals["device_idle"] = round(sum(idle) / len(idle), 4)
    merged = {
        **without_rank(run),
        "device": merged_device([str(r["device"]) for r in rank_runs]),
        "world_size": len(results),
        "finished": now_iso(),
        "totals": totals,
    }
    return Manifest(merged, entries)


def merged_device(devices: Sequence[str]) -> str:
    """The ranks' devices in one word: the device if one, its type (``cuda``) if one type."""
    distinct = list(dict.fromkeys(devices))
    if len(distinct) == 1:
        return distinct[0]
    types = list(dict.fromkeys(device.split(":")[0] for device in distinct))
    return types[0] if len(types) == 1 else ", ".join(distinct)
