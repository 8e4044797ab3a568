"""fedstrat.app.stats.series_mean_se: the mean of a per-round series with an error that allows
for serial correlation (seeded Monte Carlo over AR(1) series; tolerances stated)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.signal import lfilter

from fedstrat.app.stats import series_mean_se


def ar1(rho: float, n: int, reps: int, seed: int) -> np.ndarray:
    """``reps`` stationary AR(1) series of length ``n`` (unit variance, mean 5)."""
    e = np.random.default_rng(seed).normal(size=(reps, n + 100))
    x = lfilter([math.sqrt(1 - rho**2)], [1, -rho], e, axis=1)
    return x[:, 100:] + 5.0


def coverage(series: np.ndarray, naive: bool = False) -> float:
    hits = 0
    for x in series:
        mean, se = series_mean_se(x)
        if naive:
            se = x.std(ddof=1) / math.sqrt(x.size)
        hits += abs(mean - 5.0) <= 1.96 * se
    return hits / len(series)


def test_correlated_rounds_get_a_wider_error_that_covers_the_mean():
    """rho = 0.7 (the tracker forgets 0.7 a round), 30 rounds, 2,000 series: the 95% interval
    covers the mean in >= 80% of series (Monte Carlo s.e. ~0.01; lag-1 estimates are biased
    low at this length, so not the nominal 95%); the independent-values error covers < 65%."""
    series = ar1(0.7, 30, 2000, seed=1)
    assert coverage(series) >= 0.80
    assert coverage(series, naive=True) < 0.65


def test_independent_rounds_keep_about_the_nominal_coverage():
    series = ar1(0.0, 30, 2000, seed=2)
    assert 0.93 <= coverage(series) <= 0.975


def test_never_below_the_independent_error():
    x = np.array([1.0, 3.0, 1.0, 3.0, 1.0, 3.0])  # lag-1 correlation negative: clipped to 0
    mean, se = series_mean_se(x)
    assert mean == pytest.approx(2.0)
    assert se == pytest.approx(x.std(ddof=1) / math.sqrt(x.size), rel=1e-12)
    trend = np.arange(10.0)  # strongly correlated: wider, at most sqrt(1.9 / 0.1) times
    _, se_t = series_mean_se(trend)
    naive = trend.std(ddof=1) / math.sqrt(10)
    assert naive < se_t <= math.sqrt(19) * naive + 1e-12


def test_fewer_than_two_values_have_no_error():
    assert math.isnan(series_mean_se([2.0])[1]) and series_mean_se([2.0])[0] == 2.0
    assert math.isnan(series_mean_se([])[0])
