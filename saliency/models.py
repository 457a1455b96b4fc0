"""Models by name or file: torchvision classifiers (weights through torchvision's own cache),
local state-dict files (``torch.load(weights_only=True)``), TorchScript files, and models from a
registered ``"prefix:name"`` source.

Model sources are found like method plugins, through the entry-point group
``saliency.model_sources`` (name = prefix, value = ``module:loader``; the ``demo:`` source of the
shipped demo models is declared there too), or added at run time by
:func:`register_model_source`. A source's module is imported when a model of it is loaded, and
torchvision when a torchvision model is (it takes seconds to import).
"""

from __future__ import annotations

import difflib
import os
import re
import stat
import warnings
import zipfile
from collections.abc import Callable, Mapping
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from types import ModuleType
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from saliency.class_names import remember_class_names
from saliency.errors import ModelLoadError, accepted
from saliency.images import ImageTransform, PathArg, Preprocess

__all__ = [
    "MODEL_SOURCE_GROUP",
    "LoadedModel",
    "ModelSourceLoader",
    "WeightsArg",
    "list_model_sources",
    "load_model",
    "register_model_source",
    "unregister_model_source",
]

WeightsArg = str | os.PathLike[str] | None


class LoadedModel(NamedTuple):
    """A model ready for :func:`saliency.explain`, with what is known about its inputs.

    Attributes:
        model: The module, in eval mode.
        transform: Its input pipeline (None when unknown, e.g. TorchScript files).
        class_names: Output class names (None when unknown).
    """

    model: nn.Module
    transform: Preprocess | ImageTransform | None
    class_names: tuple[str, ...] | None


ModelSourceLoader = Callable[[str, WeightsArg], LoadedModel]
"""A model source: ``loader(name_after_prefix, weights) -> LoadedModel``.

:func:`load_model` moves the returned model to the requested device and puts it in eval
mode; the loader raises :class:`~saliency.errors.ModelLoadError` for names it does not know.
"""

MODEL_SOURCE_GROUP = "saliency.model_sources"
"""The entry-point group of model sources: ``prefix = "package.module:loader"``."""

_SOURCES: dict[str, ModelSourceLoader | EntryPoint] = {}
_discovered = False
_PREFIX = re.compile(r"[A-Za-z][A-Za-z0-9_-]+")
_SOURCE_NAME = re.compile(r"([A-Za-z][A-Za-z0-9_-]+):(.*)", re.DOTALL)
_STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model")
_WEIGHT_SUFFIXES = frozenset({".pt", ".pth", ".pkl", ".bin", ".ckpt", ".tar", ".safetensors"})


def register_model_source(prefix: str, loader: ModelSourceLoader) -> None:
    """Make ``load_model("prefix:name")`` call ``loader("name", weights)``.

    Args:
        prefix: At least two characters: a letter, then letters, digits, ``_`` or ``-``.
        loader: Builds the :class:`LoadedModel` (see :data:`ModelSourceLoader`).

    Raises:
        ModelLoadError: The prefix is malformed or already registered.
    """
    if not isinstance(prefix, str) or not _PREFIX.fullmatch(prefix):
        raise ModelLoadError(
            f"model source prefix {prefix!r} must be a letter followed by at least one letter, "
            "digit, '_' or '-'"
        )
    _discover_sources()
    if prefix in _SOURCES:
        raise ModelLoadError(f"model source prefix {prefix!r} is already registered")
    _SOURCES[prefix] = loader


def unregister_model_source(prefix: str) -> None:
    """Remove a registered model source (no error if it is absent)."""
    _discover_sources()
    _SOURCES.pop(prefix, None)


def list_model_sources() -> tuple[str, ...]:
    """The registered ``"prefix:"`` model sources, sorted."""
    _discover_sources()
    return tuple(sorted(_SOURCES))


def _discover_sources() -> None:
    """Record the entry points of :data:`MODEL_SOURCE_GROUP` once (loaded when first used)."""
    global _discovered
    if _discovered:
        return
    _discovered = True
    for entry_point in entry_points(group=MODEL_SOURCE_GROUP):
        if not _PREFIX.fullmatch(entry_point.name) or entry_point.name in _SOURCES:
            warnings.warn(
                f"saliency model source {entry_point.name!r} ({entry_point.value}) was skipped: "
                "its prefix is malformed or already registered",
                RuntimeWarning,
                stacklevel=3,
            )
            continue
        _SOURCES[entry_point.name] = entry_point


def load_model(
    name_or_path: PathArg,
    weights: WeightsArg = "DEFAULT",
    *,
    device: str | torch.device | None = None,
    trust_pickle: bool = False,
) -> LoadedModel:
    """Load a classification model by torchvision name, from a file, or from a model source.

    Args:
        name_or_path: A torchvision classification model name (``"resnet18"``), a TorchScript
            file (or, with ``trust_pickle``, a pickled ``nn.Module``), or ``"prefix:name"`` for
            a registered model source.
        weights: For a torchvision name: ``"DEFAULT"``, a weights enum member name
            (``"IMAGENET1K_V1"`` or ``"ResNet18_Weights.IMAGENET1K_V1"``; fetched through
            torchvision's cache under ``torch.hub.get_dir()``), a path to a local state-dict
            file, or None for random initialisation. Ignored for files.
        device: Where to move the model (None: stay on CPU).
        trust_pickle: Allow full unpickling of files (arbitrary code: trusted files only).

    Returns:
        The model in eval mode, its input transform and its class names (either may be None).

    Raises:
        ModelLoadError: Anything that prevents loading, with what was wrong and what to do.
    """
    loaded = _dispatch(name_or_path, weights, trust_pickle)
    model = loaded.model
    if not isinstance(model, nn.Module):
        raise ModelLoadError(f"{name_or_path!s} did not give an nn.Module but {type(model)}")
    if device is not None:
        try:
            model = model.to(torch.device(device))
        except (RuntimeError, AssertionError, ValueError) as exc:
            raise ModelLoadError(f"cannot move the model to device {device!r}: {exc}") from exc
    # explain() finds the class names of the model again for titles and legends
    remember_class_names(model, loaded.class_names)
    return LoadedModel(model.eval(), loaded.transform, loaded.class_names)


def _dispatch(name_or_path: PathArg, weights: WeightsArg, trust_pickle: bool) -> LoadedModel:
    """Pick the loader for ``name_or_path``."""
    if isinstance(name_or_path, os.PathLike):
        return _load_model_file(Path(name_or_path), trust_pickle)
    if not isinstance(name_or_path, str):
        raise ModelLoadError(
            f"name_or_path must be a str or a path, got {type(name_or_path).__name__}"
        )
    source = _SOURCE_NAME.fullmatch(name_or_path)
    # "prefix:name" is never a torchvision name: sources are dispatched without importing it
    if source is not None and not _explicit_path(name_or_path):
        return _load_from_source(source.group(1), source.group(2), weights)
    if name_or_path in _torchvision_names():
        return _load_torchvision(name_or_path, weights, trust_pickle)
    path = model_file(name_or_path)
    if path is not None:
        return _load_model_file(path, trust_pickle)
    if _looks_like_path(name_or_path):
        raise ModelLoadError(f"model file not found: {name_or_path}")
    raise ModelLoadError(_unknown_name_message(name_or_path))


def _load_from_source(prefix: str, rest: str, weights: WeightsArg) -> LoadedModel:
    """Call the loader registered for ``prefix`` (loading its entry point on first use)."""
    _discover_sources()
    loader = _SOURCES.get(prefix)
    if isinstance(loader, EntryPoint):
        try:
            loader = _SOURCES[prefix] = loader.load()
        except Exception as exc:  # a broken plugin must not look like an unknown name
            raise ModelLoadError(
                f"model source {prefix!r} ({loader.value}) failed to load: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
    if loader is None:
        registered = accepted(f"{p}:" for p in list_model_sources()) or "none"
        raise ModelLoadError(
            f"unknown model source prefix {prefix!r} in {prefix}:{rest}; registered prefixes: "
            f"{registered}"
        )
    loaded = loader(rest, weights)
    if not isinstance(loaded, LoadedModel):
        raise ModelLoadError(
            f"model source {prefix!r} returned {type(loaded).__name__}, not a LoadedModel"
        )
    return loaded


def _torchvision() -> ModuleType:
    """``torchvision.models``, imported on first use."""
    import torchvision.models

    return torchvision.models


def _torchvision_names() -> list[str]:
    """torchvision's classification model names."""
    models = _torchvision()
    return list(models.list_models(module=models))


def model_file(name: str) -> Path | None:
    """The file that :func:`load_model` would load for the string ``name``, or None (a model
    source, a torchvision name, or nothing there).

    Model sources come first: a file named ``demo:shapes`` in the working folder is loaded only
    as ``./demo:shapes`` (loading a TorchScript or pickle file runs its code, so a stray file
    must never win over a name). A torchvision name also wins over a file of that name.
    """
    if _SOURCE_NAME.fullmatch(name) is not None and not _explicit_path(name):
        return None
    if name in _torchvision_names():
        return None
    path = Path(name)
    return path if path.exists() else None


def _explicit_path(text: str) -> bool:
    """Whether a ``prefix:name`` string is written as a path (``./x:y``, ``/x:y``, ``~/x:y``)."""
    return text.startswith(("/", "./", "../", "~", os.sep, f".{os.sep}", f"..{os.sep}"))


def _looks_like_path(text: str) -> bool:
    """Whether a string that is not a model name was probably meant as a file path."""
    return "/" in text or os.sep in text or Path(text).suffix.lower() in _WEIGHT_SUFFIXES


def _unknown_name_message(name: str) -> str:
    """Error message for a name that is neither a model nor a file."""
    close = difflib.get_close_matches(name.lower(), _torchvision_names(), n=5, cutoff=0.5)
    hint = f"close names: {accepted(close)}; " if close else ""
    return (
        f"unknown model {name!r}: not a torchvision classification model name, an existing "
        f"file or a registered 'prefix:' source; {hint}see all names with "
        "torchvision.models.list_models(module=torchvision.models)"
    )


# ---- torchvision models ---------------------------------------------------------------------


def _weights_enum(name: str) -> Any:
    """The torchvision weights enum class of a model."""
    return _torchvision().get_model_weights(name)


def _default_transform(name: str) -> Preprocess | None:
    """The model's DEFAULT weights' transform, as a Preprocess (None if it has none)."""
    try:
        return Preprocess.from_torchvision(_weights_enum(name).DEFAULT.transforms())
    except (ModelLoadError, ValueError, AttributeError, TypeError):
        return None


def _default_categories(name: str) -> tuple[str, ...] | None:
    """The model's DEFAULT weights' class names (None if unknown)."""
    try:
        categories = _weights_enum(name).DEFAULT.meta.get("categories")
    except (ValueError, AttributeError):
        return None
    return tuple(categories) if categories else None


def _load_torchvision(name: str, weights: WeightsArg, trust_pickle: bool) -> LoadedModel:
    """Load a torchvision classifier with enum weights, a state-dict file or random weights."""
    if weights is None:
        model = _torchvision().get_model(name, weights=None)
        return LoadedModel(model, _default_transform(name), None)
    if isinstance(weights, str):
        member = _weights_member(name, weights)
        if member is not None:
            return _load_enum_weights(name, member)
        if not Path(weights).exists() and not _looks_like_path(weights):
            raise ModelLoadError(_unknown_weights_message(name, weights))
    if isinstance(weights, (str, os.PathLike)):
        return _load_state_dict_weights(name, Path(weights), trust_pickle)
    raise ModelLoadError(f"weights must be a str, a path or None, got {type(weights).__name__}")


def _weights_member(name: str, weights: str) -> Any | None:
    """The enum member named by ``weights`` (``DEFAULT``, ``X`` or ``Enum.X``), else None."""
    enum = _weights_enum(name)
    member_name = weights
    if "." in weights:
        enum_name, _, member_name = weights.partition(".")
        if enum_name != enum.__name__:
            return None
    for key, member in enum.__members__.items():
        if key.upper() == member_name.upper():
            return member
    return None


def _unknown_weights_message(name: str, weights: str) -> str:
    """Error message for a weights name that is not a member of the model's enum."""
    enum = _weights_enum(name)
    names = list(enum.__members__)
    full = [f"{enum.__name__}.{n}" for n in names]
    return (
        f"unknown weights {weights!r} for {name}: accepted names are {accepted(names)} (or "
        f"{accepted(full)}), a path to a local state-dict file, or None for random "
        "initialisation"
    )


def _load_enum_weights(name: str, member: Any) -> LoadedModel:
    """torchvision model with enum weights, through torchvision's download cache."""
    try:
        model = _torchvision().get_model(name, weights=member)
    except (OSError, RuntimeError, EOFError, ValueError) as exc:
        raise ModelLoadError(_download_failed_message(name, member, exc)) from exc
    transform = Preprocess.from_torchvision(member.transforms())
    categories = member.meta.get("categories")
    return LoadedModel(model, transform, tuple(categories) if categories else None)


def _download_failed_message(name: str, member: Any, exc: BaseException) -> str:
    """What went wrong fetching ``member``'s weights, and how to continue offline."""
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    cached = cache / os.path.basename(str(member.url))
    what = f"{type(member).__name__}.{member.name}"
    if cached.is_file():
        problem = f"the cached weights file {cached} could not be loaded ({exc}); delete it to "
        problem += "download it again"
    else:
        problem = (
            f"the weights could not be downloaded from {member.url} ({type(exc).__name__}: "
            f"{exc}) nor found in the torch hub cache {cache} (torch.hub.get_dir() is "
            f"{torch.hub.get_dir()}; expected file {cached.name})"
        )
    return (
        f"cannot load {name} with weights {what}: {problem}. To work offline, copy the file "
        f"into {cache}, pass weights=PATH to a local state-dict file (e.g. "
        f"load_model({name!r}, weights='{name}.pth')), or weights=None for random "
        "initialisation"
    )


def _load_state_dict_weights(name: str, path: Path, trust_pickle: bool) -> LoadedModel:
    """torchvision architecture + a local state-dict file."""
    state = read_state_dict(path, trust_pickle)
    models = _torchvision()
    model = built_for_loading(lambda: models.get_model(name, weights=None))
    num_classes = infer_num_classes(model.state_dict(), state)
    if num_classes is not None:
        model = built_for_loading(
            lambda: models.get_model(name, weights=None, num_classes=num_classes)
        )
    load_strict(model, state, path)
    categories = _default_categories(name)
    outputs = num_classes if num_classes is not None else len(categories or ())
    class_names = categories if categories is not None and len(categories) == outputs else None
    return LoadedModel(model, _default_transform(name), class_names)


def _require_regular_file(path: Path, what: str) -> None:
    """Raise unless ``path`` is a regular file (a folder, a FIFO or a device such as
    ``/dev/zero`` would fail late, block, or be read forever)."""
    if path.is_dir():
        raise ModelLoadError(f"{path} is a directory, not {what}")
    if not stat.S_ISREG(path.stat().st_mode):
        raise ModelLoadError(f"{path} is not a regular file (a FIFO, socket or device), not {what}")


def _torch_load(path: Path, trust_pickle: bool) -> Any:
    """``torch.load`` on CPU with clear errors (weights only unless ``trust_pickle``)."""
    if not path.exists():
        raise ModelLoadError(f"weights file not found: {path}")
    _require_regular_file(path, "a weights file")
    if _is_torchscript(path):
        raise ModelLoadError(
            f"{path} is a TorchScript file: load it as the model itself, load_model({str(path)!r})"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except Exception as exc:
        if not trust_pickle and "weights only load failed" in str(exc).lower():
            raise ModelLoadError(
                f"{path} contains pickled Python objects that weights-only loading refuses: "
                "it needs full unpickling, which trust_pickle=True does (it can run arbitrary "
                "code: use it only for files you trust)"
            ) from exc
        raise ModelLoadError(
            f"{path} is not a readable PyTorch file ({type(exc).__name__}: {exc})"
        ) from exc


def read_state_dict(path: Path, trust_pickle: bool) -> dict[str, Tensor]:
    """A state dict from a file: plain, wrapped, DataParallel-prefixed or a pickled module, or
    a ``.safetensors`` file."""
    obj = _load_safetensors(path) if path.suffix.lower() == ".safetensors" else None
    if obj is None:
        obj = _torch_load(path, trust_pickle)
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if isinstance(obj, Mapping):
        for key in _STATE_DICT_KEYS:
            inner = obj.get(key)
            if isinstance(inner, nn.Module):
                inner = inner.state_dict()
            if isinstance(inner, Mapping):
                obj = inner
                break
    if not isinstance(obj, Mapping) or not obj:
        raise ModelLoadError(
            f"{path} does not contain a state dict (a mapping of parameter names to tensors), "
            f"got {type(obj).__name__}"
        )
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if bad:
        raise ModelLoadError(
            f"{path} is not a state dict: entries that are not name -> tensor: {accepted(bad[:5])}"
        )
    state = dict(obj)
    if all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def _load_safetensors(path: Path) -> dict[str, Tensor]:
    """The tensors of a ``.safetensors`` file (no code runs while reading it)."""
    if not path.exists():
        raise ModelLoadError(f"weights file not found: {path}")
    _require_regular_file(path, "a weights file")
    try:
        from safetensors.torch import load_file
    except ImportError as exc:
        raise ModelLoadError(
            f"{path} is a .safetensors file: reading it needs the safetensors package "
            "(pip install safetensors)"
        ) from exc
    try:
        return dict(load_file(str(path), device="cpu"))
    except Exception as exc:
        raise ModelLoadError(
            f"{path} is not a readable safetensors file ({type(exc).__name__}: {exc})"
        ) from exc


def infer_num_classes(expected: Mapping[str, Tensor], state: Mapping[str, Tensor]) -> int | None:
    """The class count of ``state`` when only its classifier's output size differs, else None."""
    counts = set()
    for key, tensor in expected.items():
        loaded = state.get(key)
        if loaded is None or loaded.shape == tensor.shape:
            continue
        if loaded.ndim != tensor.ndim or loaded.ndim == 0 or loaded.shape[1:] != tensor.shape[1:]:
            return None
        counts.add(int(loaded.shape[0]))
    return counts.pop() if len(counts) == 1 else None


def built_for_loading(build: Callable[[], nn.Module]) -> nn.Module:
    """``build()`` without its random initialisation, for a strict state-dict load to fill
    (:func:`load_strict`): drawing random weights is most of building a model (0.2 s of
    0.25 s for ResNet-18 on a 2-core CPU), and the load overwrites all of them.

    Random fills (``nn.init``'s random initialisers, ``Tensor.normal_``, ``uniform_``, …) are
    skipped while ``build()`` runs in this thread (a torch function mode); everything else
    (zeros, ones, computed buffers) runs as usual. If a skipped tensor is not a state-dict
    entry, or the model holds a tensor the state dict does not (a non-persistent buffer, a
    tensor kept as a plain attribute), it is built again as usual.

    (The meta device would skip the same work, but its random fills import ``torch._dynamo``,
    1.5 s, which the console otherwise never imports.)
    """
    mode = _RandomFillsSkipped()
    with mode:
        model = build()
    entries = list(model.state_dict(keep_vars=True).values())
    skipped = {t.untyped_storage().data_ptr() for t in mode.skipped}
    held = {t.untyped_storage().data_ptr() for t in entries}
    if skipped <= held and _state_dict_covers(model, entries):
        return model
    return build()


class _RandomFillsSkipped(TorchFunctionMode):
    """Random in-place fills return their tensor untouched (and are recorded)."""

    def __init__(self) -> None:
        super().__init__()
        self.skipped: list[Tensor] = []

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        if func in _RANDOM_FILLS:
            # nn.init passes its tensor by keyword, Tensor methods as self
            filled = args[0] if args else kwargs.get("tensor")
            if isinstance(filled, Tensor):
                self.skipped.append(filled)
                return filled
        return func(*args, **kwargs)


_RANDOM_INITIALISERS = [
    "kaiming_normal_",
    "kaiming_uniform_",
    "normal_",
    "orthogonal_",
    "sparse_",
    "trunc_normal_",
    "uniform_",
    "xavier_normal_",
    "xavier_uniform_",
]
_RANDOM_TENSOR_FILLS = [
    "normal_",
    "uniform_",
    "random_",
    "bernoulli_",
    "exponential_",
    "log_normal_",
    "cauchy_",
    "geometric_",
]
_RANDOM_FILLS = frozenset(
    [getattr(nn.init, name) for name in _RANDOM_INITIALISERS]
    + [getattr(Tensor, name) for name in _RANDOM_TENSOR_FILLS]
)


_MODULE_REGISTERS = frozenset({"_parameters", "_buffers", "_modules"})


def _state_dict_covers(model: nn.Module, entries: list[Tensor]) -> bool:
    """Whether every tensor of ``model`` is one of ``entries``, its state dict's tensors."""
    held = {id(t) for t in entries}
    for module in model.modules():
        tensors = [*module._parameters.values(), *module._buffers.values()]
        if any(t is not None and id(t) not in held for t in tensors):
            return False  # non-persistent buffer
        for name, value in vars(module).items():
            if name in _MODULE_REGISTERS:
                continue
            items = value.values() if isinstance(value, dict) else value
            if isinstance(value, Tensor) or (
                isinstance(value, list | tuple | dict) and any(isinstance(v, Tensor) for v in items)
            ):
                return False  # a tensor outside the state dict
    return True


def load_strict(model: nn.Module, state: Mapping[str, Tensor], path: Path) -> None:
    """``load_state_dict(strict=True)``, with a readable error naming keys that do not fit."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [
        f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or wrong:
        raise ModelLoadError(
            f"{path} does not fit {type(model).__name__}: "
            + "; ".join(
                f"{what} ({len(keys)}): {', '.join(keys[:5])}{', ...' if len(keys) > 5 else ''}"
                for what, keys in (
                    ("missing keys", missing),
                    ("unexpected keys", unexpected),
                    ("shape mismatches (file != model)", wrong),
                )
                if keys
            )
        )
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelLoadError(f"{path} does not fit {type(model).__name__}: {exc}") from exc


# ---- model files ----------------------------------------------------------------------------


def _is_torchscript(path: Path) -> bool:
    """Whether ``path`` is a TorchScript archive (a zip with ``constants.pkl``)."""
    try:
        if not zipfile.is_zipfile(path):
            return False
        with zipfile.ZipFile(path) as archive:
            return any(n.endswith("/constants.pkl") for n in archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def _load_model_file(path: Path, trust_pickle: bool) -> LoadedModel:
    """A TorchScript file, or (with ``trust_pickle``) a pickled nn.Module."""
    if not path.exists():
        raise ModelLoadError(f"model file not found: {path}")
    _require_regular_file(path, "a model file")
    if _is_torchscript(path):
        try:
            return LoadedModel(torch.jit.load(str(path), map_location="cpu"), None, None)
        except Exception as exc:
            raise ModelLoadError(f"cannot load TorchScript file {path}: {exc}") from exc
    obj = _torch_load(path, trust_pickle)
    if isinstance(obj, nn.Module):
        return LoadedModel(obj, None, None)
    if isinstance(obj, Mapping):
        raise ModelLoadError(
            f"{path} holds a state dict (weights only): an architecture name is needed, e.g. "
            f"load_model('resnet18', weights={str(path)!r})"
        )
    raise ModelLoadError(
        f"{path} holds a {type(obj).__name__}, not a model: pass a TorchScript file, or an "
        "architecture name with weights=PATH for a state dict"
    )
