"""Build the static HTML gallery of a ``saliency explain`` run folder.

Output: ``index.html`` (by default inside the run folder) and a ``gallery/`` folder beside it with
the stylesheet, the script, thumbnails, display-size originals and heatmap layers. Overlays that
already sit below the page's folder are referenced in place (relative URLs); others are copied.
With ``single_file=True`` the page holds everything itself (CSS, JS and images as data URIs).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from markupsafe import Markup

from saliency.errors import InvalidOptionError
from saliency.gallery.assets import DISPLAY_SIZE, THUMBNAIL_SIZE, Colours, build_assets
from saliency.gallery.describe import describe_method
from saliency.gallery.imaging import PERCENTILE, colour_bar
from saliency.gallery.page import (
    SCRIPT,
    STYLESHEET,
    content_security_policy,
    page_data,
    render_page,
    script_json,
    static_text,
)
from saliency.gallery.run_folder import Run, read_run
from saliency.gallery.sinks import FolderSink, InlineSink, Sink, relative_url
from saliency.output_files import write_text_atomic
from saliency.rendering import colormap_lut

INDEX = "index.html"
ASSETS = "gallery"
PAGE_SIZE = 50


def build_gallery(
    run_dir: str | Path,
    out: str | Path | None = None,
    title: str | None = None,
    single_file: bool = False,
    *,
    workers: int | None = None,
) -> Path:
    """Build the gallery of a run folder and return the path of its HTML page.

    Args:
        run_dir: A folder written by ``saliency explain`` (holds ``manifest.json``).
        out: Where the page goes: an ``.html``/``.htm`` file, or a folder (page
            ``index.html`` in it). Default: ``run_dir/index.html``. Assets go to ``gallery/``
            beside an ``index.html`` page, or to ``<stem>_gallery/`` beside another name.
        title: The page title; default: from the run's model and folder name.
        single_file: Inline the stylesheet, the script and every image (data URIs): one file
            to share, without the assets folder.
        workers: Threads that make thumbnails (default: the CPU count, at most 16).

    Returns:
        The path of the written page.

    Raises:
        GalleryError: The run folder has no readable manifest.
    """
    run = read_run(run_dir)
    page = page_path(run.directory, out)
    page.parent.mkdir(parents=True, exist_ok=True)
    assets_folder = page.parent / (ASSETS if page.name == INDEX else f"{page.stem}_{ASSETS}")
    sink: Sink = InlineSink() if single_file else FolderSink(page.parent, assets_folder)
    colours = _colours(run.info)
    infos = [describe_method(name) for name in run.methods]
    anchors = [
        f"method-{i}-{re.sub(r'[^A-Za-z0-9_-]+', '-', n)}" for i, n in enumerate(run.methods)
    ]
    assets = build_assets(run.inputs, run.methods, sink, colours, workers)
    colour_bars = {
        key: sink.put(f"scale/{_safe(name)}.png", colour_bar(name), [])
        for key, name in (("heatmap", colours.sequential), ("signed", colours.diverging))
    }
    sink.close()
    data = page_data(run, assets, infos, anchors, colour_bars)
    data["pageSize"] = PAGE_SIZE
    data["percentile"] = PERCENTILE
    css, js = static_text(STYLESHEET), static_text(SCRIPT)
    if single_file:
        inline = {"inline_css": css, "inline_js": js, "stylesheet": None, "script": None}
        csp = content_security_policy(css, js)
    else:
        for name, text in ((STYLESHEET, css), (SCRIPT, js)):
            assets_folder.mkdir(parents=True, exist_ok=True)
            write_text_atomic(assets_folder / name, text)
        inline = {
            "inline_css": None,
            "inline_js": None,
            "stylesheet": relative_url(assets_folder / STYLESHEET, page.parent),
            "script": relative_url(assets_folder / SCRIPT, page.parent),
        }
        csp = content_security_policy()
    html = render_page(
        {
            "title": title or default_title(run),
            "csp": Markup(csp),  # our own constant text and hashes: no user data
            **inline,
            "summary": run_summary(run),
            "methods": list(zip(infos, anchors, strict=True)),
            "metrics": metrics_table(run.metrics),
            "failed": [(i, item) for i, item in enumerate(run.inputs) if item.status == "error"],
            "count": len(run.inputs),
            "thumbnail_size": THUMBNAIL_SIZE,
            "display_size": DISPLAY_SIZE,
            "percentile": PERCENTILE,
            "data": script_json(data),
        }
    )
    write_text_atomic(page, html)
    return page


def page_path(run_dir: Path, out: str | Path | None) -> Path:
    """The page's path: ``out`` if it names an HTML file, ``out/index.html`` for a folder."""
    if out is None:
        return run_dir / INDEX
    path = Path(out).absolute()
    return path if path.suffix.lower() in (".html", ".htm") else path / INDEX


def default_title(run: Run) -> str:
    """``Saliency gallery — <model> · <run folder name>``."""
    model = run.info.get("model")
    parts = [str(model)] if model else []
    parts.append(run.directory.name)
    return "Saliency gallery — " + " · ".join(parts)


def run_summary(run: Run) -> list[tuple[str, str]]:
    """``(label, text)`` pairs describing the run (model, target, device, totals, versions)."""
    info = run.info
    rows: list[tuple[str, str]] = []

    def add(label: str, *values: Any, sep: str = " · ") -> None:
        text = sep.join(str(v) for v in values if v not in (None, ""))
        if text:
            rows.append((label, text))

    weights = info.get("weights")
    add("Model", info.get("model"), f"weights {weights}" if weights else None)
    add("Target", info.get("target"))
    add("Device", info.get("device"), info.get("precision"))
    totals_info = info.get("totals")
    totals = totals_info if isinstance(totals_info, dict) else {}
    counts = [f"{totals[k]} {k}" for k in ("inputs", "ok", "error", "skipped") if k in totals]
    add("Inputs", *counts or [f"{len(run.inputs)} inputs"])
    if isinstance(totals.get("seconds"), int | float):
        add("Run time", f"{totals['seconds']:.1f} s")
    add("Started", info.get("started"), info.get("finished"), sep=" → ")
    versions_info = info.get("versions")
    versions = versions_info if isinstance(versions_info, dict) else {}
    add("Versions", *(f"{name} {value}" for name, value in versions.items()))
    return rows


def metrics_table(metrics: dict[str, Any] | None) -> dict[str, Any] | None:
    """Columns (every key but ``model``/``method``, in first-seen order), rows and notes."""
    if not metrics or not isinstance(metrics.get("rows"), list):
        return None
    rows = [row for row in metrics["rows"] if isinstance(row, dict)]
    columns: list[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in ("model", "method") and k not in columns)
    notes = metrics.get("notes")
    return {"columns": columns, "rows": rows, "notes": notes if isinstance(notes, str) else None}


def _colours(info: dict[str, Any]) -> Colours:
    """The run's colormap (``run.overlay.cmap`` or ``run.cmap`` when recorded, else the default)."""
    overlay = info.get("overlay")
    recorded = overlay.get("cmap") if isinstance(overlay, dict) else None
    for name in (recorded, info.get("cmap")):
        if isinstance(name, str):
            try:
                colormap_lut(name)
                return Colours(sequential=name)
            except InvalidOptionError:
                continue
    return Colours()


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", name)
