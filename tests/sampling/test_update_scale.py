"""The updates' scale from round to round: a rescaled tracker is exactly one fed rescaled
sketches; a common factor moves every forecast by its square and nothing else; a constant scale
changes nothing; under a geometric shrink the rescaled tracker predicts the next round's spread
without the forgetting's lag; checkpointable."""

from __future__ import annotations

import numpy as np
import pytest

from fedstrat.sampling import StratumVarianceTracker, UpdateScale

DIM = 32


def _fed(tracker: StratumVarianceTracker, x: np.ndarray, labels, w, sizes) -> None:
    for i in range(len(x)):
        tracker.update(int(labels[i]), x[i], float(w[i]), size=float(sizes[i]))


def test_rescaled_tracker_equals_one_fed_rescaled_sketches():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, DIM))
    labels, w, sizes = rng.integers(0, 3, 40), rng.uniform(0.5, 2, 40), rng.uniform(1, 9, 40)
    a, b = StratumVarianceTracker(3, DIM), StratumVarianceTracker(3, DIM)
    _fed(a, x[:20], labels[:20], w[:20], sizes[:20])
    _fed(b, 3.0 * x[:20], labels[:20], w[:20], sizes[:20])
    a.rescale_to(2.0)  # the first call only records the unit
    np.testing.assert_allclose(a.means(), b.means() / 3.0, rtol=1e-12)
    a.rescale_to(18.0)  # every sketch so far times sqrt(18 / 2) = 3
    a.decay(0.9)
    b.decay(0.9)
    _fed(a, 3.0 * x[20:], labels[20:], w[20:], sizes[20:])
    _fed(b, 3.0 * x[20:], labels[20:], w[20:], sizes[20:])
    np.testing.assert_allclose(a.means(), b.means(), rtol=1e-12)
    np.testing.assert_allclose(a.variances(), b.variances(), rtol=1e-12)
    np.testing.assert_array_equal(a.effective_counts(), b.effective_counts())
    for k, v in a.size_weighted().items():
        np.testing.assert_allclose(v, b.size_weighted()[k], rtol=1e-12, err_msg=k)
    restored = StratumVarianceTracker.from_state(a.to_json())
    assert restored.unit == 18.0
    with pytest.raises(ValueError, match="unit"):
        a.rescale_to(0.0)


def test_a_common_factor_moves_every_forecast_by_its_square():
    rng = np.random.default_rng(1)
    one, big = UpdateScale(), UpdateScale()
    for t in range(12):
        z, w = rng.normal(size=(8, DIM)) * 0.9**t, rng.uniform(0.1, 1, 8)
        one.observe(z, w)
        big.observe(1e3 * z, w)
        assert big.forecast() == pytest.approx(1e6 * one.forecast(), rel=1e-9)


def test_a_constant_scale_changes_nothing():
    """Sketches of norm 1 every round: s_t = 1 whatever the weights, the forecast is 1 and a
    tracker fed through :meth:`UpdateScale.feeding` is the plain tracker bit for bit."""
    rng = np.random.default_rng(2)
    scale = UpdateScale()
    a, b = StratumVarianceTracker(2, DIM), StratumVarianceTracker(2, DIM)
    for _ in range(10):
        z = rng.normal(size=(6, DIM))
        z /= np.linalg.norm(z, axis=1, keepdims=True)
        w, labels = rng.uniform(0.1, 1, 6), rng.integers(0, 2, 6)
        with scale.feeding(z, w, [a, None]):
            a.decay(0.9)
            _fed(a, z, labels, w, np.ones(6))
        b.decay(0.9)
        _fed(b, z, labels, w, np.ones(6))
        assert scale.forecast() == pytest.approx(1.0, rel=1e-12)
    np.testing.assert_allclose(a.means(), b.means(), rtol=1e-12)
    np.testing.assert_allclose(a.variances(), b.variances(), rtol=1e-12)


@pytest.mark.parametrize("rho", [0.8, 0.9])
def test_a_geometric_shrink_is_predicted_without_the_forgetting_lag(rho):
    """Updates N(0, rho^t I) in round t, 8 a round, two strata, forgetting 0.9 a round: the
    rescaled tracker's pooled variance after round 30 is round 31's true ``DIM rho^31`` times
    the forecast's own lag, one round of scale (``rho^-2``: the geometric mean lags the log
    scale by (1 - alpha) / alpha = 1 round), within 20% (seeded, 5 seeds); the plain tracker,
    mixing ~10 past rounds, is more than twice that."""
    for seed in range(5):
        rng = np.random.default_rng(seed)
        scale = UpdateScale()
        a, b = StratumVarianceTracker(2, DIM), StratumVarianceTracker(2, DIM)
        for t in range(1, 31):
            z, w, labels = rng.normal(size=(8, DIM)) * rho ** (t / 2), np.ones(8), np.arange(8) % 2
            with scale.feeding(z, w, [a]):
                a.decay(0.9)
                _fed(a, z, labels, w, np.ones(8))
            b.decay(0.9)
            _fed(b, z, labels, w, np.ones(8))
        expect = DIM * rho**31 / rho**2
        assert 1 / 1.2 < a.variances().mean() / expect < 1.2
        assert b.variances().mean() / expect > 2.0


def test_checkpoint_restores_the_forecast():
    rng = np.random.default_rng(3)
    scale = UpdateScale(alpha=0.3)
    for t in range(5):
        scale.observe(rng.normal(size=(4, DIM)) * 0.8**t, np.ones(4))
    back = UpdateScale.from_state(scale.to_json())
    assert back.forecast() == scale.forecast() and back.alpha == 0.3
    assert UpdateScale.from_state(None).forecast() is None
    assert scale.observe(np.ones((2, DIM)), np.zeros(2)) is None  # no positive weight
    with pytest.raises(ValueError, match="alpha"):
        UpdateScale(alpha=0.0)
