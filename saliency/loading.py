"""Loading helpers: image files to RGB images and model-ready batches, and models by name or file.

Images are decoded with Pillow (EXIF orientation applied, every mode converted to RGB, alpha
composited over white). :class:`Preprocess` splits a model's input pipeline into *geometry*
(resize + centre crop, giving the uint8 pixels the model sees) and *normalize*, so that overlays
can be drawn on exactly what the model saw. :func:`load_model` loads a torchvision classifier
(weights through torchvision's own cache), a local state-dict file, a TorchScript file, or a
model from a registered ``"prefix:name"`` source.
"""

from __future__ import annotations

import difflib
import os
import re
import threading
import warnings
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import PIL.Image
import torch
import torchvision
from PIL import Image, ImageOps
from torch import Tensor, nn
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2 as _v2
from torchvision.transforms._presets import ImageClassification

from saliency.errors import ImageLoadError, InvalidOptionError, ModelLoadError, accepted

__all__ = [
    "ImageBatch",
    "LoadedModel",
    "ModelSourceLoader",
    "Preprocess",
    "list_model_sources",
    "load_images",
    "load_model",
    "open_image",
    "register_model_source",
    "unregister_model_source",
]

PathArg = str | os.PathLike[str]
WeightsArg = str | os.PathLike[str] | None
ImageTransform = Callable[[PIL.Image.Image], Tensor]

# --------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------

_SIXTEEN_BIT_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N"})
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_WHITE = (255, 255, 255, 255)
# warnings.catch_warnings() swaps a process-wide filter list: serialise our use of it.
_WARNINGS_LOCK = threading.Lock()


def open_image(path: PathArg) -> PIL.Image.Image:
    """Decode one image file to a fully loaded RGB image.

    EXIF orientation is applied, every Pillow mode is converted to RGB (16-bit images are
    scaled by their full range 0..65535, alpha is composited over white) and animated files
    give their first frame.

    Args:
        path: The image file.

    Returns:
        An RGB ``PIL.Image.Image`` that holds no open file.

    Raises:
        ImageLoadError: The file is missing, unreadable, empty, not an image, truncated or
            corrupt, or larger than ``PIL.Image.MAX_IMAGE_PIXELS``.
    """
    path = Path(path)
    _check_file(path)
    try:
        with open(path, "rb") as fp:
            image = _open_checked(fp, path)
            image.load()
            image = _exif_upright(image)
    except ImageLoadError:
        raise
    except Exception as exc:
        raise ImageLoadError(path, _describe_decode_error(exc)) from exc
    try:
        return _to_rgb(image)
    except ValueError as exc:
        raise ImageLoadError(path, f"cannot convert image mode {image.mode!r} to RGB") from exc


def _check_file(path: Path) -> None:
    """Raise ImageLoadError unless ``path`` is a non-empty regular file."""
    try:
        info = os.stat(path)
    except (FileNotFoundError, NotADirectoryError) as exc:
        raise ImageLoadError(path, "file not found") from exc
    except PermissionError as exc:
        raise ImageLoadError(path, "permission denied") from exc
    except (OSError, ValueError) as exc:
        raise ImageLoadError(path, f"cannot access file: {exc}") from exc
    if path.is_dir():
        raise ImageLoadError(path, "is a directory, not an image file")
    if info.st_size == 0:
        raise ImageLoadError(path, "empty file (0 bytes)")


def _open_checked(fp: Any, path: Path) -> PIL.Image.Image:
    """``Image.open`` with decompression-bomb warnings turned into ImageLoadError."""
    try:
        with _WARNINGS_LOCK, warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(fp)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageLoadError(path, _too_large_reason(exc)) from exc


def _too_large_reason(exc: Exception) -> str:
    """Human reason for a decompression-bomb error or warning."""
    match = re.search(r"\((\d+) pixels\)", str(exc))
    size = f"{int(match.group(1)):,} pixels" if match else "its pixel count"
    return (
        f"image too large: {size} exceeds the limit PIL.Image.MAX_IMAGE_PIXELS = "
        f"{Image.MAX_IMAGE_PIXELS:,} (a decompression-bomb guard); if you trust the file, raise "
        "PIL.Image.MAX_IMAGE_PIXELS (or set it to None)"
    )


def _describe_decode_error(exc: Exception) -> str:
    """Human reason for an exception raised while opening or decoding a file."""
    if isinstance(exc, PermissionError):
        return "permission denied"
    if isinstance(exc, (FileNotFoundError, NotADirectoryError)):
        return "file not found"
    if isinstance(exc, IsADirectoryError):
        return "is a directory, not an image file"
    if isinstance(exc, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return _too_large_reason(exc)
    if isinstance(exc, Image.UnidentifiedImageError):
        return "not an image file, or an unrecognised image format"
    return f"truncated or corrupt image data ({type(exc).__name__}: {exc})"


def _exif_upright(image: PIL.Image.Image) -> PIL.Image.Image:
    """Apply the EXIF orientation; a copy (or the image itself if its EXIF is unreadable)."""
    try:
        upright = ImageOps.exif_transpose(image)
    except Exception:  # malformed EXIF: the pixels are still good
        return image
    return upright if upright is not None else image


def _to_rgb(image: PIL.Image.Image) -> PIL.Image.Image:
    """Convert any Pillow mode to RGB; raises ValueError for a mode Pillow cannot convert."""
    mode = image.mode
    if mode in _SIXTEEN_BIT_MODES or mode.startswith("I;16"):
        return _wide_to_rgb(np.asarray(image).astype(np.float64) * (255.0 / 65535.0), image)
    if mode == "F":
        values = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0)
        finite = values[np.isfinite(values)]
        if finite.size and finite.min() >= 0.0 and finite.max() <= 1.0:
            values = values * 255.0
        return _wide_to_rgb(values, image)
    if mode in _ALPHA_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, _WHITE), rgba).convert("RGB")
    if mode == "RGB":
        return image.copy()
    return image.convert("RGB")


def _wide_to_rgb(values: np.ndarray, image: PIL.Image.Image) -> PIL.Image.Image:
    """8-bit RGB from one-channel values already scaled to 0..255 (clipped, rounded)."""
    grey = Image.fromarray(np.rint(np.clip(values, 0.0, 255.0)).astype(np.uint8), mode="L")
    key = image.info.get("transparency")
    if isinstance(key, int) and not isinstance(key, bool):  # single transparent grey value
        alpha = np.where(np.asarray(image) == key, 0, 255).astype(np.uint8)
        grey_alpha = Image.merge("LA", (grey, Image.fromarray(alpha, mode="L")))
        return _to_rgb(grey_alpha)
    return grey.convert("RGB")


def _pair(value: Sequence[int] | int | None, what: str) -> int | None:
    """One int from torchvision's one-element size lists (or None)."""
    if value is None or isinstance(value, int):
        return value
    sizes = list(value)
    if len(sizes) != 1:
        raise ModelLoadError(f"transform {what}={sizes} is not a single size; cannot convert it")
    return int(sizes[0])


@dataclass(frozen=True)
class Preprocess:
    """A model's input pipeline, split into geometry (pixels the model sees) and normalisation.

    Attributes:
        resize_size: The shorter side is resized to this (None: no resize).
        crop_size: Square centre crop of this size (None: no crop).
        mean: Per-channel mean of the [0, 1] values.
        std: Per-channel standard deviation.
        interpolation: Resize interpolation (antialiasing is always on).
    """

    resize_size: int | None = 256
    crop_size: int | None = 224
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    interpolation: InterpolationMode = InterpolationMode.BILINEAR

    def __post_init__(self) -> None:
        for name in ("resize_size", "crop_size"):
            size = getattr(self, name)
            if size is not None and (isinstance(size, bool) or not isinstance(size, int)):
                raise InvalidOptionError(f"{name} must be a positive int or None, got {size!r}")
            if size is not None and size <= 0:
                raise InvalidOptionError(f"{name} must be a positive int or None, got {size!r}")
        for name in ("mean", "std"):
            values = tuple(float(v) for v in getattr(self, name))
            if len(values) != 3:
                raise InvalidOptionError(f"{name} must have 3 values (R, G, B), got {values!r}")
            object.__setattr__(self, name, values)
        if any(v == 0.0 for v in self.std):
            raise InvalidOptionError(f"std must not contain 0, got {self.std!r}")
        try:
            interpolation = InterpolationMode(self.interpolation)
        except ValueError as exc:
            choices = accepted(m.value for m in InterpolationMode)
            raise InvalidOptionError(
                f"interpolation {self.interpolation!r} is not one of {choices}"
            ) from exc
        object.__setattr__(self, "interpolation", interpolation)

    def geometry(self, image: PIL.Image.Image) -> Tensor:
        """Resize and centre-crop an image.

        Args:
            image: A PIL image (converted to RGB first if it is not).

        Returns:
            A ``(3, H, W)`` uint8 tensor: the pixels the model sees.
        """
        if image.mode != "RGB":
            image = _to_rgb(image)
        if self.resize_size is not None:
            image = _v2.functional.resize(
                image, [self.resize_size], interpolation=self.interpolation, antialias=True
            )
        if self.crop_size is not None:
            image = _v2.functional.center_crop(image, [self.crop_size])
        return _v2.functional.pil_to_tensor(image)

    def normalize(self, images: Tensor) -> Tensor:
        """Scale to [0, 1] (uint8 input) and normalise with ``mean`` and ``std``.

        Args:
            images: A ``(..., 3, H, W)`` uint8 tensor, or a float tensor already in [0, 1].

        Returns:
            A float32 tensor of the same shape on the same device.
        """
        if images.ndim < 3 or images.shape[-3] != 3:
            raise InvalidOptionError(
                f"images must have shape (..., 3, H, W), got {tuple(images.shape)}"
            )
        if images.dtype == torch.uint8:
            x = images.to(torch.float32).div(255)
        elif images.is_floating_point():
            x = images.to(torch.float32)
        else:
            raise InvalidOptionError(f"images must be uint8 or floating point, got {images.dtype}")
        mean = torch.tensor(self.mean, dtype=torch.float32, device=x.device).view(3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32, device=x.device).view(3, 1, 1)
        return x.sub(mean).div(std)

    def __call__(self, image: PIL.Image.Image) -> Tensor:
        """``normalize(geometry(image))``: a ``(3, H, W)`` float32 tensor."""
        return self.normalize(self.geometry(image))

    @classmethod
    def from_torchvision(cls, transform: object) -> Preprocess:
        """Build from a torchvision weights' ``transforms()`` (an ``ImageClassification``).

        Raises:
            ModelLoadError: ``transform`` is not a torchvision image-classification preset.
        """
        if not isinstance(transform, ImageClassification):
            raise ModelLoadError(
                "Preprocess.from_torchvision expects the transforms() of torchvision "
                "image-classification weights (torchvision.transforms._presets."
                f"ImageClassification), got {type(transform).__name__}"
            )
        return cls(
            resize_size=_pair(transform.resize_size, "resize_size"),
            crop_size=_pair(transform.crop_size, "crop_size"),
            mean=tuple(transform.mean),
            std=tuple(transform.std),
            interpolation=transform.interpolation,
        )


@dataclass(frozen=True)
class ImageBatch:
    """Images loaded as one batch.

    Attributes:
        tensor: ``(N, C, H, W)`` model input (float32 unless a custom transform says otherwise).
        images: ``(N, 3, H, W)`` uint8 pixels the model saw before normalisation, for overlays;
            None when a custom transform callable was used.
        paths: The files, in batch order.
    """

    tensor: Tensor
    images: Tensor | None
    paths: tuple[Path, ...]

    def __len__(self) -> int:
        """Number of images."""
        return len(self.paths)


def load_images(
    paths: PathArg | Sequence[PathArg],
    transform: Preprocess | ImageTransform | None = None,
) -> ImageBatch:
    """Load image files into one batch.

    Args:
        paths: One file or a sequence of files.
        transform: None: [0, 1] float tensors at the files' own size (all must match); a
            :class:`Preprocess`: its geometry then normalize (``images`` filled); any other
            callable: applied to each RGB PIL image, must return a ``(C, H, W)`` tensor
            (``images`` is None).

    Raises:
        ImageLoadError: A file cannot be decoded (names that file).
        InvalidOptionError: No paths, or images of different sizes without a transform.
    """
    files = _as_paths(paths)
    if transform is None or isinstance(transform, Preprocess):
        pixels = [_pixels(file, transform) for file in files]
        _check_same_size(files, pixels)
        images = torch.stack(pixels)
        if transform is None:
            return ImageBatch(images.to(torch.float32).div(255), images, files)
        return ImageBatch(transform.normalize(images), images, files)
    tensors = [_apply_custom(transform, open_image(file), file) for file in files]
    _check_same_size(files, tensors)
    return ImageBatch(torch.stack(tensors), None, files)


def _as_paths(paths: PathArg | Sequence[PathArg]) -> tuple[Path, ...]:
    """Normalise the ``paths`` argument to a non-empty tuple of Paths."""
    if isinstance(paths, (str, os.PathLike)):
        return (Path(paths),)
    files = tuple(Path(p) for p in paths)
    if not files:
        raise InvalidOptionError("no image paths given")
    return files


def _pixels(path: Path, transform: Preprocess | None) -> Tensor:
    """uint8 (3, H, W) pixels of one file, through the geometry when given."""
    image = open_image(path)
    if transform is None:
        return _v2.functional.pil_to_tensor(image)
    return transform.geometry(image)


def _apply_custom(transform: ImageTransform, image: PIL.Image.Image, path: Path) -> Tensor:
    """Apply a custom transform and check that it returns a (C, H, W) tensor."""
    out = transform(image)
    if not isinstance(out, Tensor) or out.ndim != 3:
        got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise TypeError(f"transform must return a (C, H, W) tensor, got {got} for {path}")
    return out


def _check_same_size(files: tuple[Path, ...], tensors: list[Tensor]) -> None:
    """Raise a clear error naming two files whose tensors differ in shape."""
    first = tensors[0].shape
    for file, tensor in zip(files, tensors, strict=True):
        if tensor.shape != first:
            raise InvalidOptionError(
                f"images have different sizes: {files[0]} is {_hw(first)} but {file} is "
                f"{_hw(tensor.shape)}; pass a transform (e.g. saliency.loading.Preprocess()) "
                "that resizes them to a common size"
            )


def _hw(shape: torch.Size) -> str:
    """``W×H (C channels)`` for an error message."""
    return f"{shape[-1]}x{shape[-2]} ({shape[-3]} channels)"


# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------


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

_SOURCES: dict[str, ModelSourceLoader] = {}
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
    if prefix in _SOURCES:
        raise ModelLoadError(f"model source prefix {prefix!r} is already registered")
    _SOURCES[prefix] = loader


def unregister_model_source(prefix: str) -> None:
    """Remove a registered model source (no error if it is absent)."""
    _SOURCES.pop(prefix, None)


def list_model_sources() -> tuple[str, ...]:
    """The registered ``"prefix:"`` model sources, sorted."""
    return tuple(sorted(_SOURCES))


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
    return LoadedModel(model.eval(), loaded.transform, loaded.class_names)


def _dispatch(name_or_path: PathArg, weights: WeightsArg, trust_pickle: bool) -> LoadedModel:
    """Pick the loader for ``name_or_path``."""
    if isinstance(name_or_path, os.PathLike):
        return _load_model_file(Path(name_or_path), trust_pickle)
    if not isinstance(name_or_path, str):
        raise ModelLoadError(
            f"name_or_path must be a str or a path, got {type(name_or_path).__name__}"
        )
    if name_or_path in _torchvision_names():
        return _load_torchvision(name_or_path, weights, trust_pickle)
    path = Path(name_or_path)
    if path.exists():
        return _load_model_file(path, trust_pickle)
    source = _SOURCE_NAME.fullmatch(name_or_path)
    if source is not None:
        return _load_from_source(source.group(1), source.group(2), weights)
    if _looks_like_path(name_or_path):
        raise ModelLoadError(f"model file not found: {name_or_path}")
    raise ModelLoadError(_unknown_name_message(name_or_path))


def _load_from_source(prefix: str, rest: str, weights: WeightsArg) -> LoadedModel:
    """Call the loader registered for ``prefix``."""
    loader = _SOURCES.get(prefix)
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


def _torchvision_names() -> list[str]:
    """torchvision's classification model names."""
    return list(torchvision.models.list_models(module=torchvision.models))


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
    return torchvision.models.get_model_weights(name)


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
        model = torchvision.models.get_model(name, weights=None)
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
        model = torchvision.models.get_model(name, weights=member)
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
    state = _read_state_dict(path, trust_pickle)
    model = torchvision.models.get_model(name, weights=None)
    num_classes = _infer_num_classes(model.state_dict(), state)
    if num_classes is not None:
        model = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    _load_strict(model, state, path)
    categories = _default_categories(name)
    outputs = num_classes if num_classes is not None else len(categories or ())
    class_names = categories if categories is not None and len(categories) == outputs else None
    return LoadedModel(model, _default_transform(name), class_names)


def _torch_load(path: Path, trust_pickle: bool) -> Any:
    """``torch.load`` on CPU with clear errors (weights only unless ``trust_pickle``)."""
    if not path.exists():
        raise ModelLoadError(f"weights file not found: {path}")
    if path.is_dir():
        raise ModelLoadError(f"{path} is a directory, not a weights file")
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


def _read_state_dict(path: Path, trust_pickle: bool) -> dict[str, Tensor]:
    """A state dict from a file: plain, wrapped, DataParallel-prefixed or a pickled module."""
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


def _infer_num_classes(expected: Mapping[str, Tensor], state: Mapping[str, Tensor]) -> int | None:
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


def _load_strict(model: nn.Module, state: Mapping[str, Tensor], path: Path) -> None:
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
    if path.is_dir():
        raise ModelLoadError(f"{path} is a directory, not a model file")
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
