"""``saliency explain INPUT...``: saliency maps for image files, written as a run folder.

Writes ``OUT/<relpath>/<method>.<format>`` overlays at each image's own resolution and
``OUT/manifest.json`` (docs/manifest.md). The model sees each image as ``--fit`` says (squash
by default: the whole image resized to its square input size; see :mod:`saliency.cli.model`).
Runs resume by default; exit codes: 0 every input done, 1 some inputs failed (the others were
processed), 2 a usage or set-up error found before any work, 130 interrupted (what was done is
kept; rerun to resume).

A run is a world of one or more processes (:mod:`saliency.cli.distributed`): each plans the
whole run, does its share of the inputs and records it; rank 0 reports for everyone and builds
the gallery. Alone, a process's share is everything and its record is ``OUT/manifest.json``;
under ``torchrun`` (``WORLD_SIZE`` > 1) each rank records its share in
``OUT/manifest.rank-R.json`` and rank 0 merges the shares into ``OUT/manifest.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from saliency.cli import UsageError, distributed, explain_options, method_options
from saliency.cli.collection import set_up_without_collecting
from saliency.cli.distributed import Group
from saliency.cli.explain_options import (
    BATCH_CPU,
    BATCH_GPU,
    ChosenMethod,
    check_format,
    choose_methods,
    image_pixel_limit,
    method_names,
    prepare_out,
    render_options,
)
from saliency.cli.inputs import FoundInput, InputError, discover
from saliency.cli.journal import read_journals, remove_journals
from saliency.cli.model import (
    ReadyModel,
    check_layers,
    check_queries,
    load_ready_model,
    parse_target,
)
from saliency.cli.pipeline import Compute, OutputSpec, Pipeline
from saliency.cli.plan import Job, Plan, ResumeConflict, RunRecorder, adopt_journals, make_plan
from saliency.cli.progress import Progress, format_duration, format_rate, say
from saliency.engine import EngineOptions
from saliency.errors import SaliencyError
from saliency.methods.registry import family_prefixes, get_method, list_methods
from saliency.output_files import remove_stale_temporaries
from saliency.run_folder import (
    InputRecord,
    Manifest,
    RunInfo,
    merge,
    now,
    rank_manifest_files,
    read_earlier,
    versions,
    write_manifest,
)
from saliency.run_lock import LOCK_NAME, FolderInUseError, RunLock, lock_run_folder

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
_LABEL = "saliency explain"


def add_arguments(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    """Add the options of ``saliency explain`` to its sub-parser; returns :func:`run`.

    The options of method families (captum:NAME) are added when the command line (the
    parser's ``command_line`` default, set by :func:`saliency.cli.main.build_parser`) names one.
    """
    command_line = parser.get_default("command_line")
    families = command_line is None or explain_options.names_a_family(command_line)
    parser.set_defaults(generated_options=explain_options.add_arguments(parser, families))
    return run


def _torch_threads(choice: int | str) -> int:
    """The torch CPU thread count for ``--threads`` (see its help)."""
    if isinstance(choice, int):
        return choice
    cores = os.cpu_count() or 1
    busy = hasattr(os, "getloadavg") and os.getloadavg()[0] >= cores
    return 1 if busy else torch.get_num_threads()


def run(arguments: argparse.Namespace) -> int:
    """Run the command; returns the exit code (this rank's, under torchrun)."""
    threads = torch.get_num_threads()
    world: Group | None = None
    try:
        with (
            _terminate_as_interrupt(),
            distributed.join(distributed.detect(), arguments.device) as world,
        ):
            return _run(arguments, world)
    except UsageError as exc:
        if world is None or world.ranks.is_main:  # every rank has the same (agreed) error
            say(f"{_LABEL}: error: {exc}", sys.stderr, lines=True)
        return EXIT_USAGE
    except KeyboardInterrupt:  # during set-up: nothing was written yet
        say(f"{_LABEL}: interrupted", sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        torch.set_num_threads(threads)  # --threads: only for this run (matters in process)


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM (``kill``, torchrun stopping its ranks) handled like Ctrl-C: the writes in flight
    are collected and the manifest saved before the run exits (130)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(_signal: int, _frame: object) -> None:
        raise KeyboardInterrupt

    before = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


@dataclass
class _Setup:
    """Everything a run needs, checked before any work (the same on every rank)."""

    out: Path
    methods: dict[str, ChosenMethod]
    overlay: dict[str, Any]
    ready: ReadyModel
    target: int | None
    run: RunInfo
    plan: Plan


def _run(arguments: argparse.Namespace, world: Group) -> int:
    """Set up (every rank agreeing that it could), then do the work."""
    started, started_at = time.monotonic(), now()
    existed = os.path.lexists(arguments.out)
    world.barrier()  # every rank has looked before one creates the folder
    with contextlib.ExitStack() as held:  # rank 0: the run folder's lock, until the end
        try:
            with set_up_without_collecting():  # imports torchvision, loads the model
                setup, error = _set_up(arguments, world, held), None
        except UsageError as exc:
            setup, error = None, str(exc)
        error, started_at = distributed.agree(world, error, started_at)
        if error is not None or setup is None:
            held.close()
            if not existed and world.ranks.is_main:
                _remove_if_empty(Path(arguments.out))  # a usage error leaves nothing behind
            raise UsageError(error)
        setup.run.started = started_at  # rank 0's, on every rank
        return _execute(arguments, setup, world, started)


def _remove_if_empty(out: Path) -> None:
    """Remove the output folder if it exists and holds nothing but its lock file."""
    with contextlib.suppress(OSError):
        if [entry.name for entry in out.iterdir()] == [LOCK_NAME]:
            (out / LOCK_NAME).unlink()
        if not any(out.iterdir()):
            out.rmdir()


def _lock(out: Path) -> RunLock:
    """The run folder's lock (see :mod:`saliency.run_lock`).

    Raises:
        UsageError: Another run holds it, or it cannot be taken.
    """
    try:
        return lock_run_folder(out)
    except FolderInUseError as exc:
        raise UsageError(str(exc)) from None
    except OSError as exc:
        raise UsageError(f"--out {out}: cannot lock the run folder: {exc}") from None


def _set_up(arguments: argparse.Namespace, world: Group, held: contextlib.ExitStack) -> _Setup:
    """Check every choice, load the model and plan the run (whole, on every rank). Rank 0
    locks the run folder first (released by ``held``).

    Raises:
        UsageError: Anything that stops the run before any work.
    """
    engine_options = _engine_options(arguments)
    names = method_names(arguments.method)
    given = method_options.given_options(arguments, arguments.generated_options)
    methods = choose_methods(names, given)
    check_format(arguments.format)
    overlay = render_options(
        arguments.overlay_alpha, arguments.overlay_cmap, arguments.overlay_sign
    )
    out = prepare_out(arguments.out)
    if world.ranks.is_main:
        held.callback(_lock(out).release)
        remove_stale_temporaries(out)  # of killed runs: no other run writes here now
    found = _discover(arguments, out, world.ranks.is_main)
    ready, methods = _load_model(arguments, methods, world, engine_options)
    target = parse_target(arguments.target, ready)
    run = RunInfo(
        model=ready.name,
        weights=ready.weights,
        methods=list(methods),
        # A layer method's automatic layer is recorded by the dotted name it resolved to.
        method_options={
            name: chosen.recorded | ({"layer": ready.layers[name]} if name in ready.layers else {})
            for name, chosen in methods.items()
        },
        target="predicted" if target is None else target,
        device=str(ready.device),
        precision=arguments.precision,
        compile=arguments.compile,
        channels_last=arguments.channels_last or None,  # recorded only when used
        batch_size=arguments.batch_size,
        memory_budget=arguments.memory_budget,
        fit=None if ready.model_input.custom is not None else ready.model_input.preprocess.fit,
        format=arguments.format,
        class_names=ready.class_names is not None,
        versions=versions(),
    )
    plan = _plan(arguments, out, found, run, world.ranks.is_main)
    run.methods, run.method_options = plan.methods, plan.method_options
    return _Setup(out, methods, overlay, ready, target, run, plan)


def _engine_options(arguments: argparse.Namespace) -> EngineOptions:
    """The engine's options of the run, checked by building them (before any work).

    Raises:
        UsageError: A value the engine does not accept.
    """
    try:
        return EngineOptions(
            batch_size=arguments.batch_size,
            precision=arguments.precision,
            compile=arguments.compile,
            memory_budget=arguments.memory_budget,
            channels_last=arguments.channels_last,
        )
    except (SaliencyError, ValueError, TypeError) as exc:
        raise UsageError(str(exc)) from None


def _discover(arguments: argparse.Namespace, out: Path, main: bool) -> list[FoundInput]:
    """The input files, in the order every rank sees them (notes: printed by ``main``)."""
    try:
        found = discover(arguments.inputs, arguments.recursive, exclude=out)
    except InputError as exc:
        raise UsageError(str(exc)) from None
    for note in found.notes if main else []:
        say(f"{_LABEL}: note: {note}", sys.stderr)
    if not found.inputs:
        raise UsageError(
            f"no image files found in {', '.join(arguments.inputs)} (extensions Pillow decodes"
            f"{'' if arguments.recursive else '; pass --recursive to search subfolders'})"
        )
    return found.inputs


def _plan(
    arguments: argparse.Namespace, out: Path, found: list[FoundInput], run: RunInfo, main: bool
) -> Plan:
    """The whole run's plan, from what earlier runs left in ``out``."""
    earlier = read_earlier(out)
    for warning in earlier.warnings if main else []:
        say(f"{_LABEL}: warning: {warning}", sys.stderr)
    # Outputs a killed run finished after its last manifest save (checked like every record).
    previous, adopted = adopt_journals(earlier.manifest, read_journals(out))
    try:
        plan = make_plan(
            previous,
            found,
            run,
            out=out,
            extension=arguments.format,
            save_raw=arguments.save_raw,
            overwrite=arguments.overwrite,
            output_names=list_methods(families=False),  # imports no family's library
            family_prefixes=family_prefixes(),
        )
    except ResumeConflict as exc:
        raise UsageError(str(exc)) from None
    if adopted:
        plan.notes.append(
            f"{adopted} output(s) finished after the last manifest save of an interrupted run "
            "were found in its journal"
        )
    return plan


def _load_model(
    arguments: argparse.Namespace,
    methods: dict[str, ChosenMethod],
    world: Group,
    engine_options: EngineOptions,
) -> tuple[ReadyModel, dict[str, ChosenMethod]]:
    """The checked model, on this process's device, and the methods that apply to it."""
    torch.set_num_threads(_torch_threads(arguments.threads))
    device = distributed.rank_device(arguments.device, world.ranks)
    weights = None if arguments.weights.lower() == "none" else arguments.weights
    ready = load_ready_model(arguments.model, weights, device, arguments.input_size, arguments.fit)
    methods = _applicable(methods, ready, arguments.method, world.ranks.is_main)
    instances = {name: chosen.instance for name, chosen in methods.items()}
    ready = replace(ready, layers=check_layers(ready, instances, engine_options))
    check_queries(ready, instances)
    return ready, methods


def _applicable(
    methods: dict[str, ChosenMethod],
    ready: ReadyModel,
    requested: Sequence[str] | None,
    main: bool,
) -> dict[str, ChosenMethod]:
    """With ``--method all``, the methods that apply to the model (attention methods need a
    transformer); methods named one by one always run."""
    named = {part.strip() for value in requested or () for part in value.split(",")}
    if "all" not in named:
        return methods
    kept = {n: c for n, c in methods.items() if n in named or get_method(n).applies_to(ready.model)}
    skipped = [n for n in methods if n not in kept]
    if skipped and main:
        say(
            f"{_LABEL}: note: --method all skips {', '.join(skipped)}: they do not apply to this "
            "model (attention methods need a vision transformer)",
            sys.stderr,
        )
    return kept


@dataclass
class _Share:
    """What this process does: its share of the plan.

    Attributes:
        jobs: Its inputs with work left, in order.
        skipped: Its inputs already done.
        entries: The records its manifest starts from.
        run: Its manifest's run section.
        label: What its messages start with.
    """

    jobs: list[Job]
    skipped: list[str]
    entries: dict[str, InputRecord]
    run: RunInfo
    label: str


def _share(setup: _Setup, world: Group) -> _Share:
    """This process's share: round-robin over the ranks.

    Alone, the share is the whole plan and its manifest is the run's, so it starts from every
    record of the plan (also those of earlier inputs this run does not name). A rank's manifest
    holds its inputs only; rank 0 adds the earlier records when it merges.
    """
    plan, run = setup.plan, setup.run
    jobs, skipped = world.share(plan.jobs), world.share(plan.skipped)
    entries = plan.entries
    if world.shared:
        run = dataclasses.replace(run, rank=world.ranks.rank, world_size=world.ranks.world_size)
        entries = {path: entries[path] for path in [job.relpath for job in jobs] + skipped}
    return _Share(jobs, skipped, entries, run, world.label(_LABEL))


@dataclass
class RankResult:
    """What one process did, sent to rank 0 at the end.

    Attributes:
        manifest: Its manifest as saved (its inputs only); kept in memory even if the file
            could not be written.
        saved: Where its manifest was saved (None: it could not be written).
        done: Inputs finished without error.
        skipped: Inputs already done by an earlier run.
        failed: Inputs that failed.
        unfinished: Inputs not finished (interrupted).
        images: Inputs processed, for the rate.
        interrupted: Whether it was interrupted.
        code: Its own exit code.
    """

    manifest: Manifest
    saved: Path | None
    done: int
    skipped: int
    failed: int
    unfinished: int
    images: int
    interrupted: bool
    code: int


def _summary(
    label: str,
    counts: tuple[int, int, int, int],
    elapsed: float,
    manifest: Path | None,
    where: str = "",
) -> str:
    """``counts``: inputs done, skipped, failed and processed (for the rate)."""
    done, skipped, failed, images = counts
    rate = f" ({format_rate(images, elapsed)})" if images else ""
    return (
        f"{label}: {done} done, {skipped} skipped (already done), {failed} failed in "
        f"{format_duration(elapsed)}{rate}{where}; manifest: {manifest or 'not written'}"
    )


def _interrupted_note(label: str, unfinished: int) -> str:
    return (
        f"\n{label}: interrupted: {unfinished} inputs not finished; rerun the same command to "
        "resume"
    )


def _idle(results: list[RankResult]) -> str:
    """The device's idle fraction for the summary (the ranks' mean), when it was measured."""
    idle = [r.manifest.run.totals.device_idle for r in results if r.manifest.run.totals]
    if not idle or None in idle or not sum(r.images for r in results):
        return ""
    return f", device idle {sum(i or 0.0 for i in idle) / len(idle):.0%}"


def _execute(arguments: argparse.Namespace, setup: _Setup, world: Group, started: float) -> int:
    """Do this process's share of the plan, save its manifest and conclude; the exit code."""
    if world.ranks.is_main:
        _report_plan(setup.plan)
        _start(setup, world)
    world.barrier()  # no rank writes its manifest before the earlier ones are removed
    share = _share(setup, world)
    progress = Progress(
        len(share.jobs), enabled=not arguments.quiet and world.ranks.is_main, label=share.label
    )
    recorder = RunRecorder(
        setup.out,
        share.run,
        share.entries,
        share.jobs,
        share.skipped,
        setup.ready.class_names,
        progress,
        manifest_name=world.manifest_name,
        prefix=f"[rank {world.ranks.rank}] " if world.shared else "",
    )
    interrupted = _process(arguments, setup, share.jobs, recorder, progress)
    saved = _save(recorder, share.label)
    failed, unfinished = len(recorder.failed), len(recorder.unfinished)
    code = EXIT_INTERRUPTED if interrupted else EXIT_FAILED if failed or saved is None else EXIT_OK
    result = RankResult(
        recorder.snapshot(),
        saved,
        len(share.jobs) - unfinished - failed,
        len(share.skipped),
        failed,
        unfinished,
        progress.done,
        interrupted,
        code,
    )
    if world.shared:  # alone, this process's summary is the run's
        summary = _summary(
            share.label,
            (result.done, result.skipped, failed, result.images),
            time.monotonic() - started,
            saved,
            _idle([result]),
        )
        note = _interrupted_note(share.label, unfinished) if interrupted else ""
        say(summary, sys.stderr)
        if note:
            say(note, sys.stderr, lines=True)
    results = world.gather(result)
    if results is not None:
        code = _conclude(arguments, setup, world, results, time.monotonic() - started)
    world.barrier()  # torchrun stops every rank when one exits with an error: leave together
    return code


def _report_plan(plan: Plan) -> None:
    """What the user should know about the earlier results, and how many are skipped."""
    for note in plan.notes:
        say(f"{_LABEL}: note: {note}", sys.stderr)
    if plan.skipped:
        total = len(plan.skipped) + len(plan.jobs)
        say(
            f"{_LABEL}: resuming: {len(plan.skipped)} of {total} inputs already done, "
            "skipped (--overwrite redoes them)",
            sys.stderr,
        )


def _start(setup: _Setup, world: Group) -> None:
    """Rank 0, before any work: ``manifest.json`` with the plan's records, and the per-rank
    manifests of earlier runs removed (their records are in it now)."""
    size = world.ranks.world_size
    run = dataclasses.replace(setup.run, world_size=size if world.shared else None)
    plan = setup.plan
    recorder = RunRecorder(
        setup.out, run, plan.entries, plan.jobs, plan.skipped, None, Progress(0, enabled=False)
    )
    try:
        recorder.save()
        for earlier in rank_manifest_files(setup.out).values():
            earlier.unlink(missing_ok=True)
        remove_journals(setup.out)  # their records are in the manifest just saved
    except OSError as exc:
        say(f"{_LABEL}: warning: cannot write the manifest: {exc}", sys.stderr)


def _process(
    arguments: argparse.Namespace,
    setup: _Setup,
    jobs: list[Job],
    recorder: RunRecorder,
    progress: Progress,
) -> bool:
    """Run the jobs through the pipeline; returns whether it was interrupted."""
    output = OutputSpec(setup.out, arguments.format, arguments.save_raw, setup.overlay)
    pipeline = Pipeline(_compute(arguments, setup), output, recorder, workers=arguments.workers)
    try:
        with image_pixel_limit(arguments.max_image_pixels or None):
            try:
                pipeline.run(jobs)
            finally:
                if pipeline.device_seconds > 0:
                    recorder.device_time(pipeline.device_seconds, pipeline.device_idle)
    except KeyboardInterrupt:
        progress.close()
        return True
    except BaseException:
        progress.close()
        with contextlib.suppress(OSError):
            recorder.save()  # keep what is done, then report the bug
        raise
    progress.close()
    return False


def _compute(arguments: argparse.Namespace, setup: _Setup) -> Compute:
    """How the pipeline explains batches."""
    ready = setup.ready
    batch = arguments.batch_size or (BATCH_GPU if ready.device.type == "cuda" else BATCH_CPU)
    return Compute(
        model=ready.model,
        model_input=ready.model_input,
        device=ready.device,
        methods={name: chosen.options for name, chosen in setup.methods.items()},
        target=setup.target,
        precision=arguments.precision,
        chunk_size=arguments.batch_size,
        images_per_batch=batch,
        compile=arguments.compile,
        memory_budget=arguments.memory_budget,
        channels_last=arguments.channels_last,
    )


def _save(recorder: RunRecorder, label: str) -> Path | None:
    """Save the manifest at the end; None (reported) if it cannot be written."""
    try:
        return recorder.save(final=True)
    except OSError as exc:
        say(f"{label}: error: cannot write the manifest: {exc}", sys.stderr)
        return None


def _conclude(
    arguments: argparse.Namespace,
    setup: _Setup,
    world: Group,
    results: list[RankResult],
    elapsed: float,
) -> int:
    """Rank 0: the run's ``manifest.json`` (several ranks: merged from their records), the
    summary and the gallery; the run's exit code."""
    interrupted = any(result.interrupted for result in results)
    if world.shared:
        plan = setup.plan
        current = {job.relpath for job in plan.jobs} | set(plan.skipped)
        kept = {path: entry for path, entry in plan.entries.items() if path not in current}
        try:
            path: Path | None = write_manifest(
                setup.out, merge(setup.run, kept, [result.manifest for result in results])
            )
        except OSError as exc:
            say(f"{_LABEL}: error: cannot write the manifest: {exc}", sys.stderr)
            return EXIT_INTERRUPTED if interrupted else EXIT_FAILED
    else:
        path = results[0].saved
        if path is None:  # reported by _save
            return results[0].code
    counts = (
        sum(result.done for result in results),
        sum(result.skipped for result in results),
        sum(result.failed for result in results),
        sum(result.images for result in results),
    )
    where = f" by {len(results)} processes" if world.shared else ""
    summary = _summary(_LABEL, counts, elapsed, path, where + _idle(results))
    if interrupted:
        unfinished = sum(result.unfinished for result in results)
        say(summary, sys.stderr)
        say(_interrupted_note(_LABEL, unfinished), sys.stderr, lines=True)
        return EXIT_INTERRUPTED
    say(summary)
    if arguments.gallery and not _build_gallery(setup.out):
        return EXIT_FAILED
    return EXIT_FAILED if any(result.code != EXIT_OK for result in results) else EXIT_OK


def _build_gallery(out: Path) -> bool:
    """Build the run's gallery; report a failure without losing the finished run."""
    from saliency.gallery import GalleryError, build_gallery  # only runs that ask for it

    try:
        say(f"{_LABEL}: gallery: {build_gallery(out)}")
    except (GalleryError, OSError) as error:
        say(f"{_LABEL}: error: the gallery could not be built: {error}", sys.stderr)
        return False
    return True
