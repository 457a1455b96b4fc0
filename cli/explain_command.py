"""``saliency explain INPUT...``: saliency maps for image files, written as a run folder.

Writes ``OUT/<relpath>/<method>.<format>`` overlays at each image's own resolution and
``OUT/manifest.json`` (docs/manifest.md). The model sees the whole image, resized to its square
input size (see :mod:`saliency.cli.model_input`). Runs resume by default; exit codes: 0 every
input done, 1 some inputs failed (the others were processed), 2 a usage or set-up error found
before any work, 130 interrupted (what was done is kept; rerun to resume).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from pathlib import Path
from typing import Any, get_args

import torch

from saliency.cli import method_options
from saliency.cli.inputs import InputError, discover
from saliency.cli.manifest import ManifestError, read_manifest
from saliency.cli.model_input import DEFAULT_SIZE
from saliency.cli.model_setup import (
    ReadyModel,
    check_layers,
    load_ready_model,
    parse_target,
    resolve_device,
)
from saliency.cli.outputs import FORMATS, OutputSpec
from saliency.cli.pipeline import Compute, Pipeline
from saliency.cli.plan import Plan, ResumeConflict, make_plan
from saliency.cli.progress import Progress, format_duration
from saliency.cli.recording import RunRecorder, now_iso
from saliency.cli.settings import (
    DEFAULT_METHODS,
    ChosenMethod,
    UsageError,
    check_format,
    choose_methods,
    image_pixel_limit,
    method_names,
    prepare_out,
    render_options,
)
from saliency.engine import PRECISIONS
from saliency.explanation import versions
from saliency.methods.registry import list_methods
from saliency.rendering import Sign

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
_BATCH_CPU, _BATCH_GPU = 16, 32
_DEFAULT_MAX_PIXELS = 89_478_485  # Pillow's own default decompression-bomb limit

DESCRIPTION = """\
Explain a model's predictions on image files. For every input image, writes
OUT/<relpath>/<method>.<format>: an overlay of the saliency map on the image, at the
image's own resolution (<relpath> is the image's path relative to the folder argument it
was found in, extension kept; a file argument: its name; inputs that would collide get a
~2, ~3... suffix). OUT/manifest.json lists every input with its status, prediction,
top-5, target and outputs, and the run's settings (see docs/manifest.md).

The model sees the WHOLE image: it is resized to the model's square input size (its
preprocessing crop size, e.g. 224; --input-size to change) ignoring the aspect ratio,
never centre-cropped, so the map covers the whole image; the map is then upsampled
bilinearly onto the original image.
"""

EPILOG = """\
Folders: files with an extension Pillow decodes; subfolders with --recursive (symbolic
links to folders are followed, loops are not); hidden names (.*) and OUT itself are
skipped. Files named directly are always tried.

Resume: a rerun skips the (image, method) pairs whose outputs and manifest entries are
complete and says how many it skipped; --overwrite redoes them. Results made with another
model, weights, target, precision or method options are never mixed silently: such a rerun
stops with exit code 2 unless --overwrite. Ctrl-C stops cleanly: finished outputs and the
manifest are kept, and the rerun resumes. Every file is written to a temporary name and
renamed; nothing is written outside OUT.

Exit codes: 0 every input done; 1 some inputs failed (each has its error in the manifest)
and every other input was processed; 2 usage or set-up error (unknown method, model,
option or layer, unusable --out...), found before any work; 130 interrupted.

Registered methods: {methods}.
Offline: the default model needs its torchvision weights in the torch cache; else pass
--weights FILE (a state dict), --weights none (random), or a demo model (--model demo:shapes).
"""


def add_parser(commands: Any) -> None:
    """Add the ``explain`` command to the CLI's sub-parsers."""
    registered = list_methods()
    parser = commands.add_parser(
        "explain",
        help="saliency maps for image files (a resumable run folder with a manifest)",
        description=DESCRIPTION,
        epilog=EPILOG.format(methods=", ".join(registered)),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files and/or folders")
    model = parser.add_argument_group("model")
    model.add_argument(
        "--model",
        default="resnet50",
        metavar="NAME|PATH",
        help="torchvision model name, TorchScript file, or PREFIX:NAME source such as "
        "demo:shapes (default: resnet50)",
    )
    model.add_argument(
        "--weights",
        default="DEFAULT",
        metavar="NAME|PATH",
        help="torchvision weights name (default: DEFAULT), a local state-dict file, or 'none' "
        "for random weights",
    )
    model.add_argument(
        "--device", default="auto", help="auto (default: CUDA if available), cpu, cuda, cuda:N"
    )
    model.add_argument("--precision", choices=PRECISIONS, default="fp32", help="default: fp32")
    model.add_argument(
        "--input-size",
        type=_positive_int,
        metavar="N",
        help="square side the whole image is resized to for the model (default: the model's "
        f"crop size, else {DEFAULT_SIZE})",
    )
    explaining = parser.add_argument_group("explaining")
    explaining.add_argument(
        "--method",
        action="append",
        metavar="NAME",
        help=f"repeatable and/or comma-separated; one of: {', '.join(registered)}; or all "
        f"(default: {','.join(n for n in DEFAULT_METHODS if n in registered)})",
    )
    explaining.add_argument(
        "--target",
        default="predicted",
        metavar="predicted|INT|LABEL",
        help="class to explain: each image's top class (default), a class index or a class name",
    )
    explaining.add_argument(
        "--batch-size",
        type=_positive_int,
        metavar="N",
        help=f"at most N images per forward/backward pass, and N images explained together "
        f"(default: automatic: {_BATCH_CPU} images per batch on CPU, {_BATCH_GPU} on GPU, "
        "passes sized by the engine)",
    )
    output = parser.add_argument_group("output")
    output.add_argument(
        "--out", default="saliency-out", metavar="DIR", help="default: ./saliency-out"
    )
    output.add_argument(
        "--format", choices=FORMATS, default="png", help="overlay format (default: png)"
    )
    output.add_argument(
        "--save-raw",
        action="store_true",
        help="also write <method>.npy: raw float32 attributions at the model's input size",
    )
    output.add_argument(
        "--overwrite", action="store_true", help="redo finished outputs (default: resume)"
    )
    output.add_argument(
        "--overlay-alpha",
        type=float,
        default=0.5,
        metavar="A",
        help="heatmap weight, 0..1 (default 0.5)",
    )
    output.add_argument("--overlay-cmap", metavar="NAME", help="matplotlib colormap")
    output.add_argument(
        "--overlay-sign",
        choices=_choices(Sign),
        help="which attributions to show (default: absolute values)",
    )
    running = parser.add_argument_group("running")
    running.add_argument("-r", "--recursive", action="store_true", help="search subfolders")
    running.add_argument(
        "--max-image-pixels",
        type=_non_negative_int,
        default=_DEFAULT_MAX_PIXELS,
        metavar="N",
        help="refuse larger images as decompression bombs (default: Pillow's "
        f"{_DEFAULT_MAX_PIXELS:,}; 0: no limit)",
    )
    running.add_argument(
        "--workers",
        type=_positive_int,
        default=min(4, os.cpu_count() or 1),
        metavar="N",
        help="decoding threads, and as many writing threads (default: up to 4)",
    )
    running.add_argument(
        "--threads",
        type=_threads,
        default="auto",
        metavar="N|auto",
        help="torch CPU threads; auto (default): torch's choice (one per core), but 1 when the "
        "load average already reaches the number of cores, where torch's thread team would "
        "stall waiting for busy cores",
    )
    running.add_argument(
        "-q", "--quiet", action="store_true", help="no progress, only errors and the summary"
    )
    running.add_argument(
        "--gallery",
        action="store_true",
        help="build the HTML gallery (OUT/index.html) at the end of the run, as `saliency gallery`",
    )
    reserved = {
        text.lstrip("-").replace("-", "_")
        for action in parser._actions
        for text in action.option_strings
    } | {"batch_size", "create_graph", "precision", "target", "images"}
    generated = method_options.registry_options(reserved)
    method_options.add_arguments(
        parser.add_argument_group(
            "method options",
            "From the registered methods' options. Each goes only to the methods that have it\n"
            "(and to a wrapper such as smoothgrad when its --base method has it); unset, each\n"
            "method uses its own default. 'none' sets an optional value to None.",
        ),
        generated,
    )
    parser.set_defaults(run=run, generated_options=generated)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text}: accepted: an integer >= 1")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text}: accepted: an integer >= 0")
    return value


def _threads(text: str) -> int | str:
    return text if text == "auto" else _positive_int(text)


def _torch_threads(choice: int | str) -> int:
    """The torch CPU thread count for ``--threads`` (see its help)."""
    if isinstance(choice, int):
        return choice
    cores = os.cpu_count() or 1
    busy = hasattr(os, "getloadavg") and os.getloadavg()[0] >= cores
    return 1 if busy else torch.get_num_threads()


def _choices(literal: Any) -> list[str]:
    return list(get_args(literal))


def run(arguments: argparse.Namespace) -> int:
    """Run the command; returns the exit code."""
    threads = torch.get_num_threads()
    try:
        return _run(arguments)
    except UsageError as exc:
        print(f"saliency explain: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:  # during set-up: nothing was written yet
        print("saliency explain: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        torch.set_num_threads(threads)  # --threads: only for this run (matters in process)


def _run(arguments: argparse.Namespace) -> int:
    started, started_at = time.monotonic(), now_iso()
    names = method_names(arguments.method)
    given = method_options.given_options(arguments, arguments.generated_options)
    methods = choose_methods(names, given)
    check_format(arguments.format)
    overlay = render_options(
        arguments.overlay_alpha, arguments.overlay_cmap, arguments.overlay_sign
    )
    existed = os.path.lexists(arguments.out)
    out = prepare_out(arguments.out)
    try:
        return _prepare_and_execute(arguments, out, methods, overlay, started, started_at)
    except UsageError:
        if not existed and not any(out.iterdir()):
            out.rmdir()  # a usage error leaves nothing behind
        raise


def _prepare_and_execute(
    arguments: argparse.Namespace,
    out: Path,
    methods: dict[str, ChosenMethod],
    overlay: dict[str, Any],
    started: float,
    started_at: str,
) -> int:
    try:
        found = discover(arguments.inputs, arguments.recursive, exclude=out)
    except InputError as exc:
        raise UsageError(str(exc)) from None
    for note in found.notes:
        print(f"saliency explain: note: {note}", file=sys.stderr)
    if not found.inputs:
        raise UsageError(
            f"no image files found in {', '.join(arguments.inputs)} (extensions Pillow decodes"
            f"{'' if arguments.recursive else '; pass --recursive to search subfolders'})"
        )
    ready = _load_model(arguments, methods)
    target = parse_target(arguments.target, ready)
    run_section = _run_section(arguments, ready, methods, target, started_at)
    try:
        previous = read_manifest(out)
    except ManifestError as exc:
        print(f"saliency explain: warning: {exc}; starting a new manifest", file=sys.stderr)
        previous = None
    try:
        plan = make_plan(
            previous,
            found.inputs,
            run_section,
            out=out,
            extension=arguments.format,
            save_raw=arguments.save_raw,
            overwrite=arguments.overwrite,
            output_names=list_methods(),
        )
    except ResumeConflict as exc:
        raise UsageError(str(exc)) from None
    run_section["methods"], run_section["method_options"] = plan.methods, plan.method_options
    return _execute(arguments, ready, methods, target, run_section, plan, out, overlay, started)


def _load_model(arguments: argparse.Namespace, methods: dict[str, ChosenMethod]) -> ReadyModel:
    torch.set_num_threads(_torch_threads(arguments.threads))
    device = resolve_device(arguments.device)
    weights = None if arguments.weights.lower() == "none" else arguments.weights
    ready = load_ready_model(arguments.model, weights, device, arguments.input_size)
    check_layers(ready, {name: chosen.instance for name, chosen in methods.items()})
    return ready


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
        "target": "predicted" if target is None else target,
        "device": str(ready.device),
        "precision": arguments.precision,
        "batch_size": arguments.batch_size,
        "format": arguments.format,
        "class_names": ready.class_names is not None,
        "versions": versions(),
        "started": started_at,
    }


def _execute(
    arguments: argparse.Namespace,
    ready: ReadyModel,
    methods: dict[str, ChosenMethod],
    target: int | None,
    run_section: dict[str, Any],
    plan: Plan,
    out: Path,
    overlay: dict[str, Any],
    started: float,
) -> int:
    for note in plan.notes:
        print(f"saliency explain: note: {note}", file=sys.stderr)
    if plan.skipped:
        total = len(plan.skipped) + len(plan.jobs)
        print(
            f"saliency explain: resuming: {len(plan.skipped)} of {total} inputs already done, "
            "skipped (--overwrite redoes them)",
            file=sys.stderr,
        )
    progress = Progress(len(plan.jobs), enabled=not arguments.quiet)
    recorder = RunRecorder(
        out, run_section, plan.entries, plan.jobs, plan.skipped, ready.class_names, progress
    )
    batch = arguments.batch_size or (_BATCH_GPU if ready.device.type == "cuda" else _BATCH_CPU)
    compute = Compute(
        model=ready.model,
        model_input=ready.model_input,
        device=ready.device,
        methods={name: chosen.options for name, chosen in methods.items()},
        target=target,
        precision=arguments.precision,
        chunk_size=arguments.batch_size,
        images_per_batch=batch,
    )
    output = OutputSpec(out, arguments.format, arguments.save_raw, overlay)
    pipeline = Pipeline(compute, output, recorder, workers=arguments.workers)
    interrupted = False
    try:
        with image_pixel_limit(arguments.max_image_pixels or None):
            pipeline.run(plan.jobs)
    except KeyboardInterrupt:
        interrupted = True
    except BaseException:
        progress.close()
        with contextlib.suppress(OSError):
            recorder.save()  # keep what is done, then report the bug
        raise
    progress.close()
    try:
        manifest = recorder.save()
    except OSError as exc:
        print(f"saliency explain: error: cannot write the manifest: {exc}", file=sys.stderr)
        return EXIT_INTERRUPTED if interrupted else EXIT_FAILED
    elapsed = time.monotonic() - started
    done = len(plan.jobs) - len(recorder.unfinished) - len(recorder.failed)
    rate = f" ({progress.done / elapsed:.1f} images/s)" if progress.done else ""
    summary = (
        f"saliency explain: {done} done, {len(plan.skipped)} skipped (already done), "
        f"{len(recorder.failed)} failed in {format_duration(elapsed)}{rate}; manifest: {manifest}"
    )
    if interrupted:
        print(
            f"{summary}\nsaliency explain: interrupted: {len(recorder.unfinished)} inputs not "
            "finished; rerun the same command to resume",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    print(summary)
    if arguments.gallery and not _build_gallery(out):
        return EXIT_FAILED
    return EXIT_FAILED if recorder.failed else EXIT_OK


def _build_gallery(out: Path) -> bool:
    """Build the run's gallery; report a failure without losing the finished run."""
    from saliency.gallery import GalleryError, build_gallery  # only runs that ask for it

    try:
        print(f"saliency explain: gallery: {build_gallery(out)}")
    except (GalleryError, OSError) as error:
        print(f"saliency explain: error: the gallery could not be built: {error}", file=sys.stderr)
        return False
    return True
