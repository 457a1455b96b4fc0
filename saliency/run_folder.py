"""The run folder and its manifest (docs/manifest.md): typed records, reading, writing, top classes.

Everything that writes or reads a run folder goes through this module: ``saliency explain`` (its
recorder, resume planning and the torchrun merge), the gallery (its reader, and
``saliency.gallery.write_run_folder`` for explanations), the demo and
:meth:`saliency.Explanation.save`. Writing is atomic (temporary name, then rename). Reading is
defensive: a path that could leave the folder (``..``, absolute) is never kept, and an entry or
field that does not follow the format is dropped rather than trusted.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
import os
import platform
import re
import stat
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Literal, TypeAlias, cast
from urllib.parse import quote_from_bytes, unquote_to_bytes

import numpy as np
import PIL.Image
import torch
from torch import Tensor, nn

from saliency.errors import SaliencyError
from saliency.output_files import file_stem, write_atomic, write_text_atomic
from saliency.png_encoding import encode_png, encodes
from saliency.validation import is_int, is_real

FORMAT = 1
MANIFEST_NAME = "manifest.json"
METRICS_NAME = "metrics.json"
RESERVED_NAMES = (MANIFEST_NAME, METRICS_NAME, "index.html", "gallery")
"""What the run folder holds at its top: never the folder of an input."""
FORMATS = ("png", "jpg", "webp")
"""Overlay formats."""
OUTPUT_EXTENSIONS = (*FORMATS, "npy")
"""Every extension an input's output file may have: overlays and raw arrays."""
TOP_CLASSES = 5

Status = Literal["ok", "error"]
Target: TypeAlias = Literal["predicted", "given"] | int | None
"""``run.target``: ``"predicted"`` (each input's top class), a class index (the same class for
every input), ``"given"`` (the classes of explanations made in Python, such as the demo's: see
each input's ``target``) or None (a callable target: no class)."""

_TARGET_WORDS = ("predicted", "given")
_RANK_FILE = re.compile(r"manifest\.rank-(\d+)\.json")
# Fast encoder settings. PNG: saliency.png_encoding where it applies, else Pillow at level 1
# (several times faster than the default 6 for ~20% more bytes).
_ENCODER_OPTIONS: Mapping[str, Mapping[str, Any]] = {
    "png": {"format": "PNG", "compress_level": 1},
    "jpg": {"format": "JPEG", "quality": 90},
    "webp": {"format": "WEBP", "quality": 90, "method": 4},
}


class ManifestError(SaliencyError, ValueError):
    """A manifest that cannot be read or does not follow the format."""


class UnsafePathError(SaliencyError, ValueError):
    """A path that would leave the run folder, or pass through a symbolic link."""


# ---- paths -----------------------------------------------------------------------------------


def split_relpath(relpath: str) -> tuple[str, ...]:
    """The components of a ``/``-separated path inside the run folder, checked.

    Raises:
        UnsafePathError: An empty, absolute or ``.``/``..`` component, a NUL character, or
            text that is not valid Unicode (a lone surrogate: see :func:`text_form`).
    """
    if text_form(relpath) != relpath:
        raise UnsafePathError(
            f"unsafe output path {text_form(relpath)!r}: not valid Unicode text"
        )
    parts = tuple(relpath.split("/"))
    for part in parts:
        if part in ("", ".", "..") or "\0" in part:
            raise UnsafePathError(
                f"unsafe output path {relpath!r}: components must be non-empty names, not "
                "'.', '..' or absolute"
            )
    return parts


def is_safe_relpath(relpath: object) -> bool:
    """Whether ``relpath`` is a string that :func:`split_relpath` accepts."""
    if not isinstance(relpath, str):
        return False
    try:
        split_relpath(relpath)
    except UnsafePathError:
        return False
    return True


def text_form(name: str) -> str:
    """``name`` as valid Unicode text: a file name that is not valid UTF-8 (Python holds its
    undecodable bytes as lone surrogates, see :func:`os.fsdecode`) gets each such byte written
    as ``\\xNN``; any other lone surrogate as ``\\uNNNN``. Valid text is returned unchanged.

    This is the display form recorded in the manifest (and the form of an input's relpath); it is
    not reversible, so a ``source`` that needed it is also recorded as ``source_bytes``.
    """
    try:
        name.encode("utf-8")
        return name
    except UnicodeEncodeError:
        pass
    try:
        raw = name.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate no file name decodes to (e.g. from a JSON escape)
        return name.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")


def name_bytes(name: str) -> str | None:
    """The reversible form of a file name that is not valid UTF-8: its bytes percent-encoded
    (``%E9``; ``/`` and ASCII letters, digits and ``_.-~`` as they are); None for valid text or
    a string that is no file name."""
    if text_form(name) == name:
        return None
    try:
        return quote_from_bytes(name.encode("utf-8", "surrogateescape"), safe="/")
    except UnicodeEncodeError:
        return None


def from_name_bytes(value: str) -> str:
    """The file name (as :func:`os.fsdecode` gives it) of a :func:`name_bytes` form."""
    return unquote_to_bytes(value).decode("utf-8", "surrogateescape")


def output_name(relpath: str, method: str, extension: str) -> str:
    """The manifest path of an output file: ``<relpath>/<method>.<extension>`` (the method's
    :func:`~saliency.output_files.file_stem`)."""
    return f"{relpath}/{file_stem(method)}.{extension}"


def output_folder(out: Path, relpath: str, create: bool) -> Path:
    """``out/<relpath>``, refusing any way out of ``out`` (``..``, symbolic links, files).

    Args:
        out: The output folder (must exist).
        relpath: The input's relpath.
        create: Create missing folders; otherwise a missing folder raises FileNotFoundError.

    Raises:
        UnsafePathError: A component is a symbolic link or not a folder.
        OSError: A folder cannot be created.
    """
    folder = out
    for part in split_relpath(relpath):
        folder = folder / part
        if create:
            with contextlib.suppress(FileExistsError):
                folder.mkdir()
        mode = os.lstat(folder).st_mode
        if stat.S_ISLNK(mode):
            raise UnsafePathError(
                f"{folder} is a symbolic link; refusing to write through it, outside the output "
                "folder"
            )
        if not stat.S_ISDIR(mode):
            raise UnsafePathError(f"{folder} exists and is not a folder")
    return folder


def existing_output(out: Path, relpath: str) -> Path | None:
    """``out/<relpath>`` (a file written by an earlier run) if it is a regular file reached
    through real folders only; else None."""
    parts = split_relpath(relpath)
    try:
        folder = output_folder(out, "/".join(parts[:-1]), create=False) if len(parts) > 1 else out
        mode = os.lstat(folder / parts[-1]).st_mode
    except (OSError, UnsafePathError):
        return None
    return folder / parts[-1] if stat.S_ISREG(mode) else None


# ---- records ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClassScore:
    """A class: its index, its label (None without class names) and, for predictions, its
    probability (``prediction`` and ``top5`` entries have one; ``target`` has none)."""

    index: int
    label: str | None
    probability: float | None = None

    def to_json(self) -> dict[str, Any]:
        """The class as in the manifest."""
        data: dict[str, Any] = {"index": self.index, "label": self.label}
        if self.probability is not None:
            data["probability"] = self.probability
        return data

    @classmethod
    def from_json(cls, value: object) -> ClassScore | None:
        """A class read back; None unless it is an object with an integer ``index``."""
        if not isinstance(value, dict) or not is_int(value.get("index")):
            return None
        label, probability = value.get("label"), value.get("probability")
        return cls(
            value["index"],
            None if label is None else str(label),
            _float_or_none(probability),
        )


@dataclass
class MethodRecord:
    """One method's outputs for one input (paths relative to the run folder, with ``/``)."""

    overlay: str
    raw: str | None = None
    seconds: float | None = None

    def to_json(self) -> dict[str, Any]:
        """The record as in the manifest."""
        seconds = None if self.seconds is None else round(self.seconds, 4)
        return {"overlay": self.overlay, "raw": self.raw, "seconds": seconds}

    @classmethod
    def from_json(cls, value: object) -> MethodRecord | None:
        """A record read back; None when its overlay path is missing or unsafe."""
        if not isinstance(value, dict) or not is_safe_relpath(value.get("overlay")):
            return None
        raw, seconds = value.get("raw"), value.get("seconds")
        return cls(
            str(value["overlay"]),
            raw if is_safe_relpath(raw) else None,
            _float_or_none(seconds),
        )


@dataclass
class InputRecord:
    """Everything the manifest says about one input.

    ``size`` and ``mtime_ns`` are the source file's size and modification time when it was
    explained (None: not recorded), so that a rerun can tell a replaced input. ``dropped`` is
    not part of the format: the methods whose record :meth:`from_json` left out
    (an overlay path missing or outside the folder), so that a reader can say their output is
    missing.
    """

    path: str
    source: str
    status: Status = "ok"
    error: str | None = None
    width: int | None = None
    height: int | None = None
    prediction: ClassScore | None = None
    top5: list[ClassScore] = field(default_factory=list)
    target: ClassScore | None = None
    methods: dict[str, MethodRecord] = field(default_factory=dict)
    size: int | None = None
    mtime_ns: int | None = None
    dropped: list[str] = field(default_factory=list, compare=False, repr=False)

    def to_json(self) -> dict[str, Any]:
        """The entry as in the manifest (a ``source`` that is not valid UTF-8: its
        :func:`text_form`, and ``source_bytes`` to find the file again)."""
        raw = name_bytes(self.source)
        return {
            "path": self.path,
            "source": text_form(self.source),
            **({} if raw is None else {"source_bytes": raw}),
            "status": self.status,
            "error": self.error,
            "width": self.width,
            "height": self.height,
            "prediction": None if self.prediction is None else self.prediction.to_json(),
            "top5": [score.to_json() for score in self.top5],
            "target": None if self.target is None else self.target.to_json(),
            "methods": {name: record.to_json() for name, record in self.methods.items()},
            **({} if self.size is None else {"size": self.size}),
            **({} if self.mtime_ns is None else {"mtime_ns": self.mtime_ns}),
        }

    @classmethod
    def from_json(cls, value: object) -> InputRecord | None:
        """An entry read back; None when it is malformed, or its path is unsafe."""
        if not isinstance(value, dict):
            return None
        path, source = value.get("path"), value.get("source")
        if not is_safe_relpath(path) or not isinstance(source, str):
            return None
        raw = value.get("source_bytes")
        if isinstance(raw, str):
            source = from_name_bytes(raw)
        methods, dropped = {}, []
        for name, item in _mapping(value.get("methods")).items():
            record = MethodRecord.from_json(item)
            if record is not None:
                methods[str(name)] = record
            else:
                dropped.append(str(name))
        error = value.get("error")
        top5 = [ClassScore.from_json(item) for item in _sequence(value.get("top5"))]
        return cls(
            path=cast(str, path),
            source=source,
            status="ok" if value.get("status") == "ok" else "error",
            error=error if isinstance(error, str) else None,
            width=_int_or_none(value.get("width")),
            height=_int_or_none(value.get("height")),
            prediction=ClassScore.from_json(value.get("prediction")),
            top5=[score for score in top5 if score is not None],
            target=ClassScore.from_json(value.get("target")),
            methods=methods,
            size=_int_or_none(value.get("size")),
            mtime_ns=_int_or_none(value.get("mtime_ns")),
            dropped=dropped,
        )


@dataclass
class Totals:
    """The counts and times of a run (``device_*``: only when something was processed)."""

    inputs: int = 0
    ok: int = 0
    error: int = 0
    skipped: int = 0
    seconds: float | None = None
    device_seconds: float | None = None
    device_idle: float | None = None

    def to_json(self) -> dict[str, Any]:
        """The totals as in the manifest."""
        data: dict[str, Any] = {
            "inputs": self.inputs,
            "ok": self.ok,
            "error": self.error,
            "skipped": self.skipped,
            "seconds": self.seconds,
        }
        if self.device_seconds is not None and self.device_idle is not None:
            data["device_seconds"] = self.device_seconds
            data["device_idle"] = self.device_idle
        return data

    @classmethod
    def from_json(cls, value: object) -> Totals | None:
        """Totals read back (bad counts become 0, bad times None); None unless an object."""
        if not isinstance(value, dict):
            return None
        return cls(
            inputs=_int_or_none(value.get("inputs")) or 0,
            ok=_int_or_none(value.get("ok")) or 0,
            error=_int_or_none(value.get("error")) or 0,
            skipped=_int_or_none(value.get("skipped")) or 0,
            seconds=_float_or_none(value.get("seconds")),
            device_seconds=_float_or_none(value.get("device_seconds")),
            device_idle=_float_or_none(value.get("device_idle")),
        )

    @classmethod
    def of(cls, entries: Iterable[InputRecord], **rest: Any) -> Totals:
        """``inputs``, ``ok`` and ``error`` counted over ``entries``; the rest as given."""
        statuses = [entry.status for entry in entries]
        ok = statuses.count("ok")
        return cls(inputs=len(statuses), ok=ok, error=len(statuses) - ok, **rest)


@dataclass
class RunInfo:
    """The manifest's ``run`` section: the run's settings, times and totals.

    Attributes:
        model: The model (a file: its absolute path; the demo: its models, comma-separated).
        weights: The weights (a file: its absolute path; None: random or not recorded).
        methods: The methods, in column order.
        method_options: Each method's options as JSON.
        target: See :data:`Target` (None also: not recorded).
        device: Where it ran.
        precision: The engine's precision.
        compile: Whether the forward was compiled.
        channels_last: True when the model ran in channels-last memory format (written only
            then).
        batch_size: ``--batch-size`` (None: automatic).
        memory_budget: ``--memory-budget`` in bytes (None: the engine's default).
        fit: How images were fitted to the model's input (``--fit``; None: the model's own
            transform, or not recorded; written only when set).
        format: The overlays' format.
        class_names: Whether labels come from the model's class names.
        versions: Versions of this package and the libraries that shape its results.
        started: When the run started (ISO 8601, UTC).
        finished: When the manifest was saved.
        totals: The counts and times.
        rank: Under torchrun, in a per-rank manifest: the rank.
        world_size: Under torchrun: the number of processes.
        extra: Keys this version does not know, kept as read.
    """

    model: str | None = None
    weights: str | None = None
    methods: list[str] = field(default_factory=list)
    method_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    target: Target = None
    device: str | None = None
    precision: str | None = None
    compile: bool | None = None
    channels_last: bool | None = None
    batch_size: int | None = None
    memory_budget: int | None = None
    fit: str | None = None
    format: str = "png"
    class_names: bool = False
    versions: dict[str, str] = field(default_factory=dict)
    started: str | None = None
    rank: int | None = None
    world_size: int | None = None
    finished: str | None = None
    totals: Totals | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The section as in the manifest (``rank``, ``world_size``, ``finished`` and
        ``totals`` only when set)."""
        data: dict[str, Any] = {}
        for name in _RUN_FIELDS:
            value = getattr(self, name)
            if value is None and name in _WHEN_SET:
                continue
            data[name] = value.to_json() if isinstance(value, Totals) else value
        return {**data, **{k: v for k, v in self.extra.items() if k not in data}}

    @classmethod
    def from_json(cls, value: object) -> RunInfo:
        """The section read back; a field of the wrong type takes its default."""
        data = _mapping(value)
        found: dict[str, Any] = {}
        for name in _RUN_FIELDS:
            if name in data and _fits(name, data[name]):
                found[name] = data[name]
        found["methods"] = [m for m in _sequence(data.get("methods")) if isinstance(m, str)]
        found["method_options"] = {
            str(k): dict(v) for k, v in _mapping(data.get("method_options")).items() if _is_map(v)
        }
        found["versions"] = {str(k): str(v) for k, v in _mapping(data.get("versions")).items()}
        found["totals"] = Totals.from_json(data.get("totals"))
        extra = {k: v for k, v in data.items() if k not in _RUN_FIELDS}
        return cls(**found, extra=extra)


_RUN_FIELDS = tuple(f.name for f in fields(RunInfo) if f.name != "extra")
_WHEN_SET = frozenset({"rank", "world_size", "finished", "totals", "fit", "channels_last"})
_RUN_TYPES: dict[str, tuple[type, ...]] = {
    "model": (str,),
    "weights": (str,),
    "device": (str,),
    "precision": (str,),
    "compile": (bool,),
    "channels_last": (bool,),
    "fit": (str,),
    "format": (str,),
    "class_names": (bool,),
    "started": (str,),
    "finished": (str,),
}


def _fits(name: str, value: object) -> bool:
    """Whether a run field read from JSON has a type the field accepts."""
    if name == "target":
        return value in _TARGET_WORDS or value is None or is_int(value)
    if name in ("batch_size", "memory_budget", "rank", "world_size"):
        return value is None or is_int(value)
    kinds = _RUN_TYPES.get(name)
    return kinds is not None and (value is None or isinstance(value, kinds))


@dataclass
class Manifest:
    """A whole manifest: the run section and one record per input, by path."""

    run: RunInfo
    inputs: dict[str, InputRecord]

    def to_json(self, *, sort: bool = True) -> dict[str, Any]:
        """The manifest as JSON data, inputs sorted by path (``sort=False``: in their order)."""
        paths = sorted(self.inputs) if sort else list(self.inputs)
        entries = [self.inputs[path].to_json() for path in paths]
        return {"format": FORMAT, "run": self.run.to_json(), "inputs": entries}

    def methods(self) -> list[str]:
        """The run's methods, then those only found in the entries, in first-seen order."""
        names = list(self.run.methods)
        for entry in self.inputs.values():
            names.extend(m for m in entry.methods if m not in names)
        return names


# ---- reading and writing ---------------------------------------------------------------------


def write_manifest(
    folder: Path, manifest: Manifest, name: str = MANIFEST_NAME, *, sort: bool = True
) -> Path:
    """Write ``folder/manifest.json`` (or another ``name``, e.g. a rank's) atomically.

    The inputs are sorted by path, as ``saliency explain`` lists them; ``sort=False`` keeps
    their order (explanations written from Python: the order of the batch).
    """
    data = valid_text(manifest.to_json(sort=sort))
    text = json.dumps(data, indent=2, ensure_ascii=False, allow_nan=False)
    return write_text_atomic(folder / name, text + "\n")


def read_manifest(folder: Path, name: str = MANIFEST_NAME) -> Manifest | None:
    """The manifest of a run folder (or another file ``name`` in it); None when there is none.

    Entries whose path is unsafe or repeated are dropped: they can only come from a hand-edited
    file, and nothing is ever read or written through them. Manifests of every earlier version
    read back (their ``run.target`` values are those of :data:`Target`).

    Raises:
        ManifestError: The file exists but cannot be read or is not a format-1 manifest.
    """
    path = folder / name
    data = _read_json(path)
    if data is None:
        return None
    if not isinstance(data, dict):
        raise ManifestError(f"{path}: expected an object with an 'inputs' list")
    if data.get("format") != FORMAT:
        raise ManifestError(
            f"{path}: manifest format {data.get('format')!r} is not supported; accepted: a "
            f"format-{FORMAT} saliency manifest"
        )
    if not isinstance(data.get("run"), dict) or not isinstance(data.get("inputs"), list):
        raise ManifestError(f"{path} lacks its 'run' object or its 'inputs' list")
    inputs: dict[str, InputRecord] = {}
    for entry in data["inputs"]:
        record = InputRecord.from_json(entry)
        if record is not None and record.path not in inputs:
            inputs[record.path] = record
    return Manifest(RunInfo.from_json(data["run"]), inputs)


def read_metrics(folder: Path) -> dict[str, Any] | None:
    """``metrics.json`` of a run folder when it is an object; None when absent.

    Raises:
        ManifestError: It exists but is not JSON.
    """
    data = _read_json(folder / METRICS_NAME)
    return data if isinstance(data, dict) else None


def _read_json(path: Path) -> Any:
    """The JSON in ``path``; None when there is no such file."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # a FIFO would block, a device never end
            raise ManifestError(f"{path}: not a regular file (a folder, FIFO or device)")
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{path}: cannot be read as JSON ({exc})") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{path}: cannot be read as JSON: not valid JSON ({exc})") from exc
    except RecursionError:
        raise ManifestError(f"{path}: cannot be read as JSON: nested too deeply") from None
    try:
        return valid_text(data)  # a \\udcff escape is a lone surrogate
    except RecursionError:
        raise ManifestError(f"{path}: cannot be read as JSON: nested too deeply") from None


def valid_text(value: Any) -> Any:
    """JSON data with every string (keys too) in its :func:`text_form`: what a manifest holds."""
    if isinstance(value, str):
        return text_form(value)
    if isinstance(value, dict):
        return {text_form(str(k)): valid_text(v) for k, v in value.items()}
    if isinstance(value, list):
        return [valid_text(v) for v in value]
    return value



# ---- runs under torchrun: the per-rank manifests -----------------------------------------------


def rank_manifest_name(rank: int) -> str:
    """The file name of rank ``rank``'s manifest: ``manifest.rank-R.json``."""
    return f"manifest.rank-{rank}.json"


def rank_manifest_files(folder: Path) -> dict[int, Path]:
    """The per-rank manifests in ``folder``, by rank (in rank order)."""
    try:
        names = os.listdir(folder)
    except OSError:
        return {}
    found = {int(m[1]): folder / name for name in names if (m := _RANK_FILE.fullmatch(name))}
    return dict(sorted(found.items()))


@dataclass
class Earlier:
    """What earlier runs left in a run folder.

    Attributes:
        manifest: ``manifest.json`` updated with the per-rank manifests of its run (None: none).
        warnings: Files that could not be read, and what is done instead.
    """

    manifest: Manifest | None
    warnings: list[str] = field(default_factory=list)


def read_earlier(folder: Path) -> Earlier:
    """``manifest.json`` with the records of the per-rank manifests of the same run (see
    :func:`fold`); unreadable files are warnings."""
    warnings: list[str] = []

    def read(name: str, instead: str) -> Manifest | None:
        try:
            return read_manifest(folder, name)
        except ManifestError as exc:
            warnings.append(f"{exc}; {instead}")
            return None

    base = read(MANIFEST_NAME, "starting a new manifest")
    parts = [read(path.name, "ignoring it") for path in rank_manifest_files(folder).values()]
    return Earlier(fold(base, [part for part in parts if part is not None]), warnings)


def fold(base: Manifest | None, parts: Sequence[Manifest]) -> Manifest | None:
    """``base`` (``manifest.json``) with the records of the per-rank manifests of its run.

    A per-rank manifest belongs to ``base``'s run when both have the same ``run.started``.
    Without ``base``, the latest-started per-rank manifests are used.
    """
    started = base.run.started if base is not None else max(
        (str(part.run.started) for part in parts), default=None
    )
    current = [part for part in parts if part.run.started == started]
    if not current:
        return base
    run = base.run if base is not None else without_rank(current[0].run)
    entries = dict(base.inputs) if base is not None else {}
    for part in current:
        entries.update(part.inputs)
    return Manifest(run, entries)


def without_rank(run: RunInfo) -> RunInfo:
    """A per-rank run section without what only a rank has (``rank``, ``world_size``)."""
    return dataclasses.replace(run, rank=None, world_size=None)


def merge(run: RunInfo, kept: Mapping[str, InputRecord], parts: Sequence[Manifest]) -> Manifest:
    """The run's ``manifest.json`` from every rank's manifest.

    Args:
        run: The run section (rank 0's, without ``finished`` and ``totals``).
        kept: Records of earlier inputs the run does not name.
        parts: Every rank's manifest (its inputs only, its totals), in rank order.

    Returns:
        Every input once; ``inputs``, ``ok`` and ``error`` counted over them, ``skipped`` and
        ``device_seconds`` summed over the ranks, ``seconds`` the slowest rank's,
        ``device_idle`` their mean; the ranks' device and ``world_size`` in the run section.
    """
    entries = dict(kept)
    for part in parts:
        entries.update(part.inputs)
    totals = [part.run.totals or Totals() for part in parts]
    merged = Totals.of(
        entries.values(),
        skipped=sum(t.skipped for t in totals),
        seconds=max((t.seconds or 0.0 for t in totals), default=0.0),
    )
    idle = [t.device_idle for t in totals if t.device_idle is not None]
    if totals and len(idle) == len(totals):
        merged.device_seconds = round(sum(t.device_seconds or 0.0 for t in totals), 3)
        merged.device_idle = round(sum(idle) / len(idle), 4)
    section = dataclasses.replace(
        without_rank(run),
        device=merged_device([str(part.run.device) for part in parts]),
        world_size=len(parts),
        finished=now(),
        totals=merged,
    )
    return Manifest(section, entries)


def merged_device(devices: Sequence[str]) -> str:
    """The ranks' devices in one word: the device if one, its type (``cuda``) if one type."""
    distinct = list(dict.fromkeys(devices))
    if len(distinct) == 1:
        return distinct[0]
    types = list(dict.fromkeys(device.split(":")[0] for device in distinct))
    return types[0] if len(types) == 1 else ", ".join(distinct)


# ---- top classes, options, versions --------------------------------------------------------


def top_probabilities(
    outputs: Tensor, k: int = TOP_CLASSES
) -> tuple[list[list[int]], list[list[float]]]:
    """The ``k`` most probable classes of each row of ``(N, K)`` outputs and their
    probabilities, most probable first.

    A row that already is a probability distribution (non-negative, summing to 1) is taken as
    it is; other rows (logits) go through a softmax. Computed where ``outputs`` are.
    """
    scores = outputs.detach().float()
    is_distribution = (scores >= 0).all(dim=1) & ((scores.sum(dim=1) - 1.0).abs() < 1e-3)
    probabilities = torch.where(is_distribution[:, None], scores, scores.softmax(dim=1))
    top = probabilities.topk(min(k, probabilities.shape[1]), dim=1)
    return top.indices.tolist(), top.values.tolist()


def top_classes(
    outputs: Tensor, labels: Sequence[str] | None, k: int = TOP_CLASSES
) -> list[list[ClassScore]]:
    """:func:`top_probabilities` as the manifest's ``top5`` records of each row."""
    indices, probabilities = top_probabilities(outputs, k)
    return [
        [class_score(i, p, labels) for i, p in zip(row, values, strict=True)]
        for row, values in zip(indices, probabilities, strict=True)
    ]


def class_score(index: int, probability: float, labels: Sequence[str] | None) -> ClassScore:
    """A predicted class as recorded: its label, its probability rounded to 6 digits."""
    rounded = round(probability, 6) if math.isfinite(probability) else None
    return ClassScore(index, label_of(index, labels), rounded)


def class_of(index: int, labels: Sequence[str] | None) -> ClassScore:
    """A target class: its index and label."""
    return ClassScore(index, label_of(index, labels))


def label_of(index: int, labels: Sequence[str] | None) -> str | None:
    """Class ``index``'s label, or None without (enough) class names."""
    return str(labels[index]) if labels is not None and 0 <= index < len(labels) else None


def json_safe(value: Any) -> Any:
    """Options made JSON-serialisable: tensors and modules are described, not dumped."""
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, Tensor):
        return {"tensor": list(value.shape), "dtype": str(value.dtype).removeprefix("torch.")}
    if isinstance(value, nn.Module):
        return {"module": type(value).__name__}
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return repr(value)


def versions() -> dict[str, str]:
    """Versions of this package and the libraries that shape its results."""
    found = {"python": platform.python_version()}
    for distribution in ("saliency-kit", "torch", "torchvision"):
        try:
            found[distribution] = version(distribution)
        except PackageNotFoundError:
            found[distribution] = "not installed"
    return found


def now() -> str:
    """The current UTC time, ISO 8601 to the second."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# ---- output files ------------------------------------------------------------------------------


def encode_overlay(picture: PIL.Image.Image, extension: str) -> bytes:
    """An overlay's file bytes in one of :data:`FORMATS` (fast encoder settings)."""
    if extension == "png" and encodes(picture):
        return encode_png(picture)
    buffer = io.BytesIO()
    picture.save(buffer, **_ENCODER_OPTIONS[extension])
    return buffer.getvalue()


def write_overlay(path: Path, picture: PIL.Image.Image, extension: str = "png") -> Path:
    """Write an overlay (or an original) image atomically."""
    data = encode_overlay(picture, extension)
    return write_atomic(path, lambda handle: handle.write(data))


_SIGNATURES: Mapping[str, tuple[bytes, bytes]] = {
    # (how the file starts, how it ends): PNG's signature and IEND chunk, JPEG's SOI and EOI
    "png": (b"\x89PNG\r\n\x1a\n", b"IEND\xaeB`\x82"),
    "jpg": (b"\xff\xd8\xff", b"\xff\xd9"),
    "webp": (b"RIFF", b""),
    "npy": (b"\x93NUMPY", b""),
}


def looks_complete(path: Path, extension: str) -> bool:
    """Whether an output file looks whole, from its first and last bytes only (cheap): the
    format's signature, and its end marker (PNG, JPEG) or its declared length (WebP)."""
    head, tail = _SIGNATURES[extension]
    try:
        with open(path, "rb") as handle:
            start = handle.read(12)
            size = os.fstat(handle.fileno()).st_size
            handle.seek(max(0, size - len(tail)))
            end = handle.read()
    except OSError:
        return False
    if not start.startswith(head) or not end.endswith(tail):
        return False
    if extension == "webp":  # RIFF: little-endian length of what follows the first 8 bytes
        return start[8:12] == b"WEBP" and int.from_bytes(start[4:8], "little") + 8 == size
    return size > len(head) + len(tail)


def write_raw(path: Path, attributions: np.ndarray) -> Path:
    """Write raw attributions as float32 ``.npy`` atomically."""
    array = np.ascontiguousarray(attributions, dtype=np.float32)
    return write_atomic(path, lambda handle: np.save(handle, array))


# ---- helpers ---------------------------------------------------------------------------------


def _float_or_none(value: object) -> float | None:
    """A finite real number as a float; anything else None."""
    if not is_real(value) or not math.isfinite(cast(float, value)):
        return None
    return float(cast(float, value))


def _int_or_none(value: object) -> int | None:
    return cast(int, value) if is_int(value) else None


def _mapping(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _sequence(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def _is_map(value: object) -> bool:
    return isinstance(value, dict)
