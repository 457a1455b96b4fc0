"""``manifest.json`` of a run folder (docs/manifest.md): the records, reading and writing.

The manifest is written atomically (temporary name, then rename), so a reader or a crash never
sees half of one. Reading is defensive: an earlier manifest is only trusted for what it says
about files that still pass the path checks.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict, cast

from saliency.cli.relpaths import is_safe_relpath
from saliency.output_files import write_text_atomic

FORMAT = 1
MANIFEST_NAME = "manifest.json"


class ManifestError(ValueError):
    """A manifest that cannot be read or does not follow the format."""


class ClassScore(TypedDict):
    """A class with its softmax probability (``prediction`` and ``top5`` entries)."""

    index: int
    label: str | None
    probability: float


class TargetClass(TypedDict):
    """The class an input was explained for."""

    index: int
    label: str | None


@dataclass
class MethodRecord:
    """The outputs of one method for one input (paths relative to the run folder)."""

    overlay: str
    raw: str | None
    seconds: float

    def to_json(self) -> dict[str, Any]:
        """The record as in the manifest."""
        return {"overlay": self.overlay, "raw": self.raw, "seconds": round(self.seconds, 4)}


@dataclass
class InputRecord:
    """Everything the manifest says about one input."""

    path: str
    source: str
    status: str = "ok"
    error: str | None = None
    width: int | None = None
    height: int | None = None
    prediction: ClassScore | None = None
    top5: list[ClassScore] = field(default_factory=list)
    target: TargetClass | None = None
    methods: dict[str, MethodRecord] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The entry as in the manifest."""
        return {
            "path": self.path,
            "source": self.source,
            "status": self.status,
            "error": self.error,
            "width": self.width,
            "height": self.height,
            "prediction": self.prediction,
            "top5": self.top5,
            "target": self.target,
            "methods": {name: record.to_json() for name, record in self.methods.items()},
        }


@dataclass
class Manifest:
    """A whole manifest: the run's description and one record per input, by relpath."""

    run: dict[str, Any]
    inputs: dict[str, InputRecord]

    def to_json(self) -> dict[str, Any]:
        """The manifest as JSON data, inputs sorted by path."""
        entries = [self.inputs[path].to_json() for path in sorted(self.inputs)]
        return {"format": FORMAT, "run": self.run, "inputs": entries}


def write_manifest(folder: Path, manifest: Manifest, name: str = MANIFEST_NAME) -> Path:
    """Write ``folder/manifest.json`` (or another ``name``, e.g. a rank's) atomically."""
    text = json.dumps(manifest.to_json(), indent=2, ensure_ascii=False, allow_nan=False)
    return write_text_atomic(folder / name, text + "\n")


def read_manifest(folder: Path, name: str = MANIFEST_NAME) -> Manifest | None:
    """The manifest of a run folder (or another file ``name`` in it); None when there is none.

    Entries whose path is unsafe (``..``, absolute) or duplicated are dropped: they can only come
    from a hand-edited file, and nothing is ever read or written through them.

    Raises:
        ManifestError: The file exists but cannot be read or is not a format-1 manifest.
    """
    path = folder / name
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(f"cannot read {path}: {exc}") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{path} is not valid JSON ({exc})") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ManifestError(f"{path} is not a format-{FORMAT} saliency manifest")
    run, entries = data.get("run"), data.get("inputs")
    if not isinstance(run, dict) or not isinstance(entries, list):
        raise ManifestError(f"{path} lacks its 'run' object or its 'inputs' list")
    inputs: dict[str, InputRecord] = {}
    for entry in entries:
        record = _input_record(entry)
        if record is not None and record.path not in inputs:
            inputs[record.path] = record
    return Manifest(run, inputs)


def _input_record(entry: object) -> InputRecord | None:
    """One entry read back, or None if it is malformed or unsafe."""
    if not isinstance(entry, dict):
        return None
    path, source = entry.get("path"), entry.get("source")
    if not is_safe_relpath(path) or not isinstance(source, str):
        return None
    assert isinstance(path, str)
    methods: dict[str, MethodRecord] = {}
    raw_methods = entry.get("methods")
    for name, record in (raw_methods if isinstance(raw_methods, dict) else {}).items():
        method_record = _method_record(record)
        if method_record is not None:
            methods[str(name)] = method_record
    status = entry.get("status")
    error = entry.get("error")
    return InputRecord(
        path=path,
        source=source,
        status=status if status in ("ok", "error") else "error",
        error=error if isinstance(error, str) else None,
        width=_optional_int(entry.get("width")),
        height=_optional_int(entry.get("height")),
        prediction=entry.get("prediction") if isinstance(entry.get("prediction"), dict) else None,
        top5=[cast(ClassScore, item) for item in entry.get("top5") or [] if isinstance(item, dict)],
        target=entry.get("target") if isinstance(entry.get("target"), dict) else None,
        methods=methods,
    )


def _method_record(record: object) -> MethodRecord | None:
    if not isinstance(record, dict) or not is_safe_relpath(record.get("overlay")):
        return None
    raw = record.get("raw")
    seconds = record.get("seconds")
    return MethodRecord(
        overlay=str(record["overlay"]),
        raw=raw if is_safe_relpath(raw) else None,
        seconds=float(seconds)
        if isinstance(seconds, int | float) and math.isfinite(seconds)
        else 0.0,
    )


def _optional_int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
