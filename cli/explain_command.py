"""``saliency explain INPUT...``: saliency maps for image files, written as a run folder.

Writes ``OUT/<relpath>/<method>.<format>`` overlays at each image's own resolution and
``OUT/manifest.json`` (docs/manifest.md). The model sees the whole image, resized to its square
input size (see :mod:`saliency.cli.model_input`). Runs resume by default; exit codes: 0 every
input done, 1 some inputs failed (the others were processed), 2 a usage or set-up error found
before any work, 130 interrupted (what was done is kept; rerun to resume).

Under ``torchrun`` (``WORLD_SIZE`` > 1) every process plans the whole run, does its share of the
inputs and records it in ``OUT/manifest.rank-R.json``; rank 0 then merges the shares into
``OUT/manifest.json`` (see :mod:`saliency.cli.distributed` and
:mod:`saliency.cli.distributed_manifest`).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from saliency.cli import distributed, method_options
from saliency.cli.distributed_manifest import (
    RankResult,
    merge,
    rank_manifest_name,
    read_earlier,
    write_start,
)
from saliency.cli.explain_arguments import BATCH_CPU, BATCH_GPU, DESCRIPTION, EPILOG, add_arguments
from saliency.cli.inputs import FoundInput, InputError, discover
from saliency.cli.manifest import MANIFEST_NAME, InputRecord, write_manifest
from saliency.cli.model_setup import (
    ReadyModel,
    check_layers,
    load_ready_model,
    parse_target,
    resolve_device,
)
from saliency.cli.outputs import OutputSpec
from saliency.cli.pipeline import Compute, Pipeline
from saliency.cli.plan import Job, Plan, ResumeConflict, make_plan
from saliency.cli.progress import Progress, format_duration
from saliency.cli.recording import RunRecorder, now_iso
from saliency.cli.settings import (
    ChosenMethod,
    UsageError,
    check_format,
    choose_methods,
    image_pixel_limit,
    method_names,
    prepare_out,
    render_options,
)
from saliency.explanation import versions
from saliency.methods.registry import get_method, list_methods

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
_LABEL = "saliency explain"


def add_parser(commands: Any) -> None:
    """Add the ``explain`` command to the CLI's sub-parsers."""
    parser = commands.add_parser(
        "explain",
        help="saliency maps for image files (a resumable run folder with a manifest)",
        description=DESCRIPTION,
        epilog=EPILOG.format(methods=", ".join(list_methods())),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    generated = add_arguments(parser)
    parser.set_defaults(run=run, generated_options=generated)


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
    ranks: distributed.Ranks | None = None
    try:
        ranks = distributed.detect()
        if ranks is None:
            return _run(arguments, None)
        with distributed.process_group(ranks, arguments.device) as group:
            return _run(arguments, group)
    except UsageError as exc:
        if ranks is None or ranks.is_main:  # every rank has the same (agreed) error
            print(f"{_LABEL}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:  # during set-up: nothing was written yet
        print(f"{_LABEL}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        torch.set_num_threads(threads)  # --threads: only for this run (matters in process)


@dataclass
class _Setup:
    """Everything a run needs, checked before any work (the same on every rank)."""

    out: Path
    methods: dict[str, ChosenMethod]
    overlay: dict[str, Any]
    ready: ReadyModel
    target: int | None
    run_section: dict[str, Any]
    plan: Plan


def _run(arguments: argparse.Namespace, group: distributed.Group | None) -> int:
    """Set up (every rank agreeing that it could, under torchrun), then do the work."""
    started, started_at = time.monotonic(), now_iso()
    existed = os.path.lexists(arguments.out)
    if group is not None:
        group.barrier()  # every rank has looked before one creates the folder
    setup, error = _attempt_set_up(arguments, group, started_at)
    if group is not None:
        error, started_at = distributed.agree(group, error, started_at)
    if error is not None or setup is None:
        if not existed and (group is None or group.ranks.is_main):
            _remove_if_empty(Path(arguments.out))  # a usage error leaves nothing behind
        raise UsageError(error)
    setup.run_section["started"] = started_at  # rank 0's, on every rank
    return _execute(arguments, setup, group, started)


def _remove_if_empty(out: Path) -> None:
    """Remove the output folder if it exists and is empty."""
    with contextlib.suppress(OSError):
        if not any(out.iterdir()):
            out.rmdir()


def _attempt_set_up(
    arguments: argparse.Namespace, group: distributed.Group | None, started_at: str
) -> tuple[_Setup | None, str | None]:
    """The set-up, or the usage error that stopped it."""
    try:
        return _set_up(arguments, group, started_at), None
    except UsageError as exc:
        return None, str(exc)


def _set_up(
    arguments: argparse.Namespace, group: distributed.Group | None, started_at: str
) -> _Setup:
    """Check every choice, load the model and plan the run (whole, on every rank).

    Raises:
        UsageError: Anything that stops the run before any work.
    """
    main = group is None or group.ranks.is_main
    names = method_names(arguments.method)
    given = method_options.given_options(arguments, arguments.generated_options)
    methods = choose_methods(names, given)
    check_format(arguments.format)
    overlay = render_options(
        arguments.overlay_alpha, arguments.overlay_cmap, arguments.overlay_sign
    )
    out = prepare_out(arguments.out)
    found = _discover(arguments, out, main)
    ready = _load_model(arguments, group)
    methods = _applicable(methods, ready, arguments.method, main)
    ready = replace(
        ready, layers=check_layers(ready, {n: c.instance for n, c in methods.items()})
    )
    target = parse_target(arguments.target, ready)
    run_section = _run_section(arguments, ready, methods, target, started_at)
    plan = _plan(arguments, out, found, run_section, main)
    run_section["methods"], run_section["method_options"] = plan.methods, plan.method_options
    return _Setup(out, methods, overlay, ready, target, run_section, plan)


def _discover(arguments: argparse.Namespace, out: Path, main: bool) -> list[FoundInput]:
    """The input files, in the order every rank sees them (notes: printed by ``main``)."""
    try:
        found = discover(arguments.inputs, arguments.recursive, exclude=out)
    except InputError as exc:
        raise UsageError(str(exc)) from None
    for note in found.notes if main else []:
        print(f"{_LABEL}: note: {note}", file=sys.stderr)
    if not found.inputs:
        raise UsageError(
            f"no image files found in {', '.join(arguments.inputs)} (extensions Pillow decodes"
            f"{'' if arguments.recursive else '; pass --recursive to search subfolders'})"
        )
    return found.inputs


def _plan(
    arguments: argparse.Namespace,
    out: Path,
    found: list[FoundInput],
    run_section: dict[str, Any],
    main: bool,
) -> Plan:
    """The whole run's plan, from what earlier runs left in ``out``."""
    earlier = read_earlier(out)
    for warning in earlier.warnings if main else []:
        print(f"{_LABEL}: warning: {warning}", file=sys.stderr)
    try:
        return make_plan(
            earlier.manifest,
            found,
            run_section,
            out=out,
            extension=arguments.format,
            save_raw=arguments.save_raw,
            overwrite=arguments.overwrite,
            output_names=list_methods(),
        )
    except ResumeConflict as exc:
        raise UsageError(str(exc)) from None


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
        print(
            f"{_LABEL}: note: --method all skips {', '.join(skipped)}: they do not apply to this "
            "model (attention methods need a vision transformer)",
            file=sys.stderr,
        )
    return kept


def _load_model(arguments: argparse.Namespace, group: distributed.Group | None) -> ReadyModel:
    """The checked model, on this process's device."""
    torch.set_num_threads(_torch_threads(arguments.threads))
    if group is None:
        device = resolve_device(arguments.device)
    else:
        device = distributed.rank_device(arguments.device, group.ranks)
    weights = None if arguments.weights.lower() == "none" else arguments.weights
    return load_ready_model(arguments.model, weights, device, arguments.input_size)


def _run_section(
    arguments: argparse.Namespace,
    ready: ReadyModel,
    methods: dict[str, ChosenMethod],
    target: int | None,
    started_at: str,
) -> dict[str, Any]:
    """The manifest's ``run`` object (``finished`` and ``totals`` are added at each save)."""
    return {
        "model": ready.name,
        "weights": ready.weights,
        "methods": list(methods),
        "method_options": {name: chosen.recorded for name, chosen in methods.items()},
        "layers": ready.layers,
        "target": "predicted" if target is None else target,
        "device": str(ready.device),
        "precision": arguments.precision,
        "compile": arguments.compile,
        "batch_size": arguments.batch_size,
        "memory_budget": arguments.memory_budget,
        "format": arguments.format,
        "class_names": ready.class_names is not None,
        "versions": versions(),
        "started": started_at,
    }


@dataclass
class _Share:
    """What this process does: the whole plan, or its rank's share under torchrun.

    Attributes:
        jobs: Its inputs with work left, in order.
        skipped: Its inputs already done.
        entries: The records its manifest starts from.
        run: Its manifest's run section.
        manifest_name: Its manifest's file name.
        label: What its messages start with.
    """

    jobs: list[Job]
    skipped: list[str]
    entries: dict[str, InputRecord]
    run: dict[str, Any]
    manifest_name: str
    label: str


def _share(setup: _Setup, group: distributed.Group | None) -> _Share:
    """This process's share (see :func:`saliency.cli.distributed.shard`)."""
    plan = setup.plan
    if group is None:
        return _Share(
            plan.jobs, plan.skipped, plan.entries, setup.run_section, MANIFEST_NAME, _LABEL
        )
    rank, size = group.ranks.rank, group.ranks.world_size
    jobs = distributed.shard(plan.jobs, rank, size)
    skipped = distributed.shard(plan.skipped, rank, size)
    entries = {path: plan.entries[path] for path in [job.relpath for job in jobs] + skipped}
    run = {**setup.run_section, "rank": rank, "world_size": size}
    return _Share(jobs, skipped, entries, run, rank_manifest_name(rank), f"{_LABEL} [rank {rank}]")


@dataclass
class _Ran:
    """How this process's share went."""

    share: _Share
    recorder: RunRecorder
    progress: Progress
    interrupted: bool
    saved: Path | None
    elapsed: float

    @property
    def failed(self) -> int:
        """Inputs that failed."""
        return len(self.recorder.failed)

    @property
    def unfinished(self) -> int:
        """Inputs not finished (interrupted)."""
        return len(self.recorder.unfinished)

    @property
    def done(self) -> int:
        """Inputs finished without error."""
        return len(self.share.jobs) - self.unfinished - self.failed

    def code(self) -> int:
        """The exit code of this share (before any gallery)."""
        if self.interrupted:
            return EXIT_INTERRUPTED
        return EXIT_FAILED if self.failed or self.saved is None else EXIT_OK

    def summary(self) -> str:
        """The summary line (and what to do after an interruption)."""
        idle = self.recorder.device_idle
        text = _summary(
            self.share.label,
            (self.done, len(self.share.skipped), self.failed, self.progress.done),
            self.elapsed,
            self.saved,
            f", device idle {idle:.0%}" if idle is not None and self.progress.done else "",
        )
        note = _interrupted_note(self.share.label, self.unfinished) if self.interrupted else ""
        return text + note

    def result(self) -> RankResult:
        """What rank 0 needs of this share."""
        return RankResult(
            self.recorder.snapshot(),
            self.done,
            len(self.share.skipped),
            self.failed,
            self.unfinished,
            self.progress.done,
            self.interrupted,
            self.code(),
        )


def _summary(
    label: str,
    counts: tuple[int, int, int, int],
    elapsed: float,
    manifest: Path | None,
    where: str = "",
) -> str:
    """``counts``: inputs done, skipped, failed and processed (for the rate)."""
    done, skipped, failed, images = counts
    rate = f" ({images / elapsed:.1f} images/s)" if images else ""
    return (
        f"{label}: {done} done, {skipped} skipped (already done), {failed} failed in "
        f"{format_duration(elapsed)}{rate}{where}; manifest: {manifest or 'not written'}"
    )


def _interrupted_note(label: str, unfinished: int) -> str:
    return (
        f"\n{label}: interrupted: {unfinished} inputs not finished; rerun the same command to "
        "resume"
    )


def _execute(
    arguments: argparse.Namespace,
    setup: _Setup,
    group: distributed.Group | None,
    started: float,
) -> int:
    """Do this process's share of the plan, save its manifest and conclude; the exit code."""
    main = group is None or group.ranks.is_main
    if main:
        _report_plan(setup.plan)
    if group is not None:
        _start_ranks(setup, group)
    share = _share(setup, group)
    progress = Progress(len(share.jobs), enabled=not arguments.quiet and main, label=share.label)
    recorder = RunRecorder(
        setup.out,
        share.run,
        share.entries,
        share.jobs,
        share.skipped,
        setup.ready.class_names,
        progress,
        manifest_name=share.manifest_name,
        prefix="" if group is None else f"[rank {group.ranks.rank}] ",
    )
    interrupted = _process(arguments, setup, share.jobs, recorder, progress)
    saved = _save(recorder, share.label)
    ran = _Ran(share, recorder, progress, interrupted, saved, time.monotonic() - started)
    if group is None:
        return _conclude(arguments, setup.out, ran)
    return _conclude_rank(arguments, setup, group, ran, started)


def _report_plan(plan: Plan) -> None:
    """What the user should know about the earlier results, and how many are skipped."""
    for note in plan.notes:
        print(f"{_LABEL}: note: {note}", file=sys.stderr)
    if plan.skipped:
        total = len(plan.skipped) + len(plan.jobs)
        print(
            f"{_LABEL}: resuming: {len(plan.skipped)} of {total} inputs already done, "
            "skipped (--overwrite redoes them)",
            file=sys.stderr,
        )


def _start_ranks(setup: _Setup, group: distributed.Group) -> None:
    """Rank 0 writes the run's first ``manifest.json``; then every rank may start."""
    if group.ranks.is_main:
        run = {**setup.run_section, "world_size": group.ranks.world_size}
        try:
            write_start(setup.out, run, setup.plan, setup.ready.class_names)
        except OSError as exc:
            print(f"{_LABEL}: warning: cannot write the manifest: {exc}", file=sys.stderr)
    group.barrier()  # no rank writes its manifest before the earlier ones are removed


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
    )


def _save(recorder: RunRecorder, label: str) -> Path | None:
    """Save the manifest at the end; None (reported) if it cannot be written."""
    try:
        return recorder.save()
    except OSError as exc:
        print(f"{label}: error: cannot write the manifest: {exc}", file=sys.stderr)
        return None


def _conclude(arguments: argparse.Namespace, out: Path, ran: _Ran) -> int:
    """Report a single-process run and build its gallery; returns the exit code."""
    if ran.saved is None:
        return ran.code()
    if ran.interrupted:
        print(ran.summary(), file=sys.stderr)
        return EXIT_INTERRUPTED
    print(ran.summary())
    if arguments.gallery and not _build_gallery(out):
        return EXIT_FAILED
    return ran.code()


def _conclude_rank(
    arguments: argparse.Namespace,
    setup: _Setup,
    group: distributed.Group,
    ran: _Ran,
    started: float,
) -> int:
    """Report this rank, send its records to rank 0, which merges them; leave together."""
    print(ran.summary(), file=sys.stderr)
    results = group.gather(ran.result())
    code = ran.code()
    if results is not None:
        code = _conclude_main(arguments, setup, results, time.monotonic() - started)
    group.barrier()  # torchrun stops every rank when one exits with an error: leave together
    return code


def _conclude_main(
    arguments: argparse.Namespace, setup: _Setup, results: list[RankResult], elapsed: float
) -> int:
    """Rank 0: write the merged ``manifest.json``, report, build the gallery; the exit code."""
    plan = setup.plan
    current = {job.relpath for job in plan.jobs} | set(plan.skipped)
    kept = {path: entry for path, entry in plan.entries.items() if path not in current}
    interrupted = any(result.interrupted for result in results)
    try:
        path = write_manifest(setup.out, merge(setup.run_section, kept, results))
    except OSError as exc:
        print(f"{_LABEL}: error: cannot write the manifest: {exc}", file=sys.stderr)
        return EXIT_INTERRUPTED if interrupted else EXIT_FAILED
    counts = (
        sum(result.done for result in results),
        sum(result.skipped for result in results),
        sum(result.failed for result in results),
        sum(result.images for result in results),
    )
    summary = _summary(_LABEL, counts, elapsed, path, f" by {len(results)} processes")
    if interrupted:
        unfinished = sum(result.unfinished for result in results)
        print(summary + _interrupted_note(_LABEL, unfinished), file=sys.stderr)
        return EXIT_INTERRUPTED
    print(summary)
    if arguments.gallery and not _build_gallery(setup.out):
        return EXIT_FAILED
    return EXIT_FAILED if any(result.code != EXIT_OK for result in results) else EXIT_OK


def _build_gallery(out: Path) -> bool:
    """Build the run's gallery; report a failure without losing the finished run."""
    from saliency.gallery import GalleryError, build_gallery  # only runs that ask for it

    try:
        print(f"{_LABEL}: gallery: {build_gallery(out)}")
    except (GalleryError, OSError) as error:
        print(f"{_LABEL}: error: the gallery could not be built: {error}", file=sys.stderr)
        return False
    return True
