"""The gallery page: its data (JSON for the script), its CSP, and the Jinja2 template.

Every user-provided string reaches the page either through Jinja2 with autoescaping on, or
inside the ``<script type="application/json">`` block, JSON-encoded with ``<``, ``>``, ``&``
and the line separators escaped, which the script reads with ``JSON.parse`` and shows with
``textContent`` only.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
from importlib.resources import files
from typing import Any

import jinja2
from markupsafe import Markup

from saliency.gallery.assets import InputAssets, MethodAssets, Picture, RunInput, Strip
from saliency.gallery.layers import Layers
from saliency.gallery.mathml import formula_to_mathml
from saliency.method_info import MethodInfo
from saliency.run_folder import ClassScore

STYLESHEET = "gallery.css"
SCRIPT = "gallery.js"
_JSON_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028"}
_JSON_ESCAPES["\u2029"] = "\\u2029"


def static_text(name: str) -> str:
    """A file of the package's ``static/`` folder."""
    return files("saliency.gallery").joinpath("static").joinpath(name).read_text(encoding="utf-8")


def script_json(data: object) -> Markup:
    """JSON that is safe inside ``<script type="application/json">`` (no ``</script>``)."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    for character, escaped in _JSON_ESCAPES.items():
        text = text.replace(character, escaped)
    return Markup(text)


def content_security_policy(inline_css: str | None = None, inline_js: str | None = None) -> str:
    """The page's CSP: nothing but the gallery's own files (or, inlined, these exact texts).

    Args:
        inline_css: The inlined stylesheet (single-file mode); ``None``: ``gallery/*.css``.
        inline_js: The inlined script (single-file mode); ``None``: ``gallery/*.js``.
    """

    def source(text: str | None) -> str:
        if text is None:
            return "'self'"
        digest = base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode()
        return f"'sha256-{digest}'"

    images = "'self'" if inline_js is None else "data:"
    return (
        f"default-src 'none'; script-src {source(inline_js)}; style-src {source(inline_css)}; "
        f"img-src {images}; base-uri 'none'; form-action 'none'; object-src 'none'"
    )


def render_page(context: dict[str, Any]) -> str:
    """Render ``templates/index.html.j2`` (autoescaping on, undefined names are errors)."""
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("saliency.gallery", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters["number"] = format_number
    environment.filters["mathml"] = formula_to_mathml
    return environment.get_template("index.html.j2").render(**context)


def page_data(
    inputs: list[RunInput],
    method_options: dict[str, dict[str, Any]],
    assets: list[InputAssets],
    infos: list[MethodInfo],
    anchors: list[str],
    colour_bars: dict[str, str],
) -> dict[str, Any]:
    """Everything the script needs, as JSON-ready values (strings are shown as text)."""
    methods = []
    for info, anchor in zip(infos, anchors, strict=True):
        options = method_options.get(info.name)
        methods.append(
            {
                "name": info.name,
                "anchor": anchor,
                "summary": info.summary,
                "options": _options(options) if options else None,
                "defaults": info.defaults,
            }
        )
    items = [
        _item(number, item, item_assets, [info.name for info in infos])
        for number, (item, item_assets) in enumerate(zip(inputs, assets, strict=True))
    ]
    labels = sorted({i["prediction"]["label"] for i in items if _has_label(i)}, key=str.lower)
    return {"methods": methods, "items": items, "labels": labels, "colourBars": colour_bars}


def _item(number: int, item: RunInput, assets: InputAssets, methods: list[str]) -> dict[str, Any]:
    record = item.record
    return {
        "id": number,
        "path": record.path,
        "status": record.status,
        "error": record.error,
        "width": record.width,
        "height": record.height,
        "prediction": _score(record.prediction),
        "target": _score(record.target),
        "top5": [_score(s) for s in record.top5],
        "original": _picture(assets.original),
        "strip": _strip(assets.strip),
        "originalTile": assets.original_tile,
        "originalProblem": assets.original_problem,
        "methods": [
            _method(assets.methods.get(name), item.methods[name].seconds)
            if name in item.methods
            else None
            for name in methods
        ],
    }


def _method(assets: MethodAssets | None, seconds: float | None) -> dict[str, Any] | None:
    if assets is None:
        return None
    return {
        "tile": assets.tile,
        "overlay": _picture(assets.overlay),
        "layers": _layers(assets.layers),
        "seconds": seconds,
        "problem": assets.problem,
    }


def _picture(picture: Picture | None) -> dict[str, Any] | None:
    if picture is None:
        return None
    return {"url": picture.url, "width": picture.width, "height": picture.height}


def _layers(layers: Layers | None) -> dict[str, Any] | None:
    if layers is None:
        return None
    return {
        "url": layers.url,
        "sheetWidth": layers.sheet_width,
        "sheetHeight": layers.sheet_height,
        "width": layers.width,
        "height": layers.height,
        "absolute": list(layers.absolute),
        "signed": list(layers.signed),
        "scale": layers.scale if math.isfinite(layers.scale) else None,
    }


def _strip(strip: Strip | None) -> dict[str, Any] | None:
    if strip is None:
        return None
    return {
        "url": strip.url,
        "width": strip.width,
        "height": strip.height,
        "stride": strip.stride,
        "count": strip.count,
    }


def _score(score: ClassScore | None) -> dict[str, Any] | None:
    if score is None:
        return None
    return {"index": score.index, "label": score.label, "probability": score.probability}


def _has_label(item: dict[str, Any]) -> bool:
    prediction = item["prediction"]
    return prediction is not None and isinstance(prediction.get("label"), str)


def _options(options: dict[str, Any]) -> dict[str, str]:
    return {str(k): json.dumps(v, ensure_ascii=False, default=repr) for k, v in options.items()}


def format_number(value: object, digits: int = 3) -> str:
    """Metric values for the table: floats with ``digits`` decimals, the rest as text."""
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if math.isfinite(value) else str(value)
    return str(value)
