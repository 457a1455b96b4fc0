"""Image files to RGB images and model-ready batches.

Images are decoded with Pillow (EXIF orientation applied, every mode converted to RGB, alpha
composited over white). :class:`Preprocess` splits a model's input pipeline into *geometry*
(the image fitted to the model's input by its ``fit``, squash, crop or pad, see
:mod:`saliency.framing`: the uint8 pixels the model sees) and *normalize*, so that overlays can
be drawn on exactly what the model saw, or mapped back onto the original image.

torchvision (its resize, centre crop and interpolation modes) is imported when a
:class:`Preprocess` is made, not with this module: importing it takes seconds.
"""

from __future__ import annotations

import dataclasses
import os
import re
import threading
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import PIL.Image
import torch
from PIL import Image, ImageOps
from torch import Tensor

from saliency.errors import ImageLoadError, InvalidOptionError, ModelLoadError, accepted
from saliency.framing import DEFAULT_FIT, Fit, Framing, check_fit
from saliency.validation import is_int, require_int

if TYPE_CHECKING:
    from torchvision.transforms import InterpolationMode

__all__ = ["ImageBatch", "ImageTransform", "PathArg", "Preprocess", "load_images", "open_image"]

PathArg = str | os.PathLike[str]
ImageTransform = Callable[[PIL.Image.Image], Tensor]


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
    if is_int(key):  # single transparent grey value
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
        resize_size: With ``fit="crop"`` (or no ``crop_size``), the shorter side is resized
            to this (None: no resize); ``"squash"`` and ``"pad"`` do not use it.
        crop_size: The model's square input side: the centre crop of ``"crop"``, the side of
            ``"squash"`` and ``"pad"`` (None: no square input, whatever the fit).
        mean: Per-channel mean of the [0, 1] values.
        std: Per-channel standard deviation.
        interpolation: Resize interpolation (antialiasing is always on): a torchvision
            ``InterpolationMode`` or its value (``"bilinear"``); stored as the mode.
        fit: How an image is fitted to the input (:mod:`saliency.framing`): ``"squash"``
            (default: the whole image resized to ``crop_size`` × ``crop_size``), ``"crop"``
            (resize the shorter side to ``resize_size``, then centre-crop ``crop_size``: the
            torchvision evaluation transform) or ``"pad"`` (longer side to ``crop_size``,
            padded with the ``mean`` colour). ``saliency explain --fit`` is the same switch.
    """

    resize_size: int | None = 256
    crop_size: int | None = 224
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    interpolation: InterpolationMode | str = "bilinear"
    fit: Fit = DEFAULT_FIT

    def __post_init__(self) -> None:
        from torchvision.transforms import InterpolationMode

        check_fit(self.fit)

        for name in ("resize_size", "crop_size"):
            size = getattr(self, name)
            if size is not None:
                require_int(name, size, 1)
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

    def framing(self, size: tuple[int, int]) -> Framing:
        """Where an image of ``size = (width, height)`` lies in the model's input."""
        return Framing.of(size, self.fit, self.resize_size, self.crop_size)

    @property
    def fill(self) -> tuple[int, int, int]:
        """The padding colour: the ``mean`` as 8-bit RGB (about zero once normalised); black
        for ``"crop"``, as torchvision's centre crop pads a small image."""
        if self.fit == "crop":
            return (0, 0, 0)
        red, green, blue = (round(255 * value) for value in self.mean)
        return red, green, blue

    def geometry(self, image: PIL.Image.Image) -> Tensor:
        """Fit an image to the model's input (:attr:`fit`, :meth:`framing`).

        Args:
            image: A PIL image (converted to RGB first if it is not).

        Returns:
            A ``(3, H, W)`` uint8 tensor: the pixels the model sees.
        """
        if image.mode != "RGB":
            image = _to_rgb(image)
        return self.framing(image.size).apply(image, self.fill, self.interpolation)

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
        from torchvision.transforms._presets import ImageClassification

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
        framings: Where each image lies in the model's input (a :class:`Preprocess` was
            used; else None): ``saliency.framing.render_framed`` draws a map back on the
            original image, ``framing.input_box`` turns an image-pixel box (e.g. an Integrated
            Hessians ``query``) into input pixels.
    """

    tensor: Tensor
    images: Tensor | None
    paths: tuple[Path, ...]
    framings: tuple[Framing, ...] | None = None

    def __len__(self) -> int:
        """Number of images."""
        return len(self.paths)


def load_images(
    paths: PathArg | Sequence[PathArg],
    transform: Preprocess | ImageTransform | None = None,
    fit: Fit | None = None,
) -> ImageBatch:
    """Load image files into one batch.

    Args:
        paths: One file or a sequence of files.
        transform: None: [0, 1] float tensors at the files' own size (all must match); a
            :class:`Preprocess`: its geometry then normalize (``images`` and ``framings``
            filled); any other callable: applied to each RGB PIL image, must return a
            ``(C, H, W)`` tensor (``images`` is None).
        fit: ``"squash"``, ``"crop"`` or ``"pad"`` instead of the Preprocess's own ``fit``
            (see :mod:`saliency.framing`; the same as ``saliency explain --fit``).

    Raises:
        ImageLoadError: A file cannot be decoded (names that file).
        InvalidOptionError: No paths, images of different sizes without a transform, or a
            ``fit`` without a Preprocess transform.
    """
    files = _as_paths(paths)
    if fit is not None:
        check_fit(fit)
        if not isinstance(transform, Preprocess):
            raise InvalidOptionError(
                f"fit={fit!r} needs a saliency.Preprocess transform (got "
                f"{type(transform).__name__}); pass e.g. transform=saliency.Preprocess()"
            )
        transform = dataclasses.replace(transform, fit=fit)
    if transform is None:
        pixels = [_pixels(file) for file in files]
        _check_same_size(files, pixels)
        images = torch.stack(pixels)
        return ImageBatch(images.to(torch.float32).div(255), images, files)
    if isinstance(transform, Preprocess):
        pixels, framings = [], []
        for file in files:  # one decoded original at a time
            image = open_image(file)
            pixels.append(transform.geometry(image))
            framings.append(transform.framing(image.size))
        _check_same_size(files, pixels)
        images = torch.stack(pixels)
        return ImageBatch(transform.normalize(images), images, files, tuple(framings))
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


def _pixels(path: Path) -> Tensor:
    """uint8 (3, H, W) pixels of one file, at its own size."""
    return _pil_to_tensor(open_image(path))


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
                f"{_hw(tensor.shape)}; pass a transform (e.g. saliency.Preprocess()) "
                "that resizes them to a common size"
            )


def _hw(shape: torch.Size) -> str:
    """``W×H (C channels)`` for an error message."""
    return f"{shape[-1]}x{shape[-2]} ({shape[-3]} channels)"


def _pil_to_tensor(image: PIL.Image.Image) -> Tensor:
    """``(3, H, W)`` uint8 pixels of an RGB image (what torchvision's ``pil_to_tensor`` gives)."""
    pixels = np.array(image, dtype=np.uint8, copy=True)
    return torch.from_numpy(pixels).permute(2, 0, 1).contiguous()
