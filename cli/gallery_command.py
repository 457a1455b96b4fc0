"""``saliency gallery RUN_DIR``: build the static HTML gallery of a ``saliency explain`` run."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from saliency.gallery import GalleryError, build_gallery


def add_parser(commands: Any) -> None:
    """Add the ``gallery`` command to the CLI's sub-parsers."""
    parser = commands.add_parser(
        "gallery",
        help="build the static HTML gallery of a `saliency explain` run folder",
        description=(
            "Build a static, self-contained HTML gallery (overview, detail views, method "
            "descriptions, metrics) from a run folder written by `saliency explain --out DIR`. "
            "Open the page from disk; it makes no network request."
        ),
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
        help="inline the stylesheet, the script and every image: one HTML file to share",
    )
    parser.set_defaults(run=run)


def run(arguments: argparse.Namespace) -> int:
    """Build the gallery; print the page's path. Exit code 0, or 2 for an unusable run folder."""
    started = time.perf_counter()
    try:
        page = build_gallery(
            arguments.run_dir,
            out=arguments.out,
            title=arguments.title,
            single_file=arguments.single_file,
        )
    except (GalleryError, OSError) as error:
        print(f"saliency gallery: error: {error}", file=sys.stderr)
        return 2
    print(f"{page}  ({time.perf_counter() - started:.1f} s)")
    return 0
