"""FedAvg's MSE (uniform SRSWOR + self-normalised weights) and the prediction bands."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from fedstrat.sampling import (
    Strata,
    fedavg_variance,
    predicted_variance,
    satterthwaite_band,
    stratum_statistics,
)


def _population(n: int, dim: int = 4, seed: int = 0):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(5, 50, n).astype(float)
    updates = rng.normal(size=(n, dim)) + rng.normal(size=dim)
    return sizes, updates


def _enumerate(sizes, updates, m, linearised: bool) -> float:
    """Exact mean of ||T_hat - T||^2 over all C(N, m) equally likely samples."""
    n = len(sizes)
    p = sizes / sizes.sum()
    t = p @ updates
    errs = []
    for s in itertools.combinations(range(n), m):
        s = list(s)
        if linearised:  # (N/m) sum_s p_i (Delta_i - T)
            est = t + (n / m) * (p[s] @ (updates[s] - t))
        else:  # the ratio (FedAvg) estimate
            est = p[s] @ updates[s] / p[s].sum()
        errs.append(float(np.sum((est - t) ** 2)))
    return float(np.mean(errs))


@pytest.mark.parametrize(("n", "m"), [(7, 3), (9, 4), (6, 5)])
def test_fedavg_variance_is_exact_for_the_linearised_estimator(n, m):
    sizes, updates = _population(n, seed=n)
    assert fedavg_variance(updates, sizes, m) == pytest.approx(
        _enumerate(sizes, updates, m, linearised=True), rel=1e-10
    )


@pytest.mark.parametrize(("n", "m"), [(8, 3), (10, 5), (12, 4)])
def test_fedavg_variance_predicts_the_ratio_estimator_within_15_percent(n, m):
    # The linearisation error is O(1/m^2); on these small populations it stays under 15 %.
    sizes, updates = _population(n, seed=n)
    exact = _enumerate(sizes, updates, m, linearised=False)
    assert fedavg_variance(updates, sizes, m) == pytest.approx(exact, rel=0.15)


def test_fedavg_variance_has_no_size_term_unlike_uniform_ht():
    # Identical updates, unequal sizes: FedAvg is exact, uniform HT is not.
    sizes = np.array([1.0, 10.0, 100.0, 5.0, 50.0])
    updates = np.tile([1.0, 2.0], (5, 1))
    assert fedavg_variance(updates, sizes, 2) == pytest.approx(0.0, abs=1e-12)
    pred = predicted_variance([5], [1.0], [0.0], [2], "srswor", means=np.array([[1.0, 2.0]]),
                              m=2)
    assert pred.fedavg == pytest.approx(0.0, abs=1e-12)


def test_strata_prediction_equals_the_exact_fedavg_mse_with_equal_sizes_in_each_stratum():
    rng = np.random.default_rng(3)
    labels = np.repeat(np.arange(3), [4, 5, 6])
    sizes = np.repeat([10.0, 30.0, 7.0], [4, 5, 6])
    updates = rng.normal(size=(15, 3)) + 3 * labels[:, None]
    st = stratum_statistics(updates, sizes, Strata(labels))
    pred = predicted_variance(st["counts"], st["masses"], st["stds"], [2, 2, 2], "pps",
                              means=st["means"], m=6)
    assert pred.fedavg == pytest.approx(fedavg_variance(updates, sizes, 6), rel=1e-10)


def test_between_term_is_corrected_for_the_noise_of_estimated_means():
    # No between-strata difference; stratum means estimated from n draws each. Without the
    # correction FedAvg's prediction is biased up by about 1/n; with it, it is close.
    rng = np.random.default_rng(0)
    counts, masses, stds = np.full(4, 10.0), np.full(4, 0.25), np.ones(4)
    truth = predicted_variance(counts, masses, stds, [1, 1, 1, 1], "pps", means=np.zeros((4, 8)),
                               m=4).fedavg
    n = 3
    raw, fixed = [], []
    for _ in range(400):
        means = rng.normal(size=(4, 8)) / np.sqrt(8 * n)  # sigma^2 = 1 spread over 8 dims
        kw = {"means": means, "m": 4}
        raw.append(predicted_variance(counts, masses, stds, [1] * 4, "pps", **kw).fedavg)
        fixed.append(predicted_variance(counts, masses, stds, [1] * 4, "pps", **kw,
                                        mean_counts=np.full(4, n)).fedavg)
    assert np.mean(raw) > 1.2 * truth
    assert np.mean(fixed) == pytest.approx(truth, rel=0.08)


def test_satterthwaite_band_covers_a_chi_square_estimate_at_its_level():
    rng = np.random.default_rng(1)
    df, v, hits = 6, 2.0, 0
    for _ in range(2000):
        est = v * rng.chisquare(df) / df
        band = satterthwaite_band(np.array([est]), np.array([df]), level=0.8)
        assert band.df == pytest.approx(df)
        hits += band.lo <= v <= band.hi
    assert hits / 2000 == pytest.approx(0.8, abs=0.03)


def test_bands_and_saving_from_tracked_counts():
    pred = predicted_variance([10, 10], [0.5, 0.5], [1.0, 2.0], [2, 3], "pps",
                              means=np.array([[0.0], [3.0]]), m=5, mean_counts=[4, 6])
    for band, value in ((pred.stratified_band, pred.stratified), (pred.fedavg_band, pred.fedavg)):
        assert band is not None and band.lo < value < band.hi
    assert pred.gain_se > 0
    assert pred.gain_lower() < pred.fedavg - pred.stratified
    exact = predicted_variance([10, 10], [0.5, 0.5], [1.0, 2.0], [2, 3], "pps")
    assert exact.stratified_band is None and np.isnan(exact.gain_se)
