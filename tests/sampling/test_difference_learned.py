"""What earlier rounds teach the difference estimator: the age-bucket shrinkage of stale
controls, the predicted residual norms, and the residual pps design built on them."""

import numpy as np
import pytest

from fedstrat.sampling import Strata
from fedstrat.sampling.difference import (
    ResidualPPSSampler,
    StaleControlModel,
    residual_pps_allocation,
    residual_pps_stds,
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


def _residual_design(seed=5, n=8, m_h=(1, 1)):
    """A population of two strata, residuals with very different norms, a predicted residual
    norm ``s`` and the residual pps design built from the scaled residuals' statistics as
    the strategy builds it (here from the exact z-weighted stds)."""
    from fedstrat.sampling import StratumVarianceTracker

    rng = np.random.default_rng(seed)
    sizes = rng.integers(5, 40, n).astype(float)
    p = sizes / sizes.sum()
    labels = np.repeat([0, 1], n // 2)
    s = np.exp(rng.normal(0.0, 1.0, n))
    resid = rng.normal(size=(n, 4)) * s[:, None]
    z = p * s
    tracker = StratumVarianceTracker(2, 4)
    for i in range(n):  # census: every unit with weight w_i s_i = z_i (pi_i = 1)
        tracker.update(int(labels[i]), resid[i] / s[i], z[i])
    stds = residual_pps_stds(tracker.stds(), z, sizes, labels)
    return sizes, p, labels, z, resid, stds, np.asarray(m_h)


def test_tracked_scaled_residuals_predict_the_residual_pps_variance_exactly():
    """sigma_h = Z_h sigma'_h / P_h from the z-weighted dispersion of e_i / s_i: the pps
    prediction sum P_h^2 sigma_h^2 / m_h equals the Hansen-Hurwitz variance of the design
    drawn (pps by z), and it differs from the p-pps prediction of the same residuals."""
    from fedstrat.sampling import predicted_variance, stratum_statistics

    sizes, p, labels, z, resid, stds, alloc = _residual_design(m_h=(1, 1))
    strata = Strata(labels)
    assert np.all(ResidualPPSSampler(sizes, strata, alloc, z).inclusion < 1.0)
    pred = predicted_variance(strata.sizes, strata.masses(sizes), stds, alloc, "pps")
    exact = residual_pps_variance(resid, sizes, strata, alloc, z)
    assert pred.stratified == pytest.approx(exact, rel=1e-10)
    plain = stratum_statistics(resid, sizes, strata)["stds"]  # p-weighted: pps by size
    by_size = predicted_variance(strata.sizes, strata.masses(sizes), plain, alloc, "pps")
    assert by_size.stratified == pytest.approx(
        residual_pps_variance(resid, sizes, strata, alloc, p), rel=1e-10)
    assert abs(by_size.stratified - exact) > 0.05 * exact


def test_the_strategys_residual_draw_is_unbiased_by_enumeration():
    """The residual pps draw with the allocation from the scaled residuals' statistics
    (design_neyman_allocation on sigma_h = Z_h sigma'_h / P_h, as the strategy does): every
    sample enumerated through the sampler (scripted generator), E[w_i 1{i in s}] = p_i and
    the difference estimator's mean is the target for arbitrary controls."""
    from test_difference import Scripted, _stratified

    from fedstrat.sampling import design_neyman_allocation
    from fedstrat.sampling.difference import difference_estimate

    sizes, p, labels, z, resid, stds, _ = _residual_design(seed=6, n=8)
    strata = Strata(labels)
    alloc = design_neyman_allocation(strata.sizes, strata.masses(sizes), stds, 4, "pps")
    smp = ResidualPPSSampler(sizes, strata, alloc, z)
    probs, sels = [], []
    for prob, answers in _stratified(smp, strata, alloc, "pps"):
        g = Scripted(answers)
        sels.append(smp.sample(g))
        assert not g.answers
        probs.append(prob)
    probs = np.array(probs)
    assert probs.sum() == pytest.approx(1.0, abs=1e-12)
    ew = np.zeros(len(sizes))
    for pr, sel in zip(probs, sels, strict=True):
        np.add.at(ew, sel.ids, pr * sel.weights)
    np.testing.assert_allclose(ew, p, atol=1e-12)
    rng = np.random.default_rng(1)
    upd = rng.normal(size=(len(sizes), 3)) * 4
    for controls in (np.zeros_like(upd), upd + rng.normal(size=upd.shape)):
        est = np.array([difference_estimate(sel, upd, controls, sizes) for sel in sels])
        np.testing.assert_allclose(probs @ est, p @ upd, atol=1e-12)
