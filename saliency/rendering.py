"""Render attribution maps as images, in torch, on the attributions' device.

Pipeline: reduce channels → normalise each sample (sign, scale, clamp) → upsample bilinearly to
each background → colour through a 256-entry lookup table → blend → ``uint8``.

The upsampled map, its colours and the blend are made a band of rows at a time
(``_BAND_PIXELS`` output pixels), so a large image needs little more memory than its ``uint8``
result; each pixel goes through the same operations whatever the band, so the pixels do not
depend on it.

Every step is built from correctly rounded element-wise ops, sorts, integer sums and integer
gathers on ``attributions.device``, so CPU and CUDA give the same pixels. Only the final
``uint8`` image leaves the device, and only when PIL output is asked for.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, overload

import torch
from PIL import Image
from torch import Tensor

from saliency.errors import InvalidOptionError, accepted
from saliency.validation import check_choice, is_real

__all__ = [
    "ChannelReduction",
    "Normalization",
    "Sign",
    "Style",
    "colormap_lut",
    "map_scales",
    "normalize_maps",
    "reduce_channels",
    "render",
]

Sign = Literal["absolute", "positive", "negative", "all"]
ChannelReduction = Literal["sum", "max_abs"]
Normalization = Literal["percentile", "cumulative_mass"]
Style = Literal["heatmap", "overlay", "masked"]

ImageInput = Tensor | Sequence[Tensor | Image.Image]

LUT_SIZE = 256
DEFAULT_CMAP = "inferno"
DEFAULT_DIVERGING_CMAP = "RdBu_r"
_EXAMPLE_CMAPS = ("inferno", "viridis", "magma", "gray", "jet", "RdBu_r", "bwr", "seismic")


def _check_number(option: str, value: object, ok: Callable[[float], bool], interval: str) -> float:
    if not is_real(value) or not ok(float(value)):
        raise InvalidOptionError(
            f"{option}={value!r} is out of range; accepted: a number in {interval}"
        )
    return float(value)


def _check_attributions(attributions: object) -> Tensor:
    if not isinstance(attributions, Tensor):
        got = type(attributions).__name__
    elif attributions.dim() != 4 or 0 in attributions.shape[1:]:
        got = f"a tensor of shape {tuple(attributions.shape)}"
    else:
        return attributions
    raise InvalidOptionError(
        f"attributions must be a 4-D tensor (N, C, H, W), or (N, 1, H, W) for Grad-CAM maps, "
        f"with C, H, W > 0; got {got}"
    )


def reduce_channels(attributions: Tensor, reduction: ChannelReduction = "sum") -> Tensor:
    """Reduce ``(N, C, H, W)`` attributions to ``(N, H, W)`` signed maps.

    Args:
        attributions: Raw, signed attributions; ``(N, 1, H, W)`` maps just drop the channel.
        reduction: ``"sum"``: :math:`m = \\sum_c a_c`. ``"max_abs"``: :math:`m = a_{c^*}` with
            :math:`c^* = \\arg\\max_c |a_c|` (first channel on ties), so the sign is kept.

    Returns:
        The ``(N, H, W)`` maps, in the attributions' dtype and on their device.

    Raises:
        InvalidOptionError: Unknown ``reduction`` or attributions that are not 4-D.
    """
    check_choice("reduction", reduction, ChannelReduction)
    attributions = _check_attributions(attributions)
    if attributions.shape[1] == 1:
        return attributions[:, 0]
    if reduction == "max_abs":
        index = attributions.abs().argmax(dim=1, keepdim=True)
        return attributions.gather(1, index)[:, 0]
    total = attributions[:, 0]
    for channel in range(1, attributions.shape[1]):  # fixed order: same sums on every device
        total = total + attributions[:, channel]
    return total


def _select_sign(maps: Tensor, sign: Sign) -> Tensor:
    if sign == "absolute":
        return maps.abs()
    if sign == "positive":
        return maps.clamp(min=0.0)
    if sign == "negative":
        return maps.neg().clamp(min=0.0)
    return maps


def _percentile(values: Tensor, percentile: float) -> Tensor:
    """Per-row percentile of ``(N, M)`` values, interpolated linearly as numpy's default.

    Two ``kthvalue`` selections (exact order statistics, O(M)) instead of ``torch.quantile``,
    which refuses inputs of more than ``2**24`` elements.
    """
    position = percentile / 100.0 * (values.shape[1] - 1)
    low = math.floor(position)
    below = values.kthvalue(low + 1, dim=1).values
    if position == low:
        return below
    above = values.kthvalue(min(low + 2, values.shape[1]), dim=1).values
    return below + (above - below) * (position - low)


def _cumulative_mass_of_sorted(values: Tensor, outlier_perc: float) -> Tensor:
    """Per-row value where the cumulative sum of ascending ``(N, M)`` values first reaches
    ``(100 - outlier_perc)%`` of the total (captum's visualisation threshold).

    The sums run in fixed point (int64, the row maximum = ``2**bits``), which is exact and
    order-free, so every device finds the same threshold.
    """
    bits = 62 - values.shape[1].bit_length()
    as_double = values.double()
    peak = as_double[:, -1:].clamp(min=torch.finfo(torch.float64).tiny)
    cumulative = (as_double / peak * float(2**bits)).round().long().cumsum(dim=1)
    threshold = cumulative[:, -1:].double() * (0.01 * (100.0 - outlier_perc))
    index = (cumulative.double() < threshold).sum(dim=1, keepdim=True)
    return values.gather(1, index.clamp(max=values.shape[1] - 1))[:, 0]


def normalize_maps(
    maps: Tensor,
    sign: Sign = "absolute",
    normalization: Normalization = "percentile",
    percentile: float = 99.0,
    outlier_perc: float = 2.0,
) -> Tensor:
    """Normalise signed ``(N, H, W)`` maps, one scale per sample.

    The selected values are :math:`|a|` (``"absolute"``), :math:`\\max(a, 0)` (``"positive"``),
    :math:`\\max(-a, 0)` (``"negative"``) or :math:`a` (``"all"``); the result is
    :math:`\\mathrm{clamp}(v / s, 0, 1)`, or :math:`\\mathrm{clamp}(v / s, -1, 1)` for ``"all"``,
    where the scale :math:`s` is computed from :math:`|v|` over all pixels of the sample:

    - ``"percentile"``: the ``percentile``-th percentile (linear interpolation, as numpy's).
    - ``"cumulative_mass"``: sort ascending, :math:`s = |v|_{(k)}` for the first :math:`k` with
      :math:`\\sum_{i \\le k} |v|_{(i)} \\ge (1 - \\text{outlier\\_perc}/100) \\sum_i |v|_{(i)}`
      (captum's ``_normalize_attr``).

    A zero scale falls back to the sample's maximum; an all-zero sample gives zeros; NaN gives 0.

    Args:
        maps: ``(N, H, W)`` signed maps, any float dtype and device.
        sign: Which values to show.
        normalization: How the scale is chosen.
        percentile: In ``(0, 100]``; used by ``"percentile"``.
        outlier_perc: In ``[0, 100)``; used by ``"cumulative_mass"``.

    Returns:
        ``float32`` maps of the same shape, in ``[0, 1]`` (``[-1, 1]`` for ``"all"``).

    Raises:
        InvalidOptionError: An unknown choice, a number out of range, or maps that are not
            ``(N, H, W)`` with ``H, W > 0``.
    """
    check_choice("sign", sign, Sign)
    check_choice("normalization", normalization, Normalization)
    percentile = _check_number("percentile", percentile, lambda v: 0 < v <= 100, "(0, 100]")
    outlier_perc = _check_number("outlier_perc", outlier_perc, lambda v: 0 <= v < 100, "[0, 100)")
    if not isinstance(maps, Tensor) or maps.dim() != 3 or 0 in maps.shape[1:]:
        got = tuple(maps.shape) if isinstance(maps, Tensor) else type(maps).__name__
        raise InvalidOptionError(f"maps must be a (N, H, W) tensor with H, W > 0; got {got}")
    selected = _select_sign(maps.float(), sign)
    scale = _scales(selected, normalization, percentile, outlier_perc)
    normalized = (selected / scale[:, None, None]).clamp(-1.0 if sign == "all" else 0.0, 1.0)
    return torch.nan_to_num(normalized, nan=0.0)


def map_scales(
    maps: Tensor,
    sign: Sign = "absolute",
    normalization: Normalization = "percentile",
    percentile: float = 99.0,
    outlier_perc: float = 2.0,
) -> Tensor:
    """The ``(N,)`` float32 scales :math:`s` of :func:`normalize_maps`: the value of the selected
    map that the top of the colour scale stands for (``±s`` for ``sign="all"``).

    Takes the same arguments as :func:`normalize_maps`; ``normalize_maps(maps)`` equals
    ``clamp(v / map_scales(maps), 0, 1)`` (``-1, 1`` for ``"all"``) for the selected values
    :math:`v`. Legends read it to label their colour bars in attribution units.
    """
    check_choice("sign", sign, Sign)
    check_choice("normalization", normalization, Normalization)
    percentile = _check_number("percentile", percentile, lambda v: 0 < v <= 100, "(0, 100]")
    outlier_perc = _check_number("outlier_perc", outlier_perc, lambda v: 0 <= v < 100, "[0, 100)")
    if not isinstance(maps, Tensor) or maps.dim() != 3 or 0 in maps.shape[1:]:
        got = tuple(maps.shape) if isinstance(maps, Tensor) else type(maps).__name__
        raise InvalidOptionError(f"maps must be a (N, H, W) tensor with H, W > 0; got {got}")
    return _scales(_select_sign(maps.float(), sign), normalization, percentile, outlier_perc)


def _scales(
    selected: Tensor, normalization: Normalization, percentile: float, outlier_perc: float
) -> Tensor:
    magnitudes = selected.abs().flatten(1)
    if normalization == "percentile":
        scale = _percentile(magnitudes, percentile)
    else:
        scale = _cumulative_mass_of_sorted(magnitudes.sort(dim=1).values, outlier_perc)
    scale = torch.where(scale > 0, scale, magnitudes.amax(dim=1))
    return torch.where(scale > 0, scale, torch.ones_like(scale))


def colormap_lut(name: str, device: torch.device | str = "cpu") -> Tensor:
    """The ``(256, 3)`` ``float32`` RGB lookup table in ``[0, 1]`` of a matplotlib colormap.

    Entry :math:`i` is the colormap's colour :math:`i` when resampled to 256 colours. Built once
    per ``(name, device)`` and cached: treat the returned tensor as read-only.

    Raises:
        InvalidOptionError: ``name`` is not a colormap registered in ``matplotlib.colormaps``.
    """
    if not isinstance(name, str):
        raise InvalidOptionError(f"cmap={name!r} is not a colormap name (a str)")
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return _cached_lut(name, device)


@functools.lru_cache(maxsize=64)
def _cached_lut(name: str, device: torch.device) -> Tensor:
    import matplotlib
    import numpy as np

    try:
        colormap = matplotlib.colormaps[name]
    except KeyError:
        raise InvalidOptionError(
            f"cmap={name!r} is not a matplotlib colormap; accepted: any name in "
            f"matplotlib.colormaps, e.g. {accepted(_EXAMPLE_CMAPS)}"
        ) from None
    rgba = colormap.resampled(LUT_SIZE)(np.arange(LUT_SIZE))
    return torch.tensor(rgba[:, :3], dtype=torch.float32, device=device)


def _resize_axis(maps: Tensor, dim: int, size: int) -> Tensor:
    """Bilinear (``align_corners=False``) resampling of one axis, as ``F.interpolate`` does."""
    length = maps.shape[dim]
    if length == size:
        return maps
    target = torch.arange(size, dtype=torch.float64, device=maps.device)
    source = ((target + 0.5) * (length / size) - 0.5).clamp(min=0.0)
    first = source.floor().long().clamp(max=length - 1)
    second = (first + 1).clamp(max=length - 1)
    shape = [1] * maps.dim()
    shape[dim] = size
    weight = (source - first.double()).float().view(shape)
    kept = maps.index_select(dim, first) * (1.0 - weight)
    return kept + maps.index_select(dim, second) * weight


def _lut_index(maps: Tensor, sign: Sign) -> Tensor:
    scaled = (maps + 1.0) * ((LUT_SIZE - 1) / 2) if sign == "all" else maps * (LUT_SIZE - 1)
    return scaled.round().long().clamp(0, LUT_SIZE - 1)


def _to_uint8(rgb: Tensor) -> Tensor:
    return (rgb * 255.0).round().clamp(0, 255).to(torch.uint8).contiguous()


def _check_dtype(image: Tensor) -> None:
    if image.dtype != torch.uint8 and not image.is_floating_point():
        raise InvalidOptionError(
            f"images of dtype {image.dtype} are not supported; accepted: uint8 or float in [0, 1]"
        )


def _unit_float(image: Tensor) -> Tensor:
    _check_dtype(image)
    return image.float() / 255.0 if image.dtype == torch.uint8 else image.float()


# Output pixels composed at a time: large images are rendered in bands of rows, so the float32
# temporaries (upsampled map, colours, background, blend: ~60 bytes a pixel) stay near 120 MB
# whatever the image's size; only the uint8 result (3 bytes a pixel) is whole.
_BAND_PIXELS = 1 << 21


@dataclass(frozen=True)
class _Backdrop:
    """``count`` backgrounds of one size, handed out band by band.

    Attributes:
        count: backgrounds (maps drawn on them).
        height: their height.
        width: their width.
        rows: ``rows(top, bottom)`` is the band as ``(count, bottom - top, width, 3)`` float32
            in ``[0, 1]`` on the attributions' device.
        pixels: the same band as ``uint8`` (what :attr:`rows` divides by 255), when the
            backgrounds are ``uint8`` (PIL images, ``uint8`` tensors); else None.
    """

    count: int
    height: int
    width: int
    rows: Callable[[int, int], Tensor]
    pixels: Callable[[int, int], Tensor] | None = None


def _tensor_rows(images: Tensor) -> Callable[[int, int], Tensor]:
    """Bands of ``(n, 3, h, w)`` uint8/float images as ``(n, rows, w, 3)`` float32."""
    return lambda top, bottom: _unit_float(images[:, :, top:bottom]).permute(0, 2, 3, 1)


def _tensor_pixels(images: Tensor) -> Callable[[int, int], Tensor] | None:
    """Bands of ``(n, 3, h, w)`` uint8 images as ``(n, rows, w, 3)`` uint8 (None: float)."""
    if images.dtype != torch.uint8:
        return None
    return lambda top, bottom: images[:, :, top:bottom].permute(0, 2, 3, 1)


def _pil_pixels(image: Image.Image, device: torch.device) -> Callable[[int, int], Tensor]:
    """Bands of a PIL image as ``(1, rows, w, 3)`` uint8, decoded one band at a time."""
    rgb = image if image.mode == "RGB" else image.convert("RGB")

    def pixels(top: int, bottom: int) -> Tensor:
        band = rgb.crop((0, top, rgb.width, bottom)).tobytes()
        data = torch.frombuffer(bytearray(band), dtype=torch.uint8)
        return data.view(1, bottom - top, rgb.width, 3).to(device)

    return pixels


def _as_rows(pixels: Callable[[int, int], Tensor]) -> Callable[[int, int], Tensor]:
    return lambda top, bottom: _unit_float(pixels(top, bottom))


def _joined(parts: Sequence[Callable[[int, int], Tensor]]) -> Callable[[int, int], Tensor]:
    """Bands of several same-size backgrounds, stacked."""
    return lambda top, bottom: torch.cat([part(top, bottom) for part in parts])


def _check_background(item: object) -> tuple[int, int]:
    """The ``(h, w)`` of one background, checked."""
    if isinstance(item, Image.Image):
        return item.height, item.width
    if not isinstance(item, Tensor) or item.dim() != 3 or item.shape[0] != 3:
        got = tuple(item.shape) if isinstance(item, Tensor) else type(item).__name__
        raise InvalidOptionError(
            f"each image must be a (3, h, w) uint8/float tensor or a PIL image; got {got}"
        )
    _check_dtype(item)
    return item.shape[1], item.shape[2]


def _backgrounds(images: object, count: int, device: torch.device) -> list[_Backdrop]:
    """The backgrounds, checked: one backdrop when they share a size, else one each, in
    order."""
    if isinstance(images, Tensor):
        if images.dim() != 4 or images.shape[1] != 3:
            raise InvalidOptionError(
                f"images must be a (N, 3, h, w) tensor; got shape {tuple(images.shape)}"
            )
        found = images.shape[0]
    elif isinstance(images, Sequence) and not isinstance(images, (str, bytes)):
        found = len(images)
    else:
        raise InvalidOptionError(
            f"images must be a (N, 3, h, w) tensor or a sequence of (3, h, w) tensors or PIL "
            f"images; got {type(images).__name__}"
        )
    if found != count:
        raise InvalidOptionError(f"got {found} images for {count} attribution maps")
    if isinstance(images, Tensor):
        _check_dtype(images)
        moved = images.to(device)
        return [
            _Backdrop(
                count, moved.shape[2], moved.shape[3], _tensor_rows(moved), _tensor_pixels(moved)
            )
        ]
    sizes = [_check_background(item) for item in images]
    pixels: list[Callable[[int, int], Tensor] | None] = []
    rows: list[Callable[[int, int], Tensor]] = []
    for item in images:
        if isinstance(item, Image.Image):
            band = _pil_pixels(item, device)
            pixels.append(band)
            rows.append(_as_rows(band))
        else:
            moved = item.to(device)[None]
            pixels.append(_tensor_pixels(moved))
            rows.append(_tensor_rows(moved))
    if len(set(sizes)) == 1:
        height, width = sizes[0]
        known = [part for part in pixels if part is not None]
        joined = _joined(known) if len(known) == len(pixels) else None
        return [_Backdrop(count, height, width, _joined(rows), joined)]
    return [
        _Backdrop(1, height, width, row, pixel)
        for (height, width), row, pixel in zip(sizes, rows, pixels, strict=True)
    ]


def _rows_of(maps: Tensor, height: int, top: int, bottom: int) -> Tensor:
    """Output rows ``top:bottom`` of ``maps`` resampled to ``height`` rows, as
    :func:`_resize_axis` computes every row (the same operations: the same values)."""
    length = maps.shape[1]
    if length == height:
        return maps[:, top:bottom]
    target = torch.arange(top, bottom, dtype=torch.float64, device=maps.device)
    source = ((target + 0.5) * (length / height) - 0.5).clamp(min=0.0)
    first = source.floor().long().clamp(max=length - 1)
    second = (first + 1).clamp(max=length - 1)
    weight = (source - first.double()).float().view(1, -1, 1)
    kept = maps.index_select(1, first) * (1.0 - weight)
    return kept + maps.index_select(1, second) * weight


@functools.lru_cache(maxsize=64)
def _uint8_colours(cmap: str, device: torch.device) -> Tensor:
    """The colour map's ``(256, 3)`` colours as ``uint8`` (cached: read-only)."""
    return _to_uint8(_cached_lut(cmap, device))


@functools.lru_cache(maxsize=32)
def _blend_table(cmap: str, device: torch.device, alpha: float) -> Tensor:
    """The overlay blend of the colour map over every ``uint8`` level, flat.

    Entry ``(3k + c)·256 + v`` is the ``uint8`` of
    :math:`(v / 255)(1 - \\alpha) + \\mathrm{lut}_{k,c}\\, \\alpha`, made by the same float32
    operations as blending one pixel directly, so a lookup gives the same bytes in one gather
    instead of ten element-wise passes. Cached per ``(cmap, device, alpha)``: read-only.
    """
    lut = _cached_lut(cmap, device)
    levels = _unit_float(torch.arange(LUT_SIZE, dtype=torch.uint8, device=device))
    blended = levels[None, None, :] * (1.0 - alpha) + lut[:, :, None] * alpha  # (k, c, v)
    return _to_uint8(blended).view(-1)


def _compose(
    maps: Tensor,
    backdrop: _Backdrop | None,
    cmap: str,
    style: Style,
    sign: Sign,
    alpha: float,
) -> Tensor:
    """Colour and blend normalised ``(n, H, W)`` maps over the backdrop, band by band: a
    ``uint8`` ``(n, h, w, 3)`` tensor (``H × W`` without a backdrop)."""
    count = maps.shape[0]
    height, width = maps.shape[1:] if backdrop is None else (backdrop.height, backdrop.width)
    result = torch.empty((count, height, width, 3), dtype=torch.uint8, device=maps.device)
    step = max(1, _BAND_PIXELS // max(1, count * width))
    for top in range(0, height, step):
        bottom = min(height, top + step)
        band = _resize_axis(_rows_of(maps, height, top, bottom), 2, width)
        if style == "masked":
            assert backdrop is not None
            background = backdrop.rows(top, bottom)
            result[:, top:bottom] = _to_uint8(background * band.abs()[..., None])
            continue
        index = _lut_index(band, sign)
        if style == "heatmap":
            result[:, top:bottom] = _uint8_colours(cmap, maps.device)[index]
            continue
        assert backdrop is not None
        if backdrop.pixels is not None:  # uint8 backgrounds: one lookup in the blend table
            channels = torch.arange(
                0, 3 * LUT_SIZE, LUT_SIZE, dtype=torch.int32, device=index.device
            )
            at = (index.to(torch.int32) * (3 * LUT_SIZE))[..., None] + channels
            at += backdrop.pixels(top, bottom)
            blend = _blend_table(cmap, maps.device, alpha)
            result[:, top:bottom] = blend.index_select(0, at.view(-1)).view(at.shape)
        else:
            colour = _cached_lut(cmap, maps.device)[index]
            background = backdrop.rows(top, bottom)
            result[:, top:bottom] = _to_uint8(background * (1.0 - alpha) + colour * alpha)
    return result


def _to_pil(rendered: Tensor | list[Tensor]) -> list[Image.Image]:
    on_cpu = list(rendered.cpu()) if isinstance(rendered, Tensor) else [t.cpu() for t in rendered]
    return [Image.fromarray(image.numpy()) for image in on_cpu]


@overload
def render(
    attributions: Tensor,
    images: ImageInput | None = ...,
    *,
    style: Style = ...,
    sign: Sign = ...,
    reduction: ChannelReduction = ...,
    normalization: Normalization = ...,
    percentile: float = ...,
    outlier_perc: float = ...,
    cmap: str | None = ...,
    alpha: float = ...,
    as_pil: Literal[False] = ...,
) -> Tensor | list[Tensor]: ...


@overload
def render(
    attributions: Tensor,
    images: ImageInput | None = ...,
    *,
    style: Style = ...,
    sign: Sign = ...,
    reduction: ChannelReduction = ...,
    normalization: Normalization = ...,
    percentile: float = ...,
    outlier_perc: float = ...,
    cmap: str | None = ...,
    alpha: float = ...,
    as_pil: Literal[True],
) -> list[Image.Image]: ...


@overload
def render(
    attributions: Tensor,
    images: ImageInput | None = ...,
    *,
    style: Style = ...,
    sign: Sign = ...,
    reduction: ChannelReduction = ...,
    normalization: Normalization = ...,
    percentile: float = ...,
    outlier_perc: float = ...,
    cmap: str | None = ...,
    alpha: float = ...,
    as_pil: bool = ...,
) -> Tensor | list[Tensor] | list[Image.Image]: ...


def render(
    attributions: Tensor,
    images: ImageInput | None = None,
    *,
    style: Style = "overlay",
    sign: Sign = "absolute",
    reduction: ChannelReduction = "sum",
    normalization: Normalization = "percentile",
    percentile: float = 99.0,
    outlier_perc: float = 2.0,
    cmap: str | None = None,
    alpha: float = 0.5,
    as_pil: bool = False,
) -> Tensor | list[Tensor] | list[Image.Image]:
    """Render raw attributions as ``uint8`` RGB images on the attributions' device.

    The maps are reduced (:func:`reduce_channels`), normalised per sample
    (:func:`normalize_maps`), upsampled bilinearly (``align_corners=False``) to each
    background's size and coloured with :func:`colormap_lut`: index
    :math:`\\mathrm{round}(255 m)`, or :math:`\\mathrm{round}(127.5 (m + 1))` for ``sign="all"``
    (0 → 128, the diverging colormap's centre). Styles:

    - ``"heatmap"``: the colour :math:`c`.
    - ``"overlay"``: :math:`(1 - \\alpha)\\, x + \\alpha\\, c` over the image :math:`x`.
    - ``"masked"``: :math:`x \\cdot |m|`.

    Args:
        attributions: ``(N, C, H, W)`` or ``(N, 1, H, W)`` raw, signed attributions (any float
            dtype, computed in ``float32``, detached).
        images: Backgrounds, moved to the attributions' device: a ``(N, 3, h, w)`` float
            (``[0, 1]``) or ``uint8`` tensor, or ``N`` items each a ``(3, h, w)`` tensor or a
            PIL image (any mode); sizes may differ. Required for ``"overlay"``/``"masked"``;
            for ``"heatmap"`` they only set the output size (default: ``H × W``).
        style: What to draw.
        sign: Which values to show (see :func:`normalize_maps`).
        reduction: Channel reduction (see :func:`reduce_channels`).
        normalization: Scale per sample (see :func:`normalize_maps`).
        percentile: In ``(0, 100]``, for ``"percentile"``.
        outlier_perc: In ``[0, 100)``, for ``"cumulative_mass"``.
        cmap: A matplotlib colormap name; ``None`` → ``"inferno"``, or ``"RdBu_r"`` for
            ``sign="all"``.
        alpha: Heatmap weight in ``[0, 1]`` for ``"overlay"``.
        as_pil: Return PIL RGB images (the only step that copies to the CPU).

    Returns:
        A contiguous ``uint8`` tensor ``(N, H, W, 3)`` on the attributions' device when all
        outputs share one size, else a list of ``(H_i, W_i, 3)`` tensors; with ``as_pil``, a
        list of ``N`` PIL images.

    Raises:
        InvalidOptionError: A bad choice or number, a bad shape, a missing background or a
            count of images that differs from ``N``.
    """
    check_choice("style", style, Style)
    check_choice("sign", sign, Sign)
    alpha = _check_number("alpha", alpha, lambda v: 0 <= v <= 1, "[0, 1]")
    attributions = _check_attributions(attributions)
    if images is None and style != "heatmap":
        raise InvalidOptionError(
            f"style={style!r} needs images (the backgrounds); pass images=... or use "
            f"style='heatmap'"
        )
    device = attributions.device
    if cmap is None:
        cmap = DEFAULT_DIVERGING_CMAP if sign == "all" else DEFAULT_CMAP
    device = colormap_lut(cmap, device).device  # checks the name; the device with its index
    signed = reduce_channels(attributions.detach().float(), reduction)
    maps = normalize_maps(signed, sign, normalization, percentile, outlier_perc)
    backdrops = None if images is None else _backgrounds(images, len(maps), device)
    rendered: Tensor | list[Tensor]
    if backdrops is None or len(backdrops) == 1:
        rendered = _compose(
            maps, None if backdrops is None else backdrops[0], cmap, style, sign, alpha
        )
    else:
        rendered = [
            _compose(maps[i : i + 1], backdrop, cmap, style, sign, alpha)[0]
            for i, backdrop in enumerate(backdrops)
        ]
    return _to_pil(rendered) if as_pil else rendered
