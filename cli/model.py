"""The model of a run: loading it, checking before any work that it can do the run, and how
image files become its input.

Every problem found here is a :class:`~saliency.cli.UsageError` (exit code 2)
whose message says what was wrong and what is accepted: an unknown model or weights (or weights
that cannot be fetched offline), an unusable device, a model whose output is not ``(N, K)``
scores, a target outside its classes, a layer it does not have.

Overlays cover the whole image at its own resolution, so the model must see the whole image:
it is resized (antialiased) to the model's square input size, ignoring its aspect ratio, rather
than centre-cropped as for classification. The map is then stretched back over the original
image by bilinear upsampling, so every output pixel has attributions from the same place. The
size is the model's ``Preprocess.crop_size`` (else its resize size, else 224), or
``--input-size``; the normalisation is the model's (ImageNet statistics when unknown, e.g. for
TorchScript files). A model whose own transform is a custom callable gets the whole image
through that callable, which must keep all of it in view.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import PIL.Image
import torch
import torchvision
from torch import Tensor, nn
from torchvision.transforms import InterpolationMode, v2

from saliency.cli import UsageError
from saliency.errors import LayerNotFoundError, ModelLoadError, SaliencyError
from saliency.images import ImageTransform, Preprocess
from saliency.layers import find_layer
from saliency.methods.base import Method
from saliency.models import list_model_sources, load_model, model_file

DEFAULT_SIZE = 224


@dataclass(frozen=True)
class ModelInput:
    """Turns decoded RGB images into a batch for the model.

    Attributes:
        preprocess: Normalisation (and interpolation) of a :class:`Preprocess` pipeline.
        size: The square side the whole image is resized to.
        custom: The model's own transform when it is not a Preprocess (then used as is).
    """

    preprocess: Preprocess
    size: int
    custom: ImageTransform | None = None

    @classmethod
    def for_model(
        cls, transform: Preprocess | ImageTransform | None, size: int | None
    ) -> ModelInput:
        """The input pipeline of a loaded model, optionally at another square ``size``."""
        if isinstance(transform, Preprocess):
            side = size or transform.crop_size or transform.resize_size or DEFAULT_SIZE
            return cls(transform, side)
        if transform is not None and size is None:
            return cls(Preprocess(), DEFAULT_SIZE, custom=transform)
        return cls(Preprocess(), size or DEFAULT_SIZE)

    def describe(self) -> str:
        """One line for the user: what the model sees."""
        if self.custom is not None:
            return "the whole image through the model's own transform"
        return f"the whole image resized to {self.size}x{self.size}"

    def pixels(self, image: PIL.Image.Image) -> Tensor:
        """One image's model-ready pixels: ``(3, size, size)`` uint8, or the custom output.

        Runs in decoding workers (Pillow releases the GIL while resizing).
        """
        if self.custom is not None:
            return self.custom(image)
        resized = v2.functional.resize(
            image,
            [self.size, self.size],
            interpolation=InterpolationMode(self.preprocess.interpolation),
            antialias=True,
        )
        return v2.functional.pil_to_tensor(resized)

    def batch(self, pixels: Sequence[Tensor], device: torch.device) -> Tensor:
        """Stack :meth:`pixels` results on ``device`` (uint8 travels, then normalised there)."""
        stacked = torch.stack(list(pixels)).to(device, non_blocking=True)
        if self.custom is not None:
            return stacked.float()
        return self.preprocess.normalize(stacked)


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
    """

    model: nn.Module
    model_input: ModelInput
    class_names: tuple[str, ...] | None
    num_classes: int
    device: torch.device
    name: str
    weights: str | None


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
    if device.type != "cpu":
        try:  # a device that holds no data (meta) or whose backend is missing
            torch.zeros(1, device=device).cpu()
        except Exception as exc:
            raise UsageError(
                f"--device {text}: cannot compute there ({type(exc).__name__}: {exc}); {accepted}"
            ) from None
    return device


def _recorded(text: str | None) -> str | None:
    """A weights argument as recorded: a file by its absolute path, a name as given."""
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
    file = model_file(name)  # a model file ignores --weights
    return ReadyModel(
        loaded.model,
        model_input,
        class_names,
        num_classes,
        device,
        name if file is None else str(file.resolve()),
        None if file is not None else _recorded(weights),
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
    if not isinstance(outputs, Tensor) or outputs.ndim != 2 or outputs.shape[0] != 1:
        shape = tuple(outputs.shape) if isinstance(outputs, Tensor) else type(outputs).__name__
        raise UsageError(
            f"the model returns {shape} for one image; saliency explain needs (N, K) class scores"
        )
    return outputs


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


def check_layers(ready: ReadyModel, methods: Mapping[str, Method]) -> None:
    """Resolve the layer of every chosen method that has a ``layer`` option.

    Raises:
        UsageError: A named layer that does not exist, or no automatic layer.
    """

    def probe() -> Any:
        return ready.model(blank_batch(ready.model_input, ready.device))

    for name, method in methods.items():
        spec = method.options().get("layer", _NO_LAYER)
        if spec is not None and not isinstance(spec, str):
            continue  # no layer option, or a module object (not from the command line)
        try:
            find_layer(ready.model, spec, probe)
        except LayerNotFoundError as exc:
            raise UsageError(f"{name}: {exc} (choose one with --layer NAME)") from None


def check_queries(ready: ReadyModel, methods: Mapping[str, Method]) -> None:
    """Check the query region of every chosen method that has one (Integrated Hessians) against
    the model's input, so that one outside it is a usage error rather than every input failing.

    Raises:
        UsageError: A query that does not fit the model's input.
    """
    blank = blank_batch(ready.model_input, ready.device)
    for name, method in methods.items():
        query_mask = getattr(method, "query_mask", None)
        # the default query (None) is picked from the model's own attributions: it always fits
        if callable(query_mask) and getattr(method, "query", None) is not None:
            try:
                query_mask(blank)
            except (SaliencyError, ValueError, TypeError) as exc:
                raise UsageError(f"{name}: {exc}") from None
