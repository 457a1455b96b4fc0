"""What the colours of a rendered map mean, and what each panel shows: colour-bar legends and
panel captions (method, class name, score) for :mod:`saliency.figures` and the notebook.

A legend follows the render options: the colormap, the sign (magnitudes from 0, or signed
values diverging around a marked 0) and, per sample, the attribution value :math:`s` at the top
of the bar (:func:`saliency.rendering.map_scales`; values beyond it take the end colour).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from saliency.errors import InvalidOptionError, accepted
from saliency.rendering import (
    DEFAULT_CMAP,
    DEFAULT_DIVERGING_CMAP,
    Sign,
    map_scales,
    reduce_channels,
)
from saliency.validation import check_choice

if TYPE_CHECKING:
    from saliency.explanation import Explanation

__all__ = ["RENDER_OPTIONS", "Legend", "caption", "legend_of", "samples"]

RENDER_OPTIONS = (
    "style",
    "sign",
    "reduction",
    "normalization",
    "percentile",
    "outlier_perc",
    "cmap",
    "alpha",
)
"""The keyword options of :func:`saliency.render` that a figure passes on."""

_MEANINGS: dict[str, str] = {
    "absolute": "|attribution|: low → high relevance",
    "positive": "positive attribution: evidence for the target, low → high",
    "negative": "negative attribution: evidence against the target, low → high",
    "all": "attribution: − against · 0 · + for the target",
}


@dataclass(frozen=True)
class Legend:
    """The colour scale of rendered maps.

    Attributes:
        cmap: The matplotlib colormap name.
        sign: Which values are shown (see :func:`saliency.rendering.normalize_maps`).
        scales: Per sample, the attribution value at the top of the bar (``±`` for ``"all"``).
        meaning: One line saying what the colours stand for.
        masked: ``style="masked"``: brightness, not colour, shows the relevance.
    """

    cmap: str
    sign: Sign
    scales: tuple[float, ...]
    meaning: str
    masked: bool = False

    @property
    def signed(self) -> bool:
        """Whether the bar diverges around a 0 in its middle."""
        return self.sign == "all"

    def ticks(self, sample: int) -> tuple[str, ...]:
        """Labels for the bar's left end, (middle,) and right end for one sample."""
        scale = _number(self.scales[sample])
        if self.signed:
            return (f"−{scale}", "0", f"+{scale}")
        if self.sign == "negative":
            return ("0", f"≤ −{scale}")
        return ("0", f"≥ {scale}")

    def limits(self, sample: int) -> tuple[float, float]:
        """The values at the bar's ends for one sample (``(-s, s)`` signed, else ``(0, s)``)."""
        scale = self.scales[sample]
        return (-scale, scale) if self.signed else (0.0, scale)


def legend_of(attributions: Tensor, **render_options: Any) -> Legend:
    """The legend of ``render(attributions, ..., **render_options)``.

    Raises:
        InvalidOptionError: An option ``render`` does not take, or a bad value.
    """
    unknown = sorted(set(render_options) - set(RENDER_OPTIONS) - {"as_pil"})
    if unknown:
        raise InvalidOptionError(
            f"unknown render option {unknown[0]!r}; accepted: {accepted(RENDER_OPTIONS)}"
        )
    sign = render_options.get("sign", "absolute")
    check_choice("sign", sign, Sign)
    cmap = render_options.get("cmap")
    if cmap is None:
        cmap = DEFAULT_DIVERGING_CMAP if sign == "all" else DEFAULT_CMAP
    maps = reduce_channels(attributions.detach().float(), render_options.get("reduction", "sum"))
    scales = map_scales(
        maps,
        sign,
        render_options.get("normalization", "percentile"),
        render_options.get("percentile", 99.0),
        render_options.get("outlier_perc", 2.0),
    )
    masked = render_options.get("style", "overlay") == "masked"
    meaning = _MEANINGS[sign]
    if masked:
        cmap, meaning = "gray", f"brightness = {meaning}"
    return Legend(str(cmap), sign, tuple(float(s) for s in scales.cpu()), meaning, masked)


def caption(explanation: Explanation, sample: int) -> str:
    """What sample ``sample`` of ``explanation`` explains: its class (name if known) and score.

    ``"circle · p=0.93"`` for a class target with model outputs (the softmax probability of the
    class), ``"class 7"`` without outputs, ``"score 2.31"`` for a callable target.
    """
    targets = explanation.targets
    scores = explanation.target_scores
    if targets is None:
        if scores is None:
            return "callable target"
        return f"score {_number(float(scores[sample]))}"
    index = int(targets[sample])
    names = explanation.class_names
    name = names[index] if names is not None and 0 <= index < len(names) else f"class {index}"
    outputs = explanation.outputs
    if outputs is not None and outputs.ndim == 2 and outputs.shape[1] > 1:
        probability = torch.softmax(outputs[sample].float(), dim=0)[index]
        return f"{name} · p={float(probability):.2f}"
    if scores is not None:
        return f"{name} · score {_number(float(scores[sample]))}"
    return name


def _number(value: float) -> str:
    """A short, readable number: 3 significant digits."""
    if not math.isfinite(value):
        return str(value)
    return f"{value:.3g}"


def samples(explanations: Sequence[Explanation], limit: int) -> int:
    """How many samples a figure of ``explanations`` shows: their fewest, at most ``limit``."""
    return min(limit, *(len(e) for e in explanations))
