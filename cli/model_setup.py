"""Loading the model for a run and checking, before any work, that it can do that run.

Every problem found here is a :class:`~saliency.cli.settings.UsageError` (exit code 2) whose
message says what was wrong and what is accepted: an unknown model or weights (or weights that
cannot be fetched offline), an unusable device, a model whose output is not ``(N, K)`` scores,
a target outside its classes, a layer it does not have.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import PIL.Image
import torch
import torchvision
from torch import Tensor, nn

from saliency.cli.model_input import ModelInput
from saliency.cli.settings import UsageError
from saliency.errors import LayerNotFoundError, ModelLoadError, ModelOutputError
from saliency.layers import find_layer, layer_name
from saliency.methods.base import Method
from saliency.models import list_model_sources, load_model
from saliency.targets import check_outputs

DEMO_HINT = "--model demo:shapes"
_NO_LAYER = object()


@dataclass(frozen=True)
class ReadyModel:
    """A loaded model checked on one probe input.

    Attributes:
        model: The module in eval mode on ``device``.
        model_input: How images become its input.
        class_names: Its class names (None when unknown, or when they do not match its outputs).
        num_classes: K, the width of its ``(N, K)`` output.
        device: Where it runs.
        name: The model as recorded in the manifest (a file: its absolute path).
        weights: The weights as recorded (a file: its absolute path; None: random).
        layers: The resolved layer of each layer method, by dotted name (:func:`check_layers`).
    """

    model: nn.Module
    model_input: ModelInput
    class_names: tuple[str, ...] | None
    num_classes: int
    device: torch.device
    name: str
    weights: str | None
    layers: dict[str, str] = field(default_factory=dict)


def resolve_device(text: str) -> torch.device:
    """``auto`` (CUDA, else Apple MPS, else CPU) or any device torch accepts and has."""
    accepted = "accepted: auto, cpu, cuda, cuda:N, mps"
    if text == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError) as exc:
        raise UsageError(f"--device {text!r} is not a device ({exc}); {accepted}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(
                f"--device {text}: CUDA is not available here (no GPU, or torch built without "
                f"CUDA); {accepted.replace('cuda, cuda:N, ', '')}"
            )
        count = torch.cuda.device_count()
        index = device.index if device.index is not None else torch.cuda.current_device()
        if index >= count:
            raise UsageError(
                f"--device {text}: there are {count} CUDA devices (cuda:0..{count - 1})"
            )
        return torch.device("cuda", index)
    return device


def _recorded(text: str | None) -> str | None:
    """A model or weights argument as recorded: files by absolute path, names as given."""
    if text is None:
        return None
    path = Path(text)
    return str(path.resolve()) if path.exists() else text


def load_ready_model(
    name: str, weights: str | None, device: torch.device, input_size: int | None
) -> ReadyModel:
    """Load the model, move it to ``device`` and run it once on a blank image.

    Raises:
        UsageError: It cannot be loaded, moved or run, or its output is not ``(1, K)``.
    """
    try:
        loaded = load_model(name, weights, device=device)
    except ModelLoadError as exc:
        raise UsageError(f"cannot load --model {name}: {exc}{_load_hint(name, weights)}") from None
    model_input = ModelInput.for_model(loaded.transform, input_size)
    outputs = _probe(loaded.model, model_input, device)
    num_classes = int(outputs.shape[1])
    class_names = loaded.class_names
    if class_names is not None and len(class_names) != num_classes:
        class_names = None
    is_file = Path(name).exists()  # a model file ignores --weights
    return ReadyModel(
        loaded.model,
        model_input,
        class_names,
        num_classes,
        device,
        _recorded(name) or name,
        None if is_file else _recorded(weights),
    )


def _load_hint(name: str, weights: str | None) -> str:
    """How to go on when a model cannot be loaded (typically: offline, weights not cached)."""
    sources = ", ".join(f"{prefix}:NAME" for prefix in list_model_sources())
    known = f" (model sources here: {sources})" if sources else ""
    if name not in torchvision.models.list_models(module=torchvision.models):
        return f"\nAccepted: a torchvision model name, a TorchScript file, or {DEMO_HINT}{known}"
    if weights is not None and not Path(weights).exists():  # named weights: fetched online
        return (
            f"\nTo run offline: pass --weights FILE (a local state-dict file for {name}), "
            f"--weights none (random weights, only to try things out), or use a demo model: "
            f"{DEMO_HINT}{known}"
        )
    return ""  # a weights file that does not fit: the message above says how


def blank_batch(model_input: ModelInput, device: torch.device) -> Tensor:
    """A one-image batch of a mid-grey picture, for probing the model."""
    grey = PIL.Image.new("RGB", (model_input.size, model_input.size), (128, 128, 128))
    return model_input.batch([model_input.pixels(grey)], device)


def _probe(model: nn.Module, model_input: ModelInput, device: torch.device) -> Tensor:
    """The model's output on a blank image, checked to be ``(1, K)`` scores."""
    try:
        with torch.no_grad():
            outputs = model(blank_batch(model_input, device))
    except Exception as exc:
        raise UsageError(
            f"the model fails on a {model_input.describe()} input ({type(exc).__name__}: {exc}); "
            "if it needs another input size, pass --input-size N"
        ) from None
    try:
        return check_outputs(outputs, 1)
    except ModelOutputError:
        raise UsageError(
            f"the model returns {_shape(outputs)} for one image; saliency explain needs (N, K) "
            "class scores (a tensor, an output with .logits, a dict with 'logits', or a tuple "
            "whose first element holds them)"
        ) from None


def _shape(outputs: Any) -> object:
    return tuple(outputs.shape) if isinstance(outputs, Tensor) else type(outputs).__name__


def parse_target(text: str, ready: ReadyModel) -> int | None:
    """``predicted`` → None (each image's top class), a class index, or a class name.

    Raises:
        UsageError: An index out of range, or a name the model's class names lack.
    """
    if text == "predicted":
        return None
    classes = ready.num_classes
    try:
        index = int(text)
    except ValueError:
        return _class_by_name(text, ready.class_names, classes)
    if not 0 <= index < classes:
        raise UsageError(
            f"--target {index} is out of range: the model has {classes} classes; accepted: "
            f"predicted, an index 0 to {classes - 1}, or a class name"
        )
    return index


def _class_by_name(text: str, names: Sequence[str] | None, classes: int) -> int:
    if names is None:
        raise UsageError(
            f"--target {text!r}: this model has no class names; accepted: predicted or a class "
            f"index 0 to {classes - 1}"
        )
    if text in names:
        return names.index(text)
    folded = [name.casefold() for name in names]
    if text.casefold() in folded:
        return folded.index(text.casefold())
    close = difflib.get_close_matches(text, names, n=5, cutoff=0.6)
    hint = f"close names: {', '.join(repr(c) for c in close)}; " if close else ""
    raise UsageError(
        f"--target {text!r} is not one of the model's {len(names)} class names; {hint}accepted: "
        f"predicted, an index 0 to {classes - 1}, or an exact class name"
    )


def check_layers(ready: ReadyModel, methods: Mapping[str, Method]) -> dict[str, str]:
    """Resolve the layer of every chosen method that has a ``layer`` option.

    Returns:
        The dotted name of each method's layer (the automatic choice resolved), for the manifest.

    Raises:
        UsageError: A named layer that does not exist, or no automatic layer.
    """

    def probe() -> Any:
        return ready.model(blank_batch(ready.model_input, ready.device))

    layers = {}
    for name, method in methods.items():
        spec = method.options().get("layer", _NO_LAYER)
        if spec is not None and not isinstance(spec, str):
            continue  # no layer option, or a module object (not from the command line)
        try:
            layers[name] = layer_name(ready.model, find_layer(ready.model, spec, probe))
        except LayerNotFoundError as exc:
            raise UsageError(f"{name}: {exc} (choose one with --layer NAME)") from None
    return layers
