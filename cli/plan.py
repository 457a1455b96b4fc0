"""Resuming: which (input, method) pairs a run does, given the manifest an earlier run left.

A pair is *complete* when the earlier manifest lists it for the same source file and its output
files (the overlay in the current format, and the raw array when ``--save-raw`` asks for it)
still exist as regular files inside the output folder. Complete pairs are skipped unless
``overwrite``. Entries of inputs this run does not name are kept, so the manifest keeps
describing the whole folder.

Results are only comparable between runs of the same model, weights, target and precision and
of the same method options: a difference is a conflict that needs ``--overwrite`` (which then
replaces the outdated records) or another output folder.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from saliency.cli.inputs import FoundInput
from saliency.cli.manifest import InputRecord, Manifest, MethodRecord
from saliency.cli.relpaths import assign_relpaths, existing_output
from saliency.output_files import file_stem

# Settings of the run section that change the results (device, batch size, format do not).
RESULT_SETTINGS = ("model", "weights", "target", "precision")


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
    method_options: dict[str, Any]
    notes: list[str] = field(default_factory=list)


def output_name(relpath: str, method: str, extension: str) -> str:
    """The manifest path of an output file: ``<relpath>/<method>.<extension>`` (the method's
    :func:`~saliency.output_files.file_stem`)."""
    return f"{relpath}/{file_stem(method)}.{extension}"


def conflicts(previous: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """How an earlier run section differs from the current one in what changes the results.

    Only methods of the current run are compared; a setting the earlier run lacks is no
    conflict.
    """
    found = [
        f"{key}: {previous[key]!r} -> {current[key]!r}"
        for key in RESULT_SETTINGS
        if key in previous and previous[key] != current[key]
    ]
    before = previous.get("method_options") or {}
    for method in sorted(_changed_methods(previous, current)):
        found.append(f"{method} options: {before[method]} -> {current['method_options'][method]}")
    return found


def _changed_methods(previous: Mapping[str, Any], current: Mapping[str, Any]) -> set[str]:
    """Methods of the current run whose options differ from the earlier run's."""
    before = previous.get("method_options")
    before = before if isinstance(before, dict) else {}
    return {
        method
        for method, options in current["method_options"].items()
        if method in before and before[method] != options
    }


def make_plan(
    previous: Manifest | None,
    found: Sequence[FoundInput],
    run: Mapping[str, Any],
    *,
    out: Path,
    extension: str,
    save_raw: bool,
    overwrite: bool,
    output_names: Sequence[str],
) -> Plan:
    """Decide the work of a run.

    Args:
        previous: The earlier manifest of the output folder, if any.
        found: The current inputs, in processing order.
        run: The current run section (``model``, ``weights``, ``target``, ``precision``,
            ``methods``, ``method_options``).
        out: The output folder.
        extension: The overlay format's extension.
        save_raw: Whether raw arrays are asked for.
        overwrite: Redo complete pairs and replace results made with other settings.
        output_names: Every registered method name (see :class:`RelpathAllocator`).

    Raises:
        ResumeConflict: The earlier results were made with other settings and not
            ``overwrite``.
    """
    requested: list[str] = list(run["methods"])
    notes: list[str] = []
    earlier_run: Mapping[str, Any] = previous.run if previous is not None else {}
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
        if any(key in earlier_run and earlier_run[key] != run[key] for key in RESULT_SETTINGS):
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
    relpaths = assign_relpaths([(item.source, item.natural) for item in found], kept, output_names)
    taken = set(relpaths)
    for path in [p for p, e in entries.items() if e.source not in kept and p in taken]:
        del entries[path]

    jobs: list[Job] = []
    skipped: list[str] = []
    for item, relpath in zip(found, relpaths, strict=True):
        known = entries.get(relpath)
        entry = (
            known
            if known is not None and known.source == item.source
            else InputRecord(path=relpath, source=item.source)
        )
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

    earlier_methods = earlier_run.get("methods")
    listed = {m for entry in entries.values() for m in entry.methods}
    methods = requested + [
        m
        for m in (earlier_methods if isinstance(earlier_methods, list) else [])
        if isinstance(m, str) and m in listed and m not in requested
    ]
    earlier_options = earlier_run.get("method_options")
    earlier_options = earlier_options if isinstance(earlier_options, dict) else {}
    options = {m: run["method_options"].get(m, earlier_options.get(m, {})) for m in methods}
    return Plan(jobs, entries, skipped, methods, options, notes)


def _complete(entry: InputRecord, method: str, out: Path, extension: str, save_raw: bool) -> bool:
    """Whether an earlier record of ``method`` for this input has all its files."""
    record: MethodRecord | None = entry.methods.get(method)
    if record is None:
        return False
    overlay = output_name(entry.path, method, extension)
    if record.overlay != overlay or existing_output(out, overlay) is None:
        return False
    if not save_raw:
        return True
    raw = output_name(entry.path, method, "npy")
    return record.raw == raw and existing_output(out, raw) is not None
