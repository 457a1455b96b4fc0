"""How an image is fitted into a model's input, and how the model's pixels map back onto it.

One geometry for every front-end: :meth:`saliency.Preprocess.geometry` (``load_images`` in a
notebook) and ``saliency explain`` (``--fit``) both build a :class:`Framing` and apply it, so the
same file gives the same model input, and overlays drawn back on the original image
(:func:`render_framed`) are exactly aligned with what the model saw.

Fits (``fit=``, ``--fit``), for a model of square input side S (its crop size):

- ``"squash"`` (default): the whole image resized to S × S, ignoring its aspect ratio. The map
  covers the whole image.
- ``"crop"``: the model's evaluation transform (torchvision's ``Resize(R)`` of the shorter side
  then ``CenterCrop(S)``, e.g. R = 256, S = 224). The model sees the centre only; outside it
  the overlay shows the image in grey, without colour: there are no attributions there.
- ``"pad"``: the longer side resized to S, aspect ratio kept, and the short side padded to S
  with the normalisation's mean colour (zero after normalising). The map is drawn over the
  image only (the padding is left out).

A :class:`Framing` is pure arithmetic on sizes (no torch): the resized size of the image and
the offset at which it is placed in the model's input (negative: cropped; positive: padded).
Coordinates are continuous, pixel edges at integers: image point ``u`` is input point
``u * resized / image + offset``, the convention of Pillow's resampling and of bilinear
interpolation with ``align_corners=False``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, get_args

from saliency.errors import InvalidOptionError

if TYPE_CHECKING:
    import torch
    from PIL import Image
    from torch import Tensor

    from saliency.rendering import ChannelReduction, Normalization, Sign, Style

__all__ = ["DEFAULT_FIT", "FITS", "Fit", "Framing", "render_framed"]

Fit = Literal["squash", "crop", "pad"]
FITS: tuple[Fit, ...] = get_args(Fit)
DEFAULT_FIT: Fit = "squash"

Box = tuple[int, int, int, int]
"""``(y0, x0, y1, x1)``, half-open, in pixels."""


@dataclass(frozen=True)
class Framing:
    """Where an image lies in the model's input.

    Attributes:
        image: ``(width, height)`` of the decoded image.
        resized: ``(width, height)`` it is resized to.
        offset: ``(x, y)`` of the resized image's top-left corner in the input (negative:
            cropped; positive: padded).
        size: ``(width, height)`` of the model's input.
        fit: The fit that made it.
    """

    image: tuple[int, int]
    resized: tuple[int, int]
    offset: tuple[int, int]
    size: tuple[int, int]
    fit: Fit

    @classmethod
    def of(
        cls,
        image: tuple[int, int],
        fit: Fit,
        resize_size: int | None,
        crop_size: int | None,
    ) -> Framing:
        """The framing of an image of ``image = (width, height)`` pixels.

        ``"crop"`` follows torchvision exactly: the shorter side to ``resize_size`` (the longer
        ``int(resize_size * long / short)``), then a centre crop of ``crop_size`` (offset
        ``round((length - crop) / 2)``; an image smaller than the crop is padded, centred).
        ``"squash"`` and ``"pad"`` fit the image to the square ``crop_size``. Without a
        ``crop_size`` there is no square input: every fit only resizes the shorter side to
        ``resize_size`` (or keeps the image as it is).

        Raises:
            InvalidOptionError: An unknown fit or an empty image.
        """
        check_fit(fit)
        width, height = image
        if width < 1 or height < 1:
            raise InvalidOptionError(f"an image of {width}×{height} pixels cannot be framed")
        if fit == "crop" or crop_size is None:
            resized = _shorter_side_to(image, resize_size) if resize_size else image
            if crop_size is None:
                return cls(image, resized, (0, 0), resized, fit)
            offset = (_centred(resized[0], crop_size), _centred(resized[1], crop_size))
            return cls(image, resized, offset, (crop_size, crop_size), fit)
        side = crop_size
        if fit == "squash":
            return cls(image, (side, side), (0, 0), (side, side), fit)
        scale = side / max(width, height)
        resized = (
            side if width >= height else max(1, round(width * scale)),
            side if height >= width else max(1, round(height * scale)),
        )
        offset = ((side - resized[0]) // 2, (side - resized[1]) // 2)
        return cls(image, resized, offset, (side, side), fit)

    @property
    def scale(self) -> tuple[float, float]:
        """Input pixels per image pixel, ``(x, y)``."""
        return self.resized[0] / self.image[0], self.resized[1] / self.image[1]

    def content(self) -> Box:
        """The input pixels that show the image, ``(y0, x0, y1, x1)`` (all of the input unless
        padded)."""
        (x0, x1), (y0, y1) = (
            _overlap(self.offset[axis], self.resized[axis], self.size[axis]) for axis in (0, 1)
        )
        return y0, x0, y1, x1

    def seen(self) -> tuple[float, float, float, float]:
        """The part of the image the model sees, ``(y0, x0, y1, x1)`` in image coordinates
        (the whole image unless cropped)."""
        y0, x0, y1, x1 = self.content()
        (sx, sy), (ox, oy) = self.scale, self.offset
        return (y0 - oy) / sy, (x0 - ox) / sx, (y1 - oy) / sy, (x1 - ox) / sx

    def input_box(self, box: Box) -> Box:
        """An image-pixel box ``(y0, x0, y1, x1)`` as the box of input pixels it covers: those
        whose centres fall in it (at least the pixel under its centre), clipped to what the
        model sees.

        Raises:
            InvalidOptionError: The box is empty, outside the image, or outside the part the
                model sees (``"crop"``).
        """
        y0, x0, y1, x1 = box
        width, height = self.image
        if not (0 <= y0 < y1 <= height and 0 <= x0 < x1 <= width):
            raise InvalidOptionError(
                f"box {tuple(box)} (y0, x0, y1, x1) does not fit the image of {width}×{height} "
                "pixels; accepted: 0 <= y0 < y1 <= height and 0 <= x0 < x1 <= width"
            )
        cy0, cx0, cy1, cx1 = self.content()
        spans = []
        for (low, high), axis, (lo, hi) in (
            ((y0, y1), 1, (cy0, cy1)),
            ((x0, x1), 0, (cx0, cx1)),
        ):
            scale, offset = self.resized[axis] / self.image[axis], self.offset[axis]
            start = math.ceil(low * scale + offset - 0.5)
            stop = math.ceil(high * scale + offset - 0.5)
            if stop <= start:  # smaller than an input pixel: the pixel under its centre
                start = math.floor((low + high) / 2 * scale + offset)
                stop = start + 1
            start, stop = max(start, lo), min(stop, hi)
            if stop <= start:
                seen = self.seen()
                raise InvalidOptionError(
                    f"box {tuple(box)} lies outside the part of the image the model sees with "
                    f"fit={self.fit!r} (y {seen[0]:.1f}..{seen[2]:.1f}, x {seen[1]:.1f}.."
                    f"{seen[3]:.1f}); choose a box inside it, or another fit"
                )
            spans.append((start, stop))
        (iy0, iy1), (ix0, ix1) = spans
        return iy0, ix0, iy1, ix1

    def apply(self, image: Image.Image, fill: tuple[int, int, int], resample: object) -> Tensor:
        """The model's ``(3, H, W)`` uint8 pixels of an RGB image.

        Args:
            image: The decoded image, of size :attr:`image`.
            fill: The colour of padding.
            resample: The torchvision interpolation of the resize (antialiased).
        """
        from PIL import Image as PILImage

        # The classic functional API: transforms.v2 would import torch._dynamo (~1.5 s) for
        # the same Pillow resize.
        from torchvision.transforms import functional

        if image.size != self.image:
            raise InvalidOptionError(
                f"image of size {image.size}; this framing is for {self.image}"
            )
        if self.resized != image.size:
            width, height = self.resized
            image = functional.resize(
                image, [height, width], interpolation=resample, antialias=True
            )
        if self.offset != (0, 0) or self.size != self.resized:
            canvas = PILImage.new("RGB", self.size, fill)
            canvas.paste(image, self.offset)
            image = canvas
        return functional.pil_to_tensor(image)


def check_fit(fit: object) -> Fit:
    """``fit`` if it is one of :data:`FITS`.

    Raises:
        InvalidOptionError: It is not.
    """
    if fit not in FITS:
        raise InvalidOptionError(f"fit={fit!r}; accepted: {', '.join(map(repr, FITS))}")
    return fit


def _shorter_side_to(image: tuple[int, int], side: int) -> tuple[int, int]:
    """torchvision's ``Resize(side)`` output size ``(width, height)``."""
    width, height = image
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(side * long / short)
    return (side, new_long) if width <= height else (new_long, side)


def _centred(length: int, crop: int) -> int:
    """The offset of a centre crop of ``crop`` from ``length`` (torchvision's anchor), or of a
    centred placement when ``length`` is smaller (torchvision pads, then crops)."""
    if length >= crop:
        return -round((length - crop) / 2.0)
    return (crop - length) // 2


def _overlap(offset: int, length: int, size: int) -> tuple[int, int]:
    """The input interval ``[start, stop)`` covered by an image of ``length`` at ``offset``."""
    return max(0, offset), min(size, offset + length)


def render_framed(
    attributions: Tensor,
    image: Image.Image,
    framing: Framing,
    *,
    style: Style = "overlay",
    sign: Sign = "absolute",
    reduction: ChannelReduction = "sum",
    normalization: Normalization = "percentile",
    percentile: float = 99.0,
    outlier_perc: float = 2.0,
    cmap: str | None = None,
    alpha: float = 0.5,
) -> Image.Image:
    """Render one map at the model's input size back onto the original image (its full size).

    Every image pixel gets the map's bilinear value (``align_corners=False``) at the point it
    became in the model's input, so the overlay is exactly aligned for every fit. The map is
    normalised (see :func:`saliency.rendering.normalize_maps`) over the input pixels that show
    the image. With ``"crop"``, the pixels the model did not see are shown in grey (their
    luminance), without colour.

    Args:
        attributions: ``(1, C, H, W)`` raw attributions at the model's input size.
        image: The decoded image (RGB), of size ``framing.image``.
        framing: How the image became the model's input.
        style, sign, reduction, normalization, percentile, outlier_perc, cmap, alpha: As for
            :func:`saliency.render`.

    Returns:
        An RGB PIL image of the original's size.
    """
    import torch

    from saliency.rendering import (
        DEFAULT_CMAP,
        DEFAULT_DIVERGING_CMAP,
        normalize_maps,
        reduce_channels,
        render,
    )

    width, height = framing.size
    if attributions.dim() != 4 or attributions.shape[0] != 1:
        raise InvalidOptionError(
            f"attributions must be (1, C, H, W); got {tuple(attributions.shape)}"
        )
    if tuple(attributions.shape[-2:]) != (height, width):
        raise InvalidOptionError(
            f"attributions of {attributions.shape[-1]}×{attributions.shape[-2]} pixels do not "
            f"match the model input of this framing, {width}×{height}"
        )
    y0, x0, y1, x1 = framing.content()
    shown = attributions[..., y0:y1, x0:x1]
    # The input pixels showing the image cover the resized image (squash, pad): resampling
    # them to the image's size is the exact inverse of the resize.
    if (x1 - x0, y1 - y0) == framing.resized:
        (picture,) = render(
            shown,
            [image],
            style=style,
            sign=sign,
            reduction=reduction,
            normalization=normalization,
            percentile=percentile,
            outlier_perc=outlier_perc,
            cmap=cmap,
            alpha=alpha,
            as_pil=True,
        )
        return picture
    # Cropped: normalise the map where it is, extend it by its edge values over the whole
    # resized image (so that bilinear values inside the crop are those of the map alone), draw
    # it at the image's size with the scale already applied, and grey what was not seen.
    maps = normalize_maps(
        reduce_channels(shown.detach().float(), reduction),
        sign,
        normalization,
        percentile,
        outlier_perc,
    )
    left, top = x0 - framing.offset[0], y0 - framing.offset[1]
    right = framing.resized[0] - (left + (x1 - x0))
    bottom = framing.resized[1] - (top + (y1 - y0))
    extended = torch.nn.functional.pad(maps[:, None], (left, right, top, bottom), mode="replicate")
    # Already scaled: a second scale by the maximum (1, or 0 for an empty map) changes nothing.
    drawn = render(
        extended,
        [image],
        style=style,
        sign="all" if sign == "all" else "positive",
        percentile=100.0,
        cmap=cmap or (DEFAULT_DIVERGING_CMAP if sign == "all" else DEFAULT_CMAP),
        alpha=alpha,
    )
    assert isinstance(drawn, torch.Tensor)  # one image: one tensor
    rgb = image.convert("RGB")
    original = torch.frombuffer(bytearray(rgb.tobytes()), dtype=torch.uint8)
    original = original.view(rgb.height, rgb.width, 3).to(drawn.device)
    luminance = torch.tensor([0.299, 0.587, 0.114], device=drawn.device)
    grey = (original.float() @ luminance).round().clamp(0, 255).to(torch.uint8)
    inside = _seen_mask(framing, drawn.device)
    blended = torch.where(inside[..., None], drawn[0], grey[..., None].expand(-1, -1, 3))
    from PIL import Image as PILImage

    return PILImage.fromarray(blended.cpu().numpy())


def _seen_mask(framing: Framing, device: torch.device) -> Tensor:
    """``(H, W)`` bool: the image pixels whose centres the model's input covers."""
    import torch

    y0, x0, y1, x1 = framing.content()
    axes = []
    for axis, (low, high) in ((1, (y0, y1)), (0, (x0, x1))):
        centres = torch.arange(framing.image[axis], dtype=torch.float64, device=device) + 0.5
        position = centres * (framing.resized[axis] / framing.image[axis]) + framing.offset[axis]
        axes.append((position >= low) & (position < high))
    rows, columns = axes
    return rows[:, None] & columns[None, :]
