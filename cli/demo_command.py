"""``saliency demo``: measure every method on the shipped demo models, offline; write a gallery."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from saliency.cli.model_setup import resolve_device
from saliency.cli.progress import Progress, format_duration
from saliency.cli.settings import UsageError, positive_int
from saliency.demo import DemoSettings, run_demo
from saliency.demo_models import DEMO_MODELS, installed_demo_models
from saliency.errors import SaliencyError
from saliency.methods.registry import list_methods
from saliency.metrics.report import METRIC_NAMES
from saliency.shapes import TEST_SEED


def add_parser(commands: Any) -> None:
    """Add the ``demo`` command to the CLI's sub-parsers."""
    parser = commands.add_parser(
        "demo",
        help="explain synthetic scenes with every method on the demo models and measure them",
        description=(
            "The project's main job, offline: draws test scenes with exact object (and marker) "
            "masks, explains them with every registered method on each shipped demo model "
            f"({', '.join('demo:' + name for name in DEMO_MODELS)}), measures every metric "
            "(pointing game, relevance mass and rank, deletion/insertion AUC, parameter "
            "randomisation, marker vs object mass, robustness) and writes OUT/metrics.json, "
            "OUT/metrics.csv, the overlays and an HTML gallery OUT/index.html."
        ),
    )
    parser.add_argument(
        "--out", metavar="DIR", default="saliency-demo", help="run folder (default ./saliency-demo)"
    )
    parser.add_argument(
        "--images", type=positive_int, default=24, metavar="N", help="scenes per model (24)"
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
        choices=sorted(DEMO_MODELS),
        help="a demo model (repeatable; default: every installed one)",
    )
    parser.add_argument(
        "--method",
        action="append",
        metavar="NAME",
        help="a registered method (repeatable; default: every method outside method families: "
        + ", ".join(list_methods(families=False))
        + ")",
    )
    parser.add_argument("--no-gallery", action="store_true", help="skip the HTML gallery")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    parser.set_defaults(run=run)


def run(arguments: argparse.Namespace) -> int:
    """Run the demo; print the metrics table and where everything went. Exit 0, or 2."""
    try:
        settings = DemoSettings(
            images=arguments.images,
            seed=arguments.seed,
            device=resolve_device(arguments.device),
            models=tuple(arguments.model) if arguments.model else None,
            methods=tuple(arguments.method) if arguments.method else None,
            gallery=not arguments.no_gallery,
        )
    except (SaliencyError, UsageError) as error:
        print(f"saliency demo: error: {error}", file=sys.stderr)
        return 2
    models = settings.models or installed_demo_models()
    methods = settings.methods or tuple(list_methods(families=False))
    progress = Progress(
        len(models) * len(methods), enabled=not arguments.quiet, label="saliency demo", unit="steps"
    )
    try:
        result = run_demo(arguments.out, settings, on_step=lambda _: progress.advance())
    except (SaliencyError, OSError) as error:
        progress.close()
        print(f"saliency demo: error: {error}", file=sys.stderr)
        return 2
    progress.close()
    print(metrics_table(result.rows))
    print(f"\nmetrics: {result.out / 'metrics.csv'}")
    if result.gallery is not None:
        print(f"gallery: {result.gallery}")
    print(f"done in {format_duration(result.seconds)}")
    return 0


def metrics_table(rows: list[dict[str, Any]]) -> str:
    """The main columns of the metrics rows as an aligned text table."""
    columns = ["model", "method", "accuracy", *METRIC_NAMES, "robustness"]
    present = [c for c in columns if any(c in row for row in rows)]
    cells = [[_cell(row.get(column)) for column in present] for row in rows]
    widths = [max(len(c), *(len(line[i]) for line in cells)) for i, c in enumerate(present)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(present, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)) for line in cells]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


__all__ = ["add_parser", "metrics_table", "run"]
