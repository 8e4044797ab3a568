"""SizeTrend: the pooled slope of log dispersion on log size, and the saving bound it gives."""

from __future__ import annotations

import numpy as np
import pytest

from fedstrat.sampling import SizeTrend, Strata
from fedstrat.sampling.baseline import fedavg_variance
from fedstrat.sampling.variance import estimator_variance


def feed(trend, rng, slope, rounds, k=10, noise=0.5, sizes=None):
    for t in range(rounds):
        n = rng.lognormal(3.0, 0.8, size=k) if sizes is None else rng.choice(sizes, k)
        level = -0.3 * t  # updates shrink: a free level per round
        trend.add_round(n, np.exp(level + slope * np.log(n) + noise * rng.normal(size=k)))


def test_the_slope_band_covers_the_true_slope_at_its_level():
    # seeded Monte Carlo: 400 fits of 6 rounds x 10 clients; the 80% two-sided band
    # (z = 1.2816) should cover the true slope in 80% of fits (tolerance +- 6 points: 3 s.e.
    # of a binomial proportion at n = 400)
    rng = np.random.default_rng(0)
    hits = 0
    for _ in range(400):
        t = SizeTrend(min_obs=5)
        feed(t, rng, slope=0.7, rounds=6)
        b, lo, hi = t.slope_band(1.2816)
        hits += lo <= 0.7 <= hi
    assert 0.74 <= hits / 400 <= 0.86


def test_no_band_before_enough_observations_and_degenerate_rounds_add_nothing():
    t = SizeTrend(min_obs=12)
    rng = np.random.default_rng(1)
    feed(t, rng, slope=1.0, rounds=1)  # 9 within-round degrees of freedom
    assert t.slope_band() is None
    t.add_round(np.full(5, 30.0), np.ones(5))  # equal sizes: no information on a slope
    t.add_round(np.array([3.0]), np.array([1.0]))  # one client
    t.add_round(np.array([3.0, 4.0]), np.array([0.0, np.nan]))  # nothing usable
    assert t.rounds_ == 1
    feed(t, rng, slope=1.0, rounds=1)
    assert t.slope_band() is not None


def test_forgetting_follows_a_slope_that_changes():
    rng = np.random.default_rng(2)
    slow, fast = SizeTrend(), SizeTrend()
    for slope in [1.5] * 10 + [-0.5] * 6:
        for t in (slow, fast):
            t.decay(1.0 if t is slow else 0.6)
        n = rng.lognormal(3.0, 0.8, size=10)
        d = np.exp(slope * np.log(n) + 0.3 * rng.normal(size=10))
        slow.add_round(n, d)
        fast.add_round(n, d)
    assert abs(fast.slope_band()[0] + 0.5) < 0.3
    assert slow.slope_band()[0] > 0.3  # still mostly the old slope
    with pytest.raises(ValueError):
        fast.decay(0.0)


def symmetric_population(sizes, slope, dim, rng):
    """Clients in pairs of equal size with opposite updates: the size-weighted mean is 0, so
    the dispersion about it is exactly ``n_i^slope``."""
    half = len(sizes)
    u = rng.normal(size=(half, dim))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    u *= (sizes ** (slope / 2.0))[:, None]
    return np.concatenate([sizes, sizes]), np.concatenate([u, -u])


@pytest.mark.parametrize("slope", [-1.0, 0.0, 0.8, 1.5])
def test_the_relative_saving_bounds_the_exact_saving_of_pps_in_equal_mass_size_bins(slope):
    rng = np.random.default_rng(3)
    sizes, updates = symmetric_population(np.sort(rng.lognormal(3.0, 0.9, 40)).round() + 1,
                                          slope, 12, rng)
    m = 8
    p = sizes / sizes.sum()
    order = np.argsort(sizes, kind="stable")
    labels = np.empty(len(sizes), dtype=np.int64)
    labels[order] = np.minimum((np.cumsum(p[order]) - p[order] / 2) * m, m - 1).astype(int)
    st = Strata(labels)
    alloc = np.ones(st.n_strata, dtype=np.int64)
    masses = np.bincount(labels, weights=p)
    share = (masses / alloc)[labels]
    exact = 1.0 - (estimator_variance(updates, sizes, st, alloc, "pps")
                   / fedavg_variance(updates, sizes, m))
    bound = SizeTrend.relative_saving(slope, p, sizes, share, m)
    assert bound <= exact + 1e-9
    if slope >= 0.8:  # dispersion growing with size: a clear saving
        assert bound > 0.1


def test_a_trend_fitted_on_growing_dispersion_gives_a_positive_bound_and_on_shrinking_a_negative():
    rng = np.random.default_rng(4)
    sizes = np.sort(rng.lognormal(3.0, 0.9, 80)).round() + 1
    p = sizes / sizes.sum()
    share = np.full(len(sizes), 1.0 / 8)  # equal-mass bins, one draw each
    for slope, sign in ((1.0, 1), (-2.0, -1)):
        t = SizeTrend()
        feed(t, rng, slope=slope, rounds=6, sizes=sizes)
        low = t.saving_lower(p, sizes, share, 8)
        assert np.sign(low) == sign
    assert SizeTrend().saving_lower(p, sizes, share, 8) is None


def test_the_bound_is_the_least_saving_over_the_slope_band():
    rng = np.random.default_rng(6)
    sizes = rng.integers(5, 900, 5000).astype(float)
    p = sizes / sizes.sum()
    share = rng.uniform(0.5, 2.0, len(sizes)) / 10
    t = SizeTrend()
    feed(t, rng, slope=0.8, rounds=6, sizes=np.sort(sizes[:80]))
    _, lo, hi = t.slope_band()
    grid = [SizeTrend.relative_saving(b, p, sizes, share, 10) for b in np.linspace(lo, hi, 9)]
    assert t.saving_lower(p, sizes, share, 10) == pytest.approx(min(grid), rel=1e-12)


def test_classes_of_equal_clients_with_counts_give_the_same_bound_as_the_clients():
    rng = np.random.default_rng(7)
    sizes = rng.integers(5, 60, 4000).astype(float)  # many clients, few distinct sizes
    p = sizes / sizes.sum()
    bins = np.searchsorted([15.0, 30.0, 45.0], sizes, side="right")
    share = rng.uniform(0.5, 2.0, 4)[bins] / 4  # P_h / m_h: one value per size bin
    t = SizeTrend()
    feed(t, rng, slope=0.6, rounds=6, sizes=np.sort(sizes[:80]))
    values, first, counts = np.unique(sizes, return_index=True, return_counts=True)
    grouped = t.saving_lower(values / sizes.sum(), values, share[first], 10, counts=counts)
    assert grouped == pytest.approx(t.saving_lower(p, sizes, share, 10), rel=1e-9)
    # the count of clients enters FedAvg's factor: dropping the counts changes the bound
    assert t.saving_lower(values / sizes.sum(), values, share[first], 10) != pytest.approx(
        grouped, rel=1e-3)


def test_checkpoint_round_trip_gives_the_same_band():
    rng = np.random.default_rng(5)
    t = SizeTrend()
    feed(t, rng, slope=0.5, rounds=4)
    t.decay(0.7)
    back = SizeTrend.from_state(t.to_json())
    assert back.slope_band() == t.slope_band() and back.rounds_ == t.rounds_

