"""Intervals (saliency.metrics.intervals) against scipy and hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from saliency.errors import InvalidOptionError
from saliency.metrics import bootstrap_interval, wilson_interval


def test_bootstrap_matches_scipy_percentile_bootstrap() -> None:
    """Same definition as scipy.stats.bootstrap(method="percentile"); the resamples differ (two
    generators), so the ends agree to the Monte-Carlo error of 20,000 resamples."""
    rng = np.random.default_rng(0)
    for values in (rng.normal(0.4, 0.2, 48), rng.exponential(1.0, 30), rng.uniform(0, 1, 12)):
        reference = stats.bootstrap(
            (values,),
            np.mean,
            confidence_level=0.95,
            n_resamples=20_000,
            method="percentile",
            random_state=1,
        ).confidence_interval
        low, high = bootstrap_interval(torch.tensor(values), resamples=20_000, seed=3)
        spread = values.std(ddof=1) / math.sqrt(len(values))  # standard error of the mean
        assert low.item() == pytest.approx(reference.low, abs=0.05 * spread)
        assert high.item() == pytest.approx(reference.high, abs=0.05 * spread)
        assert low.item() < values.mean() < high.item()


def test_bootstrap_is_exact_on_two_values() -> None:
    """Resample means of (0, 1) are 0, ½, 1 with probabilities ¼, ½, ¼: the 2.5% and 97.5%
    quantiles are 0 and 1; at 40% confidence (30% and 70%) both are ½."""
    low, high = bootstrap_interval([0.0, 1.0], resamples=4000)
    assert (low.item(), high.item()) == (0.0, 1.0)
    low, high = bootstrap_interval([0.0, 1.0], confidence=0.4, resamples=4000)
    assert (low.item(), high.item()) == (0.5, 0.5)
    constant = bootstrap_interval([0.7] * 9)
    assert constant.low.item() == pytest.approx(0.7) and constant.high.item() == pytest.approx(0.7)
    single = bootstrap_interval([0.25])
    assert (single.low.item(), single.high.item()) == (0.25, 0.25)


def test_bootstrap_is_seeded_batched_and_propagates_nan() -> None:
    table = torch.rand(3, 2, 25, generator=torch.Generator().manual_seed(0))
    together = bootstrap_interval(table, seed=7, resamples=2000)
    assert together.low.shape == (3, 2) and together.low.dtype == torch.float64
    again = bootstrap_interval(table, seed=7, resamples=2000)
    assert torch.equal(together.low, again.low) and torch.equal(together.high, again.high)
    alone = bootstrap_interval(table[1, 0], seed=7, resamples=2000)
    assert alone.low.item() == together.low[1, 0].item()  # rows share the resamples
    other = bootstrap_interval(table, seed=8, resamples=2000)
    assert not torch.equal(together.low, other.low)
    assert bool((together.low <= table.double().mean(-1)).all())
    assert bool((table.double().mean(-1) <= together.high).all())
    holed = table.clone()
    holed[0, 1, 3] = float("nan")
    result = bootstrap_interval(holed, seed=7, resamples=2000)
    assert math.isnan(result.low[0, 1].item()) and math.isnan(result.high[0, 1].item())
    assert result.low[2, 0].item() == together.low[2, 0].item()
    # more resamples than one block of counts: still deterministic and of the same shape
    many = bootstrap_interval(torch.rand(300), resamples=30_000)
    assert many.low.shape == () and many.low < many.high


def test_bootstrap_rejects_bad_options() -> None:
    with pytest.raises(InvalidOptionError, match="confidence"):
        bootstrap_interval([1.0, 2.0], confidence=1.0)
    with pytest.raises(InvalidOptionError, match="confidence"):
        bootstrap_interval([1.0, 2.0], confidence=0)
    with pytest.raises(InvalidOptionError, match="resamples"):
        bootstrap_interval([1.0, 2.0], resamples=0)
    with pytest.raises(InvalidOptionError, match="at least one sample"):
        bootstrap_interval(torch.zeros(3, 0))


def wilson_by_hand(successes: int, n: int, z: float) -> tuple[float, float]:
    share = successes / n
    centre = (share + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(share * (1 - share) / n + z * z / (4 * n * n))
    return centre - half, centre + half


def test_wilson_matches_scipy_and_the_formula() -> None:
    # 8 of 10 at 95%: the textbook interval (0.4902, 0.9433)
    low, high = wilson_interval(8, 10)
    assert (low.item(), high.item()) == pytest.approx((0.49016, 0.94332), abs=1e-5)
    for successes, n, confidence in ((0, 12, 0.95), (12, 12, 0.95), (37, 64, 0.9), (1, 3, 0.99)):
        reference = stats.binomtest(successes, n).proportion_ci(confidence, method="wilson")
        low, high = wilson_interval(successes, n, confidence=confidence)
        assert low.item() == pytest.approx(reference.low, abs=1e-12)
        assert high.item() == pytest.approx(reference.high, abs=1e-12)
        z = stats.norm.ppf(1 - (1 - confidence) / 2)
        assert (low.item(), high.item()) == pytest.approx(wilson_by_hand(successes, n, z))
    none = wilson_interval(0, 12)
    assert none.low.item() == 0.0 and none.high.item() > 0.2  # does not collapse at p̂ = 0


def test_wilson_broadcasts_tensors_and_rejects_bad_counts() -> None:
    hits = torch.tensor([3, 5, 9])
    low, high = wilson_interval(hits, 10)
    assert low.shape == (3,) and bool((low < hits / 10).all()) and bool((hits / 10 < high).all())
    assert wilson_interval(torch.tensor(4.0), torch.tensor(8.0)).low.item() == pytest.approx(
        wilson_interval(4, 8).low.item()
    )
    with pytest.raises(InvalidOptionError, match="0 ≤ successes ≤ n"):
        wilson_interval(11, 10)
    with pytest.raises(InvalidOptionError, match="n ≥ 1"):
        wilson_interval(0, 0)
    with pytest.raises(InvalidOptionError, match="whole counts"):
        wilson_interval(torch.tensor(2.5), 10)
    with pytest.raises(InvalidOptionError, match="successes"):
        wilson_interval(2.0, 10)  # type: ignore[arg-type]
