"""Read a ``saliency explain`` run folder: ``manifest.json`` and the optional ``metrics.json``.

The layout is documented in ``docs/manifest.md``. Reading is tolerant: a missing optional field
becomes ``None``/empty, but a path that points outside the run folder is never followed.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from saliency.errors import SaliencyError

MANIFEST = "manifest.json"
METRICS = "metrics.json"
SUPPORTED_FORMAT = 1


class GalleryError(SaliencyError, ValueError):
    """A run folder the gallery cannot be built from (missing or malformed manifest)."""


@dataclass(frozen=True)
class ClassScore:
    """A class index with its label (``None`` without class names) and probability."""

    index: int | None
    label: str | None
    probability: float | None = None


@dataclass(frozen=True)
class MethodOutput:
    """One method's files for one input: absolute paths inside the run folder, or ``None``."""

    overlay: Path | None
    raw: Path | None
    seconds: float | None


@dataclass(frozen=True)
class RunInput:
    """One entry of ``manifest.json``'s ``inputs``."""

    path: str
    source: Path | None
    status: str
    error: str | None
    width: int | None
    height: int | None
    prediction: ClassScore | None
    top5: list[ClassScore]
    target: ClassScore | None
    methods: dict[str, MethodOutput]


@dataclass(frozen=True)
class Run:
    """A run folder: the ``run`` section, the methods in column order, inputs and metrics."""

    directory: Path
    info: dict[str, Any]
    methods: list[str]
    inputs: list[RunInput]
    metrics: dict[str, Any] | None = None
    method_options: dict[str, dict[str, Any]] = field(default_factory=dict)


def read_run(run_dir: str | Path) -> Run:
    """Read ``run_dir/manifest.json`` (and ``metrics.json`` when present).

    Raises:
        GalleryError: The folder or its manifest is missing, not JSON, or of another format.
    """
    directory = Path(run_dir).resolve()
    if not directory.is_dir():
        raise GalleryError(f"{run_dir}: not a folder; expected a `saliency explain` run folder")
    manifest = _load_json(directory / MANIFEST, required=True)
    if not isinstance(manifest, dict) or not isinstance(manifest.get("inputs", []), list):
        raise GalleryError(f"{directory / MANIFEST}: expected an object with an 'inputs' list")
    version = manifest.get("format", SUPPORTED_FORMAT)
    if version != SUPPORTED_FORMAT:
        raise GalleryError(
            f"{directory / MANIFEST}: manifest format {version!r} is not supported; accepted: "
            f"{SUPPORTED_FORMAT}"
        )
    info = _dict(manifest.get("run"))
    inputs = [
        _read_input(directory, item)
        for item in manifest.get("inputs", [])
        if isinstance(item, dict)
    ]
    methods = [str(m) for m in info.get("methods") or [] if isinstance(m, str)]
    for item in inputs:  # methods found only in the entries still get a column
        methods.extend(m for m in item.methods if m not in methods)
    options = {str(k): _dict(v) for k, v in _dict(info.get("method_options")).items()}
    metrics = _load_json(directory / METRICS, required=False)
    return Run(
        directory=directory,
        info=info,
        methods=methods,
        inputs=inputs,
        metrics=metrics if isinstance(metrics, dict) else None,
        method_options=options,
    )


def _load_json(path: Path, *, required: bool) -> Any:
    if not path.is_file():
        if required:
            raise GalleryError(
                f"{path}: not found; a run folder written by `saliency explain --out DIR` holds "
                "manifest.json"
            )
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise GalleryError(f"{path}: cannot be read as JSON ({error})") from error


def _read_input(directory: Path, item: dict[str, Any]) -> RunInput:
    source = item.get("source")
    methods = {
        str(name): MethodOutput(
            overlay=inside(directory, entry.get("overlay")),
            raw=inside(directory, entry.get("raw")),
            seconds=_number(entry.get("seconds")),
        )
        for name, entry in _dict(item.get("methods")).items()
        if isinstance(entry, dict)
    }
    status = item.get("status")
    return RunInput(
        path=str(item.get("path") or "?"),
        source=directory / source if isinstance(source, str) and source else None,
        status=status if status in ("ok", "error", "skipped") else "error",
        error=None if item.get("error") is None else str(item.get("error")),
        width=_integer(item.get("width")),
        height=_integer(item.get("height")),
        prediction=_score(item.get("prediction")),
        top5=[s for s in map(_score, item.get("top5") or []) if s is not None],
        target=_score(item.get("target")),
        methods=methods,
    )


def inside(directory: Path, relative: object) -> Path | None:
    """``directory / relative`` if that is a path inside ``directory``, else ``None``.

    The check is lexical (``..`` cannot climb out); a symbolic link inside the folder is the
    folder owner's choice and is followed.
    """
    if not isinstance(relative, str) or not relative:
        return None
    path = Path(os.path.normpath(directory / relative))
    return path if path.is_relative_to(directory) and path != directory else None


def _score(value: object) -> ClassScore | None:
    if not isinstance(value, dict):
        return None
    label = value.get("label")
    return ClassScore(
        index=_integer(value.get("index")),
        label=None if label is None else str(label),
        probability=_number(value.get("probability")),
    )


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _integer(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None
