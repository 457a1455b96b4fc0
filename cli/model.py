"""The model of a run: loading it, checking before any work that it can do the run, and how
image files become its input.

Every problem found here is a :class:`~saliency.cli.UsageError` (exit code 2)
whose message says what was wrong and what is accepted: an unknown model or weights (or weights
that cannot be fetched offline), an unusable device, a model whose output is not ``(N, K)``
scores, a target outside its classes, a layer it does not have.

The model sees each image through its :class:`~saliency.images.Preprocess` with ``--fit``
(:mod:`saliency.framing`, the same geometry as ``saliency.load_images``): ``squash`` (default:
the whole image resized to the model's square input, ignoring its aspect ratio), ``crop`` (the
model's evaluation transform: shorter side resized, centre crop) or ``pad`` (aspect kept,
padded with the mean colour). Overlays are drawn back at the original's full resolution through
the same framing (:func:`saliency.framing.render_framed`), so every overlay pixel shows the
attributions of the point of the model's input it became. The square side is the model's
``Preprocess.crop_size`` (else its resize size, else 224), or ``--input-size``; the
normalisation is the model's (ImageNet statistics when unknown, e.g. for TorchScript files). A
model whose own transform is a custom callable gets the whole image through that callable,
which must keep all of it in view (unless ``--input-size`` or ``--fit`` is given).
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import PIL.Image
import torch
from torch import Tensor, nn

from saliency.cli import UsageError
from saliency.engine import Engine, EngineOptions
from saliency.errors import LayerNotFoundError, ModelLoadError, ModelOutputError, SaliencyError
from saliency.framing import Fit, Framing
from saliency.images import ImageTransform, Preprocess
from saliency.layers import layer_name
from saliency.methods.base import Method
from saliency.models import list_model_sources, load_model, model_file
from saliency.targets import check_outputs

DEFAULT_SIZE = 224


@dataclass(frozen=True)
class ModelInput:
    """Turns decoded RGB images into a batch for the model.

    Attributes:
        preprocess: The geometry (fit) and normalisation, brought to ``size`` (its crop size).
        size: The model's square input side.
        custom: The model's own transform when it is not a Preprocess (then used as is).
    """

    preprocess: Preprocess
    size: int
    custom: ImageTransform | None = None

    def __post_init__(self) -> None:
        if self.custom is None and self.preprocess.crop_size != self.size:
            object.__setattr__(self, "preprocess", _at_size(self.preprocess, self.size))

    @classmethod
    def for_model(
        cls,
        transform: Preprocess | ImageTransform | None,
        size: int | None,
        fit: Fit | None = None,
    ) -> ModelInput:
        """The input pipeline of a loaded model, optionally at another square ``size`` and with
        another ``fit`` (default: the Preprocess's own, :data:`saliency.framing.DEFAULT_FIT`)."""
        if isinstance(transform, Preprocess):
            preprocess = transform
        elif transform is not None and size is None and fit is None:
            return cls(Preprocess(), DEFAULT_SIZE, custom=transform)
        else:
            preprocess = Preprocess()
        if fit is not None:
            preprocess = dataclasses.replace(preprocess, fit=fit)
        side = size or preprocess.crop_size or preprocess.resize_size or DEFAULT_SIZE
        return cls(preprocess, side)

    def describe(self) -> str:
        """One line for the user: what the model sees."""
        if self.custom is not None:
            return "the whole image through the model's own transform"
        side = f"{self.size}x{self.size}"
        if self.preprocess.fit == "crop":
            return f"a {side} centre crop of the image resized to {self.preprocess.resize_size}"
        if self.preprocess.fit == "pad":
            return f"the whole image resized and padded to {side}"
        return f"the whole image resized to {side}"

    def framing(self, size: tuple[int, int]) -> Framing | None:
        """Where an image of ``size = (width, height)`` lies in the model's input (None for a
        custom transform: the model sees it as that transform decides)."""
        return None if self.custom is not None else self.preprocess.framing(size)

    def query_masks(self, box: Sequence[int], sizes: Sequence[tuple[int, int]]) -> Tensor:
        """An image-pixel box ``(y0, x0, y1, x1)`` as each image's ``(N, 1, S, S)`` mask of
        the model's input pixels it covers (:meth:`saliency.framing.Framing.input_box`); with a
        custom transform, the box is taken in input pixels.

        Raises:
            InvalidOptionError: The box does not fit an image, or lies outside what the model
                sees of it (``--fit crop``).
        """
        image_box = (int(box[0]), int(box[1]), int(box[2]), int(box[3]))
        masks = torch.zeros(len(sizes), 1, self.size, self.size, dtype=torch.bool)
        for index, size in enumerate(sizes):
            framing = self.framing(size)
            if framing is None:  # the custom transform's geometry is unknown
                framing = Framing(
                    (self.size, self.size), (self.size,) * 2, (0, 0), (self.size,) * 2, "squash"
                )
            y0, x0, y1, x1 = framing.input_box(image_box)
            masks[index, :, y0:y1, x0:x1] = True
        return masks

    def pixels(self, image: PIL.Image.Image) -> Tensor:
        """One image's model-ready pixels: ``(3, size, size)`` uint8, or the custom output.

        The same geometry as :func:`saliency.load_images` with this Preprocess. Runs in
        decoding workers (Pillow releases the GIL while resizing).
        """
        if self.custom is not None:
            return self.custom(image)
        return self.preprocess.geometry(image)

    def batch(self, pixels: Sequence[Tensor], device: torch.device) -> Tensor:
        """Stack :meth:`pixels` results on ``device`` (uint8 travels, then normalised there)."""
        stacked = torch.stack(list(pixels)).to(device, non_blocking=True)
        if self.custom is not None:
            return stacked.float()
        return self.preprocess.normalize(stacked)


def _at_size(preprocess: Preprocess, side: int) -> Preprocess:
    """``preprocess`` with the square side ``side``; for ``"crop"`` the resize keeps its ratio
    to the crop (256 / 224 when unknown)."""
    crop, resize = preprocess.crop_size, preprocess.resize_size
    ratio = resize / crop if crop and resize else 256 / 224
    return dataclasses.replace(
        preprocess, crop_size=side, resize_size=max(side, round(side * ratio))
    )


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


def available_devices() -> list[str]:
    """The ``--device`` values that work here: ``auto``, ``cpu``, and each accelerator torch
    reports as available (``cuda``/``cuda:N``, ``mps``, ``xpu``/``xpu:N``)."""
    found = ["auto", "cpu"]
    if torch.cuda.is_available():
        found += ["cuda", *(f"cuda:{i}" for i in range(torch.cuda.device_count()))]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        found.append("mps")
    xpu = getattr(torch, "xpu", None)
    if xpu is not None and xpu.is_available():
        found += ["xpu", *(f"xpu:{i}" for i in range(xpu.device_count()))]
    return found


def resolve_device(text: str) -> torch.device:
    """``auto`` (CUDA, else Apple MPS, else CPU) or any device torch accepts and has.

    Raises:
        UsageError: Not a device, or one this machine does not have; the message lists the
            devices that exist here (:func:`available_devices`).
    """
    accepted = f"accepted here: {', '.join(available_devices())}"
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
                f"CUDA); {accepted}"
            )
        count = torch.cuda.device_count()
        index = device.index if device.index is not None else torch.cuda.current_device()
        if index >= count:
            raise UsageError(
                f"--device {text}: there are {count} CUDA devices (cuda:0..{count - 1}); {accepted}"
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
    name: str,
    weights: str | None,
    device: torch.device,
    input_size: int | None,
    fit: Fit | None = None,
) -> ReadyModel:
    """Load the model, move it to ``device`` and run it once on a blank image.

    Raises:
        UsageError: It cannot be loaded, moved or run, or its output is not ``(1, K)``.
    """
    try:
        loaded = load_model(name, weights, device=device)
    except ModelLoadError as exc:
        raise UsageError(f"cannot load --model {name}: {exc}{_load_hint(name, weights)}") from None
    model_input = ModelInput.for_model(loaded.transform, input_size, fit)
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
    import torchvision  # only to say what went wrong: importing it takes a second

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
        shape = tuple(outputs.shape) if isinstance(outputs, Tensor) else type(outputs).__name__
        raise UsageError(
            f"the model returns {shape} for one image; saliency explain needs (N, K) class "
            "scores (a tensor, an output with .logits, a dict with 'logits', or a tuple whose "
            "first element holds them)"
        ) from None


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


def check_layers(
    ready: ReadyModel, methods: Mapping[str, Method], options: EngineOptions
) -> dict[str, str]:
    """Resolve the layer of every chosen method that has a ``layer`` option.

    The automatic choice is probed on a blank image through an engine with the run's
    ``options``, as the methods probe their first batch: the choice is remembered, so the run
    uses the layer recorded here and probes no more (:meth:`Engine.find_layer`).

    Returns:
        The dotted name of each method's layer (the automatic choice resolved).

    Raises:
        UsageError: A named layer that does not exist, or no automatic layer.
    """
    engine = Engine(ready.model, options)
    blank = blank_batch(ready.model_input, ready.device)
    layers = {}
    for name, method in methods.items():
        spec = method.options().get("layer", _NO_LAYER)
        if spec is not None and not isinstance(spec, str):
            continue  # no layer option, or a module object (not from the command line)
        try:
            layers[name] = layer_name(ready.model, engine.find_layer(spec, blank))
        except LayerNotFoundError as exc:
            raise UsageError(f"{name}: {exc} (choose one with --layer NAME)") from None
    return layers


def check_queries(ready: ReadyModel, methods: Mapping[str, Method]) -> None:
    """Check the query region of every chosen method that has one (Integrated Hessians) against
    the model's input, so that one outside it is a usage error rather than every input failing.

    Raises:
        UsageError: A query that does not fit the model's input.
    """
    blank = blank_batch(ready.model_input, ready.device)
    for name, method in methods.items():
        query_mask = getattr(method, "query_mask", None)
        if isinstance(getattr(method, "query", None), tuple):
            continue  # a box in image pixels: checked against each image (query_masks)
        # the default query (None) is picked from the model's own attributions: it always fits
        if callable(query_mask) and getattr(method, "query", None) is not None:
            try:
                query_mask(blank)
            except (SaliencyError, ValueError, TypeError) as exc:
                raise UsageError(f"{name}: {exc}") from None
