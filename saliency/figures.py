"""Labelled figures of explanations: a PNG strip for notebooks (Pillow only) and a matplotlib
figure, both with a caption per panel (method, class name, score) and a colour bar per map.

The overlays themselves are the pixels of :func:`saliency.render`; legends and captions are
drawn around them, never on them.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import PIL.Image
import torch
from PIL import ImageDraw, ImageFont
from torch import Tensor

from saliency.errors import InvalidOptionError
from saliency.legend import Legend, caption, legend_of, samples
from saliency.rendering import colormap_lut

if TYPE_CHECKING:
    from saliency.explanation import Explanation

__all__ = ["show", "strip"]

Images = Tensor | Sequence[Tensor | PIL.Image.Image]

MAX_SAMPLES = 8
"""Samples shown per explanation unless ``max_samples`` says otherwise."""
_SMALLEST, _LARGEST = 160, 320  # a panel's longest side in the strip, in pixels
_FONT_SIZE = 12
_LINE = 16
_PAD = 6
_BAR = 10
_TEXT = (29, 29, 31)
_MUTED = (95, 99, 104)


def strip(
    explanations: Any,
    images: Images | None = None,
    *,
    max_samples: int = MAX_SAMPLES,
    **render_options: Any,
) -> PIL.Image.Image:
    """A PNG-ready picture: one row per explanation, one panel per sample.

    Each panel has the method and the explained class (name and probability, or the callable
    target's score) above the overlay, and the colour bar with its value range below; a line
    under each row says what the colours mean. Panels are scaled to a longest side between 160
    and 320 pixels (small maps are enlarged without smoothing, so their pixels stay visible).

    Args:
        explanations: An :class:`~saliency.Explanation`, a sequence of them, or the dict
            :func:`saliency.explain_many` returns.
        images: Backgrounds for every row (default: each explanation's own).
        max_samples: At most this many samples per row.
        **render_options: Passed to :func:`saliency.render` (``sign``, ``cmap``, ...).
    """
    rows = _explanations(explanations)
    count = samples(rows, _check_count(max_samples))
    font, small = _font(_FONT_SIZE), _font(_FONT_SIZE - 1)
    pictures: list[tuple[Explanation, Legend, list[PIL.Image.Image]]] = []
    for explanation in rows:
        head = explanation.head(count)
        legend = legend_of(head.attributions, **render_options)
        backgrounds = None if images is None else _head(images, count)
        panels = head.pictures(backgrounds, **render_options)
        pictures.append((head, legend, [_panel_size(p) for p in panels]))
    width = max(sum(p.width for p in row) + _PAD * (len(row) + 1) for _, _, row in pictures)
    row_heights = [
        2 * _LINE + max(p.height for p in row) + _BAR + _LINE + _LINE + 3 * _PAD
        for _, _, row in pictures
    ]
    canvas = PIL.Image.new("RGB", (width, sum(row_heights)), "white")
    draw = ImageDraw.Draw(canvas)
    top = 0
    for (head, legend, row), height in zip(pictures, row_heights, strict=True):
        left = _PAD
        for sample, picture in enumerate(row):
            y = top + _PAD
            _text(draw, (left, y), head.method, font, _TEXT, picture.width)
            _text(draw, (left, y + _LINE), caption(head, sample), small, _MUTED, picture.width)
            y += 2 * _LINE
            canvas.paste(picture, (left, y))
            y += picture.height + 3
            canvas.paste(_bar(legend, picture.width), (left, y))
            _ticks(draw, legend.ticks(sample), left, y + _BAR + 1, picture.width, small)
            left += picture.width + _PAD
        _text(draw, (_PAD, top + height - _LINE - 2), legend.meaning, small, _MUTED, width - _PAD)
        top += height
    return canvas


def show(
    explanations: Any,
    images: Images | None = None,
    *,
    max_samples: int = MAX_SAMPLES,
    **render_options: Any,
) -> Any:
    """A matplotlib figure: one row per sample, the image, then each explanation's overlay
    titled with its method and class, beside a colour bar in attribution units.

    Args:
        explanations, images, max_samples, **render_options: as in :func:`strip`.

    Returns:
        The ``matplotlib.figure.Figure``.
    """
    import matplotlib.pyplot as plt
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    rows = _explanations(explanations)
    count = samples(rows, _check_count(max_samples))
    heads = [explanation.head(count) for explanation in rows]
    legends = [legend_of(head.attributions, **render_options) for head in heads]
    backgrounds = None if images is None else _head(images, count)
    overlays = [head.pictures(backgrounds, **render_options) for head in heads]
    originals = heads[0].background_pictures(backgrounds)
    columns = 1 + len(heads)
    figure, axes = plt.subplots(
        count, columns, figsize=(3.4 * columns, 3 * count), squeeze=False, layout="constrained"
    )
    for sample in range(count):
        axes[sample, 0].imshow(originals[sample])
        axes[sample, 0].set_title("input", fontsize=10)
        for column, (head, legend, pictures) in enumerate(
            zip(heads, legends, overlays, strict=True), start=1
        ):
            axis = axes[sample, column]
            axis.imshow(pictures[sample])
            axis.set_title(f"{head.method}\n{caption(head, sample)}", fontsize=10)
            low, high = legend.limits(sample)
            mappable = ScalarMappable(Normalize(low, high), plt.get_cmap(legend.cmap))
            bar = figure.colorbar(mappable, ax=axis, fraction=0.046, pad=0.02)
            positions = [low, 0.0, high] if legend.signed else [low, high]
            bar.set_ticks(positions, labels=list(legend.ticks(sample)))
            bar.ax.tick_params(labelsize=8)
        for axis in axes[sample]:
            axis.axis("off")
    meanings = dict.fromkeys(legend.meaning for legend in legends)
    figure.suptitle(" | ".join(meanings), fontsize=9, color="#5f6368")
    return figure


def _is_explanation(value: object) -> bool:
    """An Explanation, recognised by what figures use of it (importing the class here would
    make a cycle: Explanation's own display calls this module)."""
    return all(hasattr(value, name) for name in ("attributions", "head", "pictures", "method"))


def _explanations(explanations: Any) -> list[Explanation]:
    if _is_explanation(explanations):
        return [explanations]
    values = list(explanations.values()) if isinstance(explanations, Mapping) else explanations
    if (
        isinstance(values, str)
        or not isinstance(values, Sequence)
        or not values
        or not all(_is_explanation(v) for v in values)
    ):
        raise InvalidOptionError(
            f"expected an Explanation, a sequence of them or a dict from explain_many; got "
            f"{type(explanations).__name__}"
        )
    return list(values)


def _check_count(max_samples: object) -> int:
    if isinstance(max_samples, bool) or not isinstance(max_samples, int) or max_samples < 1:
        raise InvalidOptionError(f"max_samples={max_samples!r}; accepted: an int ≥ 1")
    return max_samples


def _head(images: Images, count: int) -> Images:
    return images[:count] if isinstance(images, Tensor) else list(images)[:count]


def _panel_size(picture: PIL.Image.Image) -> PIL.Image.Image:
    """Enlarge small overlays by a whole factor (nearest), shrink large ones (Lanczos)."""
    longest = max(picture.size)
    if longest < _SMALLEST:
        factor = -(-_SMALLEST // longest)
        size = (picture.width * factor, picture.height * factor)
        return picture.resize(size, PIL.Image.Resampling.NEAREST)
    if longest > _LARGEST:
        scale = _LARGEST / longest
        size = (max(1, round(picture.width * scale)), max(1, round(picture.height * scale)))
        return picture.resize(size, PIL.Image.Resampling.LANCZOS)
    return picture


def _bar(legend: Legend, width: int) -> PIL.Image.Image:
    lut = (colormap_lut(legend.cmap) * 255).round().to(torch.uint8)
    colours = PIL.Image.fromarray(lut[None].numpy())
    bar = colours.resize((width, _BAR), PIL.Image.Resampling.BILINEAR)
    if legend.signed:  # mark 0 in the middle of a diverging bar
        ImageDraw.Draw(bar).line([(width // 2, 0), (width // 2, _BAR)], fill=_TEXT, width=1)
    return bar


def _ticks(
    draw: ImageDraw.ImageDraw,
    labels: Sequence[str],
    left: int,
    top: int,
    width: int,
    font: ImageFont.FreeTypeFont | ImageFont.ImageFont,
) -> None:
    draw.text((left, top), labels[0], fill=_MUTED, font=font)
    if len(labels) == 3:
        middle = draw.textlength(labels[1], font=font)
        draw.text((left + (width - middle) / 2, top), labels[1], fill=_MUTED, font=font)
    end = draw.textlength(labels[-1], font=font)
    draw.text((left + width - end, top), labels[-1], fill=_MUTED, font=font)


def _text(
    draw: ImageDraw.ImageDraw,
    where: tuple[int, int],
    text: str,
    font: ImageFont.FreeTypeFont | ImageFont.ImageFont,
    fill: tuple[int, int, int],
    width: int,
) -> None:
    """``text`` cut with "…" to fit ``width`` pixels."""
    if draw.textlength(text, font=font) > width:
        while text and draw.textlength(text + "…", font=font) > width:
            text = text[:-1]
        text += "…"
    draw.text(where, text, fill=fill, font=font)


@functools.lru_cache(maxsize=4)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """DejaVu Sans from matplotlib's data (it has ≥, −, → and ·), else Pillow's own font."""
    import matplotlib  # already loaded by the colormap lookup table

    path = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    try:
        return ImageFont.truetype(str(path), size)
    except (OSError, ImportError):
        pass
    try:
        return ImageFont.load_default(size=size)
    except (AttributeError, OSError, TypeError, ImportError):  # Pillow without FreeType
        return ImageFont.load_default()
