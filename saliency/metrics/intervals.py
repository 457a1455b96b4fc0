"""95% intervals for metric means over scenes: percentile bootstrap and Wilson score.

A metrics table averages per-scene values; the interval says how far that mean could move
with other scenes from the same generator.

- :func:`bootstrap_interval`: the percentile bootstrap of the mean (Efron & Tibshirani 1993,
  "An Introduction to the Bootstrap", ch. 13). Draw :math:`B` resamples of the :math:`S` values
  with replacement, take each resample's mean :math:`\\bar v^*_b`, and report the
  :math:`\\alpha/2` and :math:`1 - \\alpha/2` quantiles of :math:`\\{\\bar v^*_b\\}`
  (linear interpolation, like ``numpy.percentile`` and ``scipy.stats.bootstrap(...,
  method="percentile")``), :math:`\\alpha = 1 - \\text{confidence}`.
- :func:`wilson_interval`: the Wilson score interval of a proportion (Wilson 1927, JASA 22),
  for 0/1 metrics such as the pointing game,

  .. math:: \\frac{\\hat p + \\frac{z^2}{2n}}{1 + \\frac{z^2}{n}} \\pm
            \\frac{z}{1 + \\frac{z^2}{n}}\\sqrt{\\frac{\\hat p (1 - \\hat p)}{n} +
            \\frac{z^2}{4n^2}},\\qquad z = \\Phi^{-1}(1 - \\alpha/2),

  which stays inside [0, 1] and does not collapse at :math:`\\hat p \\in \\{0, 1\\}`.

Both return float64 tensors.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from saliency.errors import InvalidOptionError
from saliency.validation import is_int, require_float, require_int

__all__ = ["Interval", "bootstrap_interval", "wilson_interval"]

# Resample counts (B × S) generated at once: bounds the memory of the bootstrap at ~64 MB.
_COUNTS_PER_BLOCK = 1 << 23


class Interval(NamedTuple):
    """Lower and upper ends of an interval, float64 tensors of one shape."""

    low: Tensor
    high: Tensor


def _require_confidence(confidence: float) -> None:
    require_float("confidence", confidence, 0.0, exclusive=True, maximum=1.0)
    if confidence >= 1.0:
        raise InvalidOptionError(f"confidence={confidence!r}; accepted: a number in (0, 1)")


def bootstrap_interval(
    values: Tensor | Sequence[float],
    *,
    confidence: float = 0.95,
    resamples: int = 10_000,
    seed: int = 0,
) -> Interval:
    """Percentile-bootstrap interval of the mean over the last dimension of ``values``.

    Every row of ``values`` is resampled with the same resample indices, so one call gives the
    intervals of all the columns of a table. The indices come from a CPU generator seeded with
    ``seed`` and are the same whatever the values' device: the interval is deterministic. A row
    holding a NaN gets a NaN interval, like its mean.

    Args:
        values: ``(..., S)`` per-scene values (or a sequence of S numbers), S ≥ 1.
        confidence: Coverage of the interval, in (0, 1).
        resamples: Bootstrap resamples B.
        seed: Seeds the resampling.

    Returns:
        :class:`Interval` of shape ``(...)`` on the values' device.
    """
    _require_confidence(confidence)
    require_int("resamples", resamples, 1)
    require_int("seed", seed, 0)
    data = values if isinstance(values, Tensor) else torch.tensor(values, dtype=torch.float64)
    if data.ndim == 0 or data.shape[-1] == 0:
        raise InvalidOptionError(
            f"values must hold at least one sample along the last dimension, got shape "
            f"{tuple(data.shape)}"
        )
    precise = torch.float32 if data.device.type == "mps" else torch.float64
    data = data.detach().to(precise)
    rows = data.reshape(-1, data.shape[-1])  # (R, S)
    count = rows.shape[1]
    generator = torch.Generator().manual_seed(seed)
    means = []
    block = max(1, _COUNTS_PER_BLOCK // count)
    for begin in range(0, resamples, block):
        size = min(block, resamples - begin)
        picks = torch.randint(count, (size, count), generator=generator)
        counts = torch.zeros(size, count, dtype=precise).scatter_add_(
            1, picks, torch.ones(size, count, dtype=precise)
        )
        # The mean of a resample is the values weighted by how often each was drawn.
        means.append(rows @ (counts.to(rows.device) / count).T)  # (R, size)
    distribution = torch.cat(means, dim=1)
    alpha = 1.0 - confidence
    levels = torch.tensor([alpha / 2, 1 - alpha / 2], dtype=precise, device=rows.device)
    low, high = torch.quantile(distribution, levels, dim=1)
    shape = data.shape[:-1]
    return Interval(low.reshape(shape), high.reshape(shape))


def wilson_interval(
    successes: int | Tensor, n: int | Tensor, *, confidence: float = 0.95
) -> Interval:
    """Wilson score interval of the proportion ``successes / n`` (see the module docstring).

    Args:
        successes: Count(s) of successes, 0 ≤ successes ≤ n.
        n: Number(s) of trials, ≥ 1 (broadcast against ``successes``).
        confidence: Coverage of the interval, in (0, 1).

    Returns:
        :class:`Interval` (float64) of the broadcast shape, inside [0, 1].
    """
    _require_confidence(confidence)
    for name, value in (("successes", successes), ("n", n)):
        if not (is_int(value) or isinstance(value, Tensor)):
            raise InvalidOptionError(f"{name}={value!r}; accepted: an int or an integer tensor")
    hits = torch.as_tensor(successes)
    trials = torch.as_tensor(n)
    if trials.device != hits.device:
        trials = trials.to(hits.device)
    if hits.is_floating_point() and not torch.equal(hits, hits.round()):
        raise InvalidOptionError(f"successes must be whole counts, got {successes!r}")
    if trials.is_floating_point() and not torch.equal(trials, trials.round()):
        raise InvalidOptionError(f"n must be a whole count, got {n!r}")
    hits, trials = hits.to(torch.float64), trials.to(torch.float64)
    if bool((trials < 1).any()) or bool(((hits < 0) | (hits > trials)).any()):
        raise InvalidOptionError(
            f"successes={successes!r}, n={n!r}; accepted: n ≥ 1 and 0 ≤ successes ≤ n"
        )
    z = torch.special.ndtri(torch.tensor(1 - (1 - confidence) / 2, dtype=torch.float64))
    z = z.to(hits.device)
    share = hits / trials
    shrink = 1 + z**2 / trials
    centre = (share + z**2 / (2 * trials)) / shrink
    half = z / shrink * torch.sqrt(share * (1 - share) / trials + z**2 / (4 * trials**2))
    # At p̂ = 0 (or 1) the end is exactly 0 (or 1); rounding would leave ~1e-17.
    low = torch.where(hits == 0, 0.0, (centre - half).clamp(0.0, 1.0))
    high = torch.where(hits == trials, 1.0, (centre + half).clamp(0.0, 1.0))
    return Interval(low, high)
