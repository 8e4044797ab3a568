"""What earlier rounds teach the difference estimator: the age-bucket shrinkage of stale
controls, the predicted residual norms, and the residual pps design built on them."""

import numpy as np
import pytest

from fedstrat.sampling import Strata
from fedstrat.sampling.difference import (
    ResidualPPSSampler,
    StaleControlModel,
    residual_pps_allocation,
    residual_pps_variance,
)


def _pairs(rng, n, scale, dim=20):
    x = rng.normal(size=(n, dim))
    return x, scale * x + 0.01 * rng.normal(size=(n, dim))


def test_old_controls_are_shrunk_by_the_coefficient_learnt_for_their_age():
    rng = np.random.default_rng(0)
    model = StaleControlModel()
    assert np.all(model.coefficients(np.array([1, 5, 40])) == 1.0)  # nothing learnt yet
    x1, u1 = _pairs(rng, 30, 1.0)  # age 1: the stored update still predicts the new one
    x8, u8 = _pairs(rng, 30, 0.4)  # age 8-15: the model moved on, 0.4 of it is left
    for ages, x, u in ((np.ones(30, int), x1, u1), (np.full(30, 9), x8, u8)):
        model.observe(ages, u, x, u - x, np.full(30, 0.01))
    b = model.coefficients(np.array([1, 12, 3]))
    assert b[0] == pytest.approx(1.0, abs=0.02)
    assert b[1] == pytest.approx(0.4, abs=0.02)
    # an age bucket without data gets the pooled coefficient, between the two
    assert 0.4 < b[2] < 1.0


def test_coefficients_stay_in_zero_one():
    rng = np.random.default_rng(1)
    model = StaleControlModel()
    x, u = _pairs(rng, 10, -2.0)
    model.observe(np.full(10, 2), u, x, u - x, np.ones(10))
    x, u = _pairs(rng, 10, 3.0)
    model.observe(np.full(10, 20), u, x, u - x, np.ones(10))
    assert model.coefficients(np.array([2]))[0] == 0.0
    assert model.coefficients(np.array([20]))[0] == 1.0


def test_residual_scale_predicts_larger_residuals_for_older_controls_and_new_clients():
    rng = np.random.default_rng(2)
    model = StaleControlModel()
    assert np.all(model.residual_scale(np.array([0, 1]), np.array([0.0, 2.0])) == 1.0)
    x = rng.normal(size=(20, 10))
    model.observe(np.ones(20, int), x, x, 0.1 * x, np.ones(20))  # recent: residual 0.1 |x|
    model.observe(np.full(20, 16), x, x, 0.8 * x, np.ones(20))  # old: 0.8 |x|
    model.observe(np.zeros(5, int), x[:5], np.zeros((5, 10)), 3 * x[:5], np.ones(5))
    s = model.residual_scale(np.array([1, 16, 0]), np.array([2.0, 2.0, 0.0]))
    assert s[0] == pytest.approx(0.2)
    assert s[1] == pytest.approx(1.6)
    assert s[2] == pytest.approx(3 * np.sqrt((x[:5] ** 2).sum(axis=1).mean()))
    state = model.state_dict()
    again = StaleControlModel()
    again.load_state_dict(state)
    np.testing.assert_array_equal(again.residual_scale(np.array([1, 16, 0]), np.array(
        [2.0, 2.0, 0.0])), s)


def test_allocation_follows_the_residual_dispersion_not_the_update_dispersion():
    rng = np.random.default_rng(3)
    sizes = np.full(40, 10.0)
    labels = np.repeat([0, 1], 20)
    upd = rng.normal(size=(40, 5)) * np.where(labels == 0, 10.0, 1.0)[:, None]
    controls = upd.copy()
    controls[labels == 1] = 0.0  # stratum 0 is well predicted, stratum 1 is not
    resid = upd - controls + 0.01 * rng.normal(size=(40, 5))
    alloc = residual_pps_allocation(resid, sizes, labels, sizes, 8)
    assert alloc.tolist() == [1, 7]
    # and the design with it beats proportional allocation on the residuals
    v = residual_pps_variance(resid, sizes, labels, alloc, sizes)
    assert v < residual_pps_variance(resid, sizes, labels, np.array([4, 4]), sizes)


def test_a_size_measure_by_residual_norm_lowers_the_variance():
    rng = np.random.default_rng(4)
    sizes = rng.integers(5, 50, 30).astype(float)
    labels = np.zeros(30, dtype=int)
    scale = np.exp(rng.normal(0.0, 1.5, 30))  # residual norms that vary a lot
    resid = rng.normal(size=(30, 8)) * scale[:, None]
    p = sizes / sizes.sum()
    by_size = residual_pps_variance(resid, sizes, labels, np.array([5]), p)
    by_resid = residual_pps_variance(resid, sizes, labels, np.array([5]), p * scale)
    assert by_resid < 0.8 * by_size
    smp = ResidualPPSSampler(sizes, Strata(labels), np.array([5]), p * scale)
    sel = smp.sample(np.random.default_rng(0))
    np.testing.assert_allclose(sel.weights, p[sel.ids] / smp.inclusion[sel.ids])
    with pytest.raises(ValueError, match="size_measure"):
        ResidualPPSSampler(sizes, Strata(labels), np.array([5]), p[:-1])
