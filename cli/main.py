"""The ``saliency`` command line: ``explain``, ``gallery``, ``methods`` and ``demo``.

The top-level parser knows each command by its name and one line of help. A command's own
arguments and code are loaded only when that command runs: ``saliency --help`` and
``saliency methods --help`` import no torch, and ``saliency methods`` imports neither the
gallery, the demo, training nor metrics.
"""

from __future__ import annotations

import argparse
import difflib
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

import saliency
from saliency.cli.collection import start_collecting

ENTRY_POINT_GROUP = "saliency.methods"
"""The registry's entry-point group (``saliency.methods.registry.ENTRY_POINT_GROUP``, whose
module imports torch): the top-level help lists its names without loading any method."""

Run = Callable[[argparse.Namespace], int]


@dataclass(frozen=True)
class Command:
    """A command: its help line, and what adds its arguments (returning its ``run``)."""

    help: str
    add_arguments: Callable[[argparse.ArgumentParser], Run]


def build_parser(
    command: str | None = None, arguments: Sequence[str] | None = None
) -> argparse.ArgumentParser:
    """The argument parser; only ``command``'s own arguments are added (and loaded).

    ``arguments``: the command line it will parse, if known (its sub-parser's ``command_line``
    default: a command may add options only when the line needs them).
    """
    parser = argparse.ArgumentParser(
        prog="saliency",
        description="Gradient-based saliency maps for PyTorch image models.",
        epilog="Registered methods: " + ", ".join(registered_names()),
    )
    parser.add_argument("--version", action="version", version=f"saliency {saliency.__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, spec in COMMANDS.items():
        sub = commands.add_parser(name, help=spec.help)
        if name == command:
            if arguments is not None:
                sub.set_defaults(command_line=tuple(arguments))
            sub.set_defaults(run=spec.add_arguments(sub))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in arguments if not a.startswith("-")), None)
    parser = build_parser(command if command in COMMANDS else None, arguments)
    parsed, unknown = parser.parse_known_args(arguments)
    if unknown:
        # The command's own parser reports it, with its usage, not the top-level one.
        owner = _command_parser(parser, parsed.command) if parsed.command else parser
        owner.error(unrecognized(unknown, owner))
    if parsed.command is None:
        parser.print_help()
        return 0
    start_collecting()  # the command's modules are imported
    code: int = parsed.run(parsed)
    return code


def _command_parser(parser: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser:
    """The sub-parser of ``command``."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            found: argparse.ArgumentParser = action.choices[command]
            return found
    return parser


def unrecognized(arguments: Sequence[str], parser: argparse.ArgumentParser) -> str:
    """argparse's "unrecognized arguments" message, with the closest options of ``parser``
    suggested for each unknown option (``--stepz`` → ``did you mean --steps?``)."""
    options = [text for action in parser._actions for text in action.option_strings]
    hints = []
    for argument in arguments:
        if not argument.startswith("-"):
            continue
        name = argument.partition("=")[0]
        close = difflib.get_close_matches(name, options, n=3, cutoff=0.6)
        if close:
            hints.append(f"{name}: did you mean {' or '.join(close)}?")
    message = f"unrecognized arguments: {' '.join(arguments)}"
    return "; ".join([message, *hints])


def registered_names() -> list[str]:
    """The registered methods' names, read from the entry points without loading them."""
    return sorted({entry.name for entry in entry_points(group=ENTRY_POINT_GROUP)})


# ---- saliency methods ----------------------------------------------------------------------


def _methods_arguments(parser: argparse.ArgumentParser) -> Run:
    parser.description = (
        "List the registered methods with a one-line description and their options."
    )
    return _run_methods


def _run_methods(_arguments: argparse.Namespace) -> int:
    print(describe_methods())
    return 0


def describe_methods() -> str:
    """One block per registered method: name, summary, paper and options with defaults."""
    from saliency.method_info import describe_method
    from saliency.methods.registry import list_methods

    blocks = []
    for name in list_methods():
        info = describe_method(name)
        options = ", ".join(f"{option}={value}" for option, value in info.defaults.items())
        lines = [f"{name}  ({info.output} space)", f"    {info.summary}"]
        if info.paper:
            lines.append(f"    paper: {info.paper}")
        lines.append(f"    options: {options or 'none'}")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


# ---- saliency gallery ----------------------------------------------------------------------


def _gallery_arguments(parser: argparse.ArgumentParser) -> Run:
    parser.description = (
        "Build a static, self-contained HTML gallery (overview, detail views, method "
        "descriptions, metrics) from a run folder written by `saliency explain --out DIR`. "
        "Open the page from disk; it makes no network request."
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help="the run folder (holds manifest.json)")
    parser.add_argument(
        "--out",
        metavar="PATH",
        default=None,
        help="an .html file or a folder for index.html (default: RUN_DIR/index.html)",
    )
    parser.add_argument("--title", metavar="TEXT", default=None, help="the page title")
    parser.add_argument(
        "--single-file",
        action="store_true",
        help=(
            "inline the stylesheet, the script and every image (overlays at the display "
            "size): one HTML file to share"
        ),
    )
    return _run_gallery


def _run_gallery(arguments: argparse.Namespace) -> int:
    """Build the gallery; print the page's path. Exit code 0, or 2 for an unusable run folder."""
    from saliency.cli.progress import say
    from saliency.gallery import GalleryError, build_gallery

    started = time.perf_counter()
    try:
        page = build_gallery(
            arguments.run_dir,
            out=arguments.out,
            title=arguments.title,
            single_file=arguments.single_file,
        )
    except (GalleryError, OSError) as error:
        say(f"saliency gallery: error: {error}", sys.stderr)
        return 2
    say(f"{page}  ({time.perf_counter() - started:.1f} s)")
    return 0


# ---- saliency demo -------------------------------------------------------------------------


def _demo_arguments(parser: argparse.ArgumentParser) -> Run:
    from saliency.cli.explain_options import positive_int
    from saliency.demo import DemoSettings
    from saliency.demo.models import DEMO_MODELS
    from saliency.demo.runner import DEFAULT_METHODS
    from saliency.demo.scenes import TEST_SEED

    parser.description = (
        "The project's main job, offline: draws test scenes with exact object (and marker) "
        "masks, explains them with the default methods (or --method all) on each shipped demo "
        "model "
        f"({', '.join('demo:' + name for name in DEMO_MODELS)}), measures every metric "
        "(pointing game, relevance mass and rank, deletion/insertion AUC, ROAD, parameter "
        "randomisation, input invariance, random-logit, marker vs object mass, robustness, "
        "sparseness and complexity), each with its 95% interval over "
        "the scenes, for the methods and the controls baseline:centre, baseline:random and "
        "baseline:edges, and writes OUT/metrics.json, "
        "OUT/metrics.csv, the overlays and an HTML gallery OUT/index.html."
    )
    parser.add_argument(
        "--out", metavar="DIR", default="saliency-demo", help="run folder (default ./saliency-demo)"
    )
    parser.add_argument(
        "--scenes",
        "--images",
        dest="scenes",
        type=positive_int,
        default=DemoSettings.images,
        metavar="N",
        help=f"test scenes per model (default {DemoSettings.images}; e.g. 512 for the README's "
        "quality table)",
    )
    parser.add_argument(
        "--device", default="auto", help="auto (default: CUDA if available), cpu, cuda, cuda:N"
    )
    parser.add_argument(
        "--seed", type=int, default=TEST_SEED, help=f"seed of the scenes (default {TEST_SEED})"
    )
    parser.add_argument(
        "--model",
        action="append",
        metavar="NAME",
        help="a demo model, spelled as for explain (demo:shapes) or bare (shapes): one of "
        + ", ".join(sorted(DEMO_MODELS))
        + " (repeatable and/or comma-separated), or all; default: every installed one but "
        "shapes-vit",
    )
    parser.add_argument(
        "--method",
        action="append",
        metavar="NAME",
        help="a registered method, or all (repeatable and/or comma-separated, as for explain; "
        "default: " + ", ".join(DEFAULT_METHODS) + ")",
    )
    parser.add_argument("--no-gallery", action="store_true", help="skip the HTML gallery")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    return _run_demo


def _run_demo(arguments: argparse.Namespace) -> int:
    """Run the demo; print the metrics table and where everything went. Exit 0, or 2."""
    from saliency.cli import UsageError
    from saliency.cli.explain_options import method_names
    from saliency.cli.model import resolve_device
    from saliency.cli.names import demo_model_names
    from saliency.cli.progress import Progress, format_duration, say
    from saliency.demo import DemoSettings, run_demo
    from saliency.demo.models import DEMO_MODELS, default_demo_models, installed_demo_models
    from saliency.demo.runner import demo_methods
    from saliency.errors import SaliencyError

    try:
        # The same spellings as `saliency explain`, parsed by the same code.
        named = demo_model_names(arguments.model, DEMO_MODELS, installed_demo_models())
        chosen = method_names(arguments.method) if arguments.method else None
        settings = DemoSettings(
            images=arguments.scenes,
            seed=arguments.seed,
            device=resolve_device(arguments.device),
            models=tuple(named) if named else None,
            methods=tuple(chosen) if chosen else None,
            gallery=not arguments.no_gallery,
        )
    except (SaliencyError, UsageError) as error:
        say(f"saliency demo: error: {error}", sys.stderr)
        return 2
    models = settings.models or default_demo_models()
    methods = demo_methods(settings.methods)
    progress = Progress(
        len(models) * len(methods), enabled=not arguments.quiet, label="saliency demo", unit="steps"
    )
    try:
        result = run_demo(arguments.out, settings, on_step=lambda _: progress.advance())
    except (SaliencyError, OSError) as error:
        progress.close()
        say(f"saliency demo: error: {error}", sys.stderr)
        return 2
    progress.close()
    print(metrics_tables(result.rows))
    for finding in result.findings:
        print(f"\n{finding}")
    print(f"\nmetrics: {result.out / 'metrics.csv'}")
    if result.gallery is not None:
        print(f"gallery: {result.gallery}")
    print(f"done in {format_duration(result.seconds)}")
    return 0


def metrics_tables(rows: list[dict[str, Any]]) -> str:
    """The metrics rows as two aligned text tables: localisation and faithfulness, then the
    checks (ROAD, invariance, random-logit, robustness, complexity)."""
    from saliency.metrics.report import (
        COMPLEXITY_NAMES,
        LOCALISATION_AND_FAITHFULNESS,
        SUBSET_METRIC_NAMES,
    )

    tables = (
        ["accuracy", *LOCALISATION_AND_FAITHFULNESS],
        [*SUBSET_METRIC_NAMES, "robustness", *COMPLEXITY_NAMES],
    )
    printed = [metrics_table(rows, columns) for columns in tables]
    return "\n\n".join(table for table in printed if table)


def metrics_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """The ``columns`` of the metrics rows that any row has, after model and method, as an
    aligned text table; a mean with an interval reads ``0.81 [0.72,0.88]`` (the 95% interval
    over the scenes). Empty when no row has any of them."""
    present = [c for c in ["model", "method", *columns] if any(c in row for row in rows)]
    if len(present) <= 2:
        return ""
    cells = [[_interval_cell(row, column) for column in present] for row in rows]
    widths = [max(len(c), *(len(line[i]) for line in cells)) for i, c in enumerate(present)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(present, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)) for line in cells]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _interval_cell(row: dict[str, Any], column: str) -> str:
    value, low, high = row.get(column), row.get(f"{column}_low"), row.get(f"{column}_high")
    if not isinstance(value, float) or not isinstance(low, float) or not isinstance(high, float):
        return _cell(value)
    if math.isnan(value):
        return "nan"
    return f"{value:.2f} [{low:.2f},{high:.2f}]"


def _explain_arguments(parser: argparse.ArgumentParser) -> Run:
    from saliency.cli.explain_command import add_arguments

    return add_arguments(parser)


COMMANDS: dict[str, Command] = {
    "demo": Command(
        "explain synthetic scenes with every method on the demo models and measure them",
        _demo_arguments,
    ),
    "methods": Command("list the registered methods with their options", _methods_arguments),
    "explain": Command(
        "saliency maps for image files (a resumable run folder with a manifest)",
        _explain_arguments,
    ),
    "gallery": Command(
        "build the static HTML gallery of a `saliency explain` run folder", _gallery_arguments
    ),
}


if __name__ == "__main__":
    sys.exit(main())
