"""The tracker's per-stratum covariances and the standard error of the predicted saving that
follows the spread's shape (``predicted_variance(..., covs=...)``)."""

import json

import numpy as np
import pytest

from fedstrat.sampling import StratumVarianceTracker, predicted_variance
from fedstrat.sampling.tracker import COVARIANCE_MAX_DIM
from fedstrat.sampling.variance import spread_shape


def _fed(tracker, rng, n=40, dim=5, strata=2):
    x = rng.normal(size=(n, dim)) * np.linspace(0.2, 3.0, dim)
    w = rng.random(n) + 0.1
    lab = rng.integers(0, strata, n)
    for i in range(n):
        tracker.update(lab[i], x[i], w[i], size=1.0 + i % 3)
    return x, w, lab


def test_covariances_are_the_weighted_covariances_and_their_trace_the_variances():
    rng = np.random.default_rng(0)
    t = StratumVarianceTracker(3, 5)
    x, w, lab = _fed(t, rng)
    cov = t.covariances()
    for h in range(2):
        sel = lab == h
        expect = np.cov(x[sel].T, aweights=w[sel], bias=True)
        np.testing.assert_allclose(cov[h], expect, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(np.trace(cov[:2], axis1=1, axis2=2), t.variances()[:2])
    assert np.all(cov[2] == 0.0)  # no update: no shape
    np.testing.assert_array_equal(t.covariances(np.array([1, 0])), cov[[1, 0]])


def test_scatter_is_the_covariances_up_to_a_factor_per_stratum_and_read_only():
    rng = np.random.default_rng(4)
    t = StratumVarianceTracker(3, 5, ema=0.7)
    _fed(t, rng, strata=3)
    t.decay(0.5)
    cov, sc = t.covariances(), t.scatter()
    for h in range(3):
        np.testing.assert_allclose(sc[h] * (np.trace(cov[h]) / np.trace(sc[h])), cov[h],
                                   rtol=1e-12)
    means, masses = t.means(), np.full(3, 1.0 / 3.0)
    for a, b in zip(spread_shape(sc, means, masses), spread_shape(cov, means, masses),
                    strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12)
    with pytest.raises(ValueError):
        sc[0, 0, 0] = 1.0
    np.testing.assert_array_equal(t.scatter(np.array([2, 0])), sc[[2, 0]])
    part = t.scatter(np.array([1, 2]))  # consecutive strata: a read-only view, same values
    np.testing.assert_array_equal(part, sc[1:])
    with pytest.raises(ValueError):
        part[0, 0, 0] = 1.0
    with pytest.raises(IndexError):  # past the last stratum: as for any index
        t.scatter(np.array([2, 3]))


def test_covariances_follow_forgetting_and_rescaling_like_the_variances():
    rng = np.random.default_rng(1)
    t = StratumVarianceTracker(2, 4, ema=0.8)
    _fed(t, rng, dim=4)
    t.decay(0.6)
    t.rescale_to(2.0)
    t.rescale_to(0.5)  # every sketch so far times 1/2
    _fed(t, rng, n=10, dim=4)
    np.testing.assert_allclose(np.trace(t.covariances(), axis1=1, axis2=2), t.variances(),
                               rtol=1e-10)


def test_covariances_survive_the_checkpoint_and_older_states_load_without_them():
    rng = np.random.default_rng(2)
    t = StratumVarianceTracker(2, 6)
    _fed(t, rng, dim=6)
    back = StratumVarianceTracker.from_state(json.loads(json.dumps(t.to_json())))
    np.testing.assert_allclose(back.covariances(), t.covariances(), rtol=1e-15)
    packed = t.to_json()["m2mat"]  # one string (base64 of 2 x 21 float64), not 42 numbers
    assert isinstance(packed, str) and len(packed) == 4 * -(-(2 * 21 * 8) // 3)
    with pytest.raises(ValueError, match="m2mat does not match"):
        StratumVarianceTracker.from_state({**t.to_json(), "m2mat": packed[:-12]})
    old = {k: v for k, v in t.state_dict().items() if k != "m2mat"}
    u = StratumVarianceTracker(2, 6)
    u.load_state_dict(old)
    assert np.all(u.covariances() == 0.0)  # unknown shape: the worst-case standard error


def test_no_matrices_beyond_the_dimension_cap_or_when_switched_off():
    assert StratumVarianceTracker(2, COVARIANCE_MAX_DIM + 1).covariances() is None
    assert StratumVarianceTracker(2, 8, covariance=False).covariances() is None
    assert StratumVarianceTracker(2, 8, covariance=False).scatter() is None
    assert StratumVarianceTracker(2, 8).covariances().shape == (2, 8, 8)


def test_spread_shape_bounds_isotropic_and_one_direction():
    k = 8
    means = np.array([[1.0] + [0.0] * (k - 1), [-1.0] + [0.0] * (k - 1)])
    masses = np.array([0.5, 0.5])
    iso = np.stack([np.eye(k), np.eye(k)])
    r, rho = spread_shape(iso, means, masses)
    np.testing.assert_allclose(rho, 1.0 / k)
    np.testing.assert_allclose(r, 1.0 / k)
    along = np.zeros((2, k, k))
    along[:, 0, 0] = 1.0  # all spread along the mean difference: the worst case
    r, rho = spread_shape(along, means, masses)
    np.testing.assert_allclose(r, 1.0)
    np.testing.assert_allclose(rho, 1.0)
    across = np.zeros((2, k, k))
    across[:, 1, 1] = 1.0
    r, rho = spread_shape(across, means, masses)
    np.testing.assert_allclose(r, 0.0)
    r, rho = spread_shape(np.zeros((2, k, k)), means, masses)  # unknown: worst case
    assert np.all(r == 1.0) and np.all(rho == 1.0)
    with pytest.raises(ValueError, match="covs must have shape"):
        spread_shape(np.zeros((2, k, k - 1)), means, masses)
    with pytest.raises(ValueError, match="covs must be finite"):
        spread_shape(np.full((2, k, k), np.nan), means, masses)


def _saving_and_se(rng, scales, centers, n_obs, counts, alloc, use_covs):
    """One tracked estimate of the saving and its standard error: ``n_obs`` Gaussian sketches
    per stratum with per-dimension standard deviations ``scales``."""
    h, k = centers.shape
    t = StratumVarianceTracker(h, k)
    for s in range(h):
        for x in centers[s] + rng.normal(size=(n_obs, k)) * scales:
            t.update(s, x)
    masses = counts / counts.sum()
    pred = predicted_variance(
        counts, masses, t.stds(), alloc, "srswor", means=t.means(), mean_counts=t.counts(),
        covs=t.covariances() if use_covs else None)
    return pred.fedavg - pred.stratified, pred.gain_se


@pytest.mark.parametrize("spread", ["isotropic", "decaying"])
def test_gain_se_matches_the_spread_of_the_saving_with_anisotropic_noise(spread):
    # Seeded Monte Carlo, 600 replicates: 4 strata of 30 clients, 16-dim sketches, 6 tracked
    # updates each. The standard error from the covariances is within 0.7-1.4x the saving's
    # spread across replicates (it errs wide by design: the estimated shape is biased towards
    # the worst case); the worst-case one (no covs) is > 2x off there.
    k, reps = 16, 600
    scales = np.ones(k) if spread == "isotropic" else 0.8 ** np.arange(k)
    rng = np.random.default_rng(11)
    centers = rng.normal(size=(4, k)) * 0.6 * np.sqrt(np.sum(scales**2) / k)
    counts, alloc = np.full(4, 30.0), np.full(4, 2.0)
    honest, worst = [], []
    for use_covs, out in ((True, honest), (False, worst)):
        rep_rng = np.random.default_rng(5)
        out.extend(_saving_and_se(rep_rng, scales, centers, 6, counts, alloc, use_covs)
                   for _ in range(reps))
    savings = np.array([s for s, _ in honest])
    np.testing.assert_array_equal(savings, [s for s, _ in worst])  # same draws, same saving
    spread_sd = savings.std(ddof=1)
    ratio_honest = np.median([se for _, se in honest]) / spread_sd
    ratio_worst = np.median([se for _, se in worst]) / spread_sd
    assert 0.7 < ratio_honest < 1.4, ratio_honest
    assert ratio_worst > 2.0, ratio_worst


def test_gain_se_with_all_spread_along_the_mean_difference_stays_the_worst_case():
    k = 16
    scales = np.zeros(k)
    scales[0] = 1.0
    centers = np.zeros((4, k))
    centers[:, 0] = [-1.0, -0.3, 0.4, 1.2]
    counts, alloc = np.full(4, 30.0), np.full(4, 2.0)
    rng = np.random.default_rng(3)
    ratios = []
    for _ in range(50):
        state = rng.bit_generator.state
        _, se_h = _saving_and_se(rng, scales, centers, 6, counts, alloc, True)
        rng.bit_generator.state = state
        _, se_w = _saving_and_se(rng, scales, centers, 6, counts, alloc, False)
        ratios.append(se_h / se_w)
    assert min(ratios) > 0.95 and max(ratios) <= 1.0 + 1e-12
