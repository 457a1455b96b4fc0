"""Build the static HTML gallery of a ``saliency explain`` run folder.

Output: ``index.html`` (by default inside the run folder) and a ``gallery/`` folder beside it with
the stylesheet, the script, thumbnails, display-size originals and heatmap layers. Overlays that
already sit below the page's folder are referenced in place (relative URLs); others are copied.
With ``single_file=True`` the page holds everything itself (CSS, JS and images as data URIs).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from markupsafe import Markup

from saliency.errors import InvalidOptionError
from saliency.gallery.assets import DISPLAY_SIZE, THUMBNAIL_SIZE, Colours, RunInput, build_assets
from saliency.gallery.imaging import PERCENTILE, colour_bar
from saliency.gallery.metrics_table import metrics_table
from saliency.gallery.page import (
    SCRIPT,
    STYLESHEET,
    content_security_policy,
    page_data,
    render_page,
    script_json,
    static_text,
)
from saliency.gallery.sinks import FolderSink, InlineSink, Sink
from saliency.method_info import describe_method
from saliency.output_files import write_text_atomic
from saliency.rendering import colormap_lut
from saliency.run_folder import (
    MANIFEST_NAME,
    Manifest,
    ManifestError,
    UnsafePathError,
    read_manifest,
    read_metrics,
)

INDEX = "index.html"
ASSETS = "gallery"
PAGE_SIZE = 50
_COUNTS = ("inputs", "ok", "error", "skipped")


class GalleryError(ManifestError):
    """A run folder the gallery cannot be built from (missing or malformed manifest)."""


@dataclass(frozen=True)
class Run:
    """A run folder as the gallery reads it.

    Attributes:
        directory: The folder (absolute).
        manifest: Its manifest.
        inputs: Its entries with their files, in the manifest's order.
        methods: Its methods in column order (those only found in the entries last).
        metrics: ``metrics.json``, when it has one.
    """

    directory: Path
    manifest: Manifest
    inputs: list[RunInput]
    methods: list[str]
    metrics: dict[str, Any] | None


def read_run(run_dir: str | Path) -> Run:
    """Read ``run_dir/manifest.json`` (and ``metrics.json`` when present).

    Raises:
        GalleryError: The folder or its manifest is missing, not JSON, or of another format.
    """
    directory = Path(run_dir).resolve()
    if not directory.is_dir():
        raise GalleryError(f"{run_dir}: not a folder; expected a `saliency explain` run folder")
    try:
        manifest = read_manifest(directory)
        metrics = read_metrics(directory)
    except ManifestError as error:
        raise GalleryError(str(error)) from error
    if manifest is None:
        raise GalleryError(
            f"{directory / MANIFEST_NAME}: not found; a run folder written by `saliency explain "
            "--out DIR` holds manifest.json"
        )
    inputs = [RunInput.of(directory, record) for record in manifest.inputs.values()]
    methods = manifest.methods()
    methods += [m for item in inputs for m in item.methods if m not in methods]
    return Run(directory, manifest, inputs, methods, metrics)


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
        GalleryError: The run folder has no readable manifest, or a folder the gallery would
            write in is a symbolic link (it never writes or deletes through one).
    """
    try:
        return _build(Path(run_dir), out, title, single_file, workers)
    except UnsafePathError as error:
        raise GalleryError(f"refusing to build the gallery: {error}") from None


def _build(
    run_dir: Path, out: str | Path | None, title: str | None, single_file: bool, workers: int | None
) -> Path:
    run = read_run(run_dir)
    page = page_path(run.directory, out)
    page.parent.mkdir(parents=True, exist_ok=True)
    assets_folder = page.parent / (ASSETS if page.name == INDEX else f"{page.stem}_{ASSETS}")
    folder_sink = None if single_file else FolderSink(page.parent, assets_folder)
    sink: Sink = folder_sink or InlineSink(DISPLAY_SIZE)
    colours = _colours(run.manifest.run.extra)
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
    options = run.manifest.run.method_options
    data = page_data(run.inputs, options, assets, infos, anchors, colour_bars)
    data["pageSize"] = PAGE_SIZE
    data["percentile"] = PERCENTILE
    css, js = static_text(STYLESHEET), static_text(SCRIPT)
    if folder_sink is None:
        inline = {"inline_css": css, "inline_js": js, "stylesheet": None, "script": None}
        csp = content_security_policy(css, js)
    else:
        inline = {
            "inline_css": None,
            "inline_js": None,
            "stylesheet": folder_sink.write_text(STYLESHEET, css),
            "script": folder_sink.write_text(SCRIPT, js),
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
            "overview_legend": overview_legend(run.manifest.run.extra, colour_bars),
            "failed": [(i, item.record) for i, item in enumerate(run.inputs) if item.failed],
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
    model = run.manifest.run.model
    parts = [model] if model else []
    parts.append(run.directory.name)
    return "Saliency gallery — " + " · ".join(parts)


def run_summary(run: Run) -> list[tuple[str, str]]:
    """``(label, text)`` pairs describing the run (model, target, device, totals, versions)."""
    info = run.manifest.run
    rows: list[tuple[str, str]] = []

    def add(label: str, *values: Any, sep: str = " · ") -> None:
        text = sep.join(str(v) for v in values if v not in (None, ""))
        if text:
            rows.append((label, text))

    add("Model", info.model, f"weights {info.weights}" if info.weights else None)
    add("Target", info.target)
    add("Device", info.device, info.precision)
    totals = info.totals
    if totals is None:
        add("Inputs", f"{len(run.inputs)} inputs")
    else:
        counts = (totals.inputs, totals.ok, totals.error, totals.skipped)
        add("Inputs", *(f"{n} {k}" for n, k in zip(counts, _COUNTS, strict=True)))
    if totals is not None and totals.seconds is not None:
        add("Run time", f"{totals.seconds:.1f} s")
    add("Started", info.started, info.finished, sep=" → ")
    add("Versions", *(f"{name} {value}" for name, value in info.versions.items()))
    return rows


def overview_legend(extra: dict[str, Any], colour_bars: dict[str, str]) -> dict[str, Any]:
    """The colour bar under each method's column: the stored overlays' colours (signed when the
    run recorded ``run.overlay.sign == "all"``), each overlay scaled to its own map."""
    overlay = extra.get("overlay")
    signed = isinstance(overlay, dict) and overlay.get("sign") == "all"
    return {
        "url": colour_bars["signed" if signed else "heatmap"],
        "ticks": ("−", "0", "+") if signed else ("low", "high"),
        "title": (
            "Overlay colours: negative (blue) · 0 (white) · positive (red) attribution, each map "
            "scaled to its own range"
            if signed
            else "Overlay colours: low → high relevance (|attribution|), each map scaled to its "
            "own range; the detail view shows the values"
        ),
    }


def _colours(extra: dict[str, Any]) -> Colours:
    """The run's colormap (``run.overlay.cmap`` or ``run.cmap`` when recorded, else the default)."""
    overlay = extra.get("overlay")
    recorded = overlay.get("cmap") if isinstance(overlay, dict) else None
    for name in (recorded, extra.get("cmap")):
        if isinstance(name, str):
            try:
                colormap_lut(name)
                return Colours(sequential=name)
            except InvalidOptionError:
                continue
    return Colours()


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", name)
