"""Variance formulas, tracker, prediction, and the Neyman <= proportional <= uniform chain."""

import numpy as np
import pytest

from fedstrat.sampling import (
    Strata,
    StratumVarianceTracker,
    design_neyman_allocation,
    estimator_variance,
    neyman_allocation,
    point_stratified,
    predicted_variance,
    proportional_allocation,
    stratum_statistics,
    uniform_variance,
)


def _structured(seed=0, n_h=(30, 50, 20), spread=(0.2, 1.0, 3.0), dim=4, equal_sizes=True):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(n_h)), n_h)
    centers = rng.normal(size=(len(n_h), dim)) * 5
    upd = centers[labels] + rng.normal(size=(len(labels), dim)) * np.array(spread)[labels, None]
    sizes = np.full(len(labels), 10.0) if equal_sizes else rng.integers(5, 50, len(labels)) * 1.0
    return sizes, upd, Strata(labels)


def test_neyman_le_proportional_le_uniform_srswor():
    for seed in range(3):
        sizes, upd, strata = _structured(seed)
        m = 15
        p = sizes / sizes.sum()
        s_y = np.array(
            [
                np.sqrt(
                    np.sum(
                        np.var(p[strata.members(h), None] * upd[strata.members(h)], axis=0, ddof=1)
                    )
                )
                for h in range(strata.n_strata)
            ]
        )
        v_ney = estimator_variance(
            upd, sizes, strata, neyman_allocation(strata.sizes, s_y, m), "srswor"
        )
        v_prop = estimator_variance(
            upd, sizes, strata, proportional_allocation(strata.sizes, m), "srswor"
        )
        v_uni = uniform_variance(upd, sizes, m)
        assert v_ney <= v_prop <= v_uni
        assert v_ney < 0.5 * v_uni


def test_neyman_le_proportional_pps():
    sizes, upd, strata = _structured(1, equal_sizes=False)
    m = 15
    st = stratum_statistics(upd, sizes, strata)
    ney = neyman_allocation(st["masses"], st["stds"], m, capacity=strata.sizes)
    prop = proportional_allocation(st["masses"], m, capacity=strata.sizes)
    v_ney = estimator_variance(upd, sizes, strata, ney, "pps")
    v_prop = estimator_variance(upd, sizes, strata, prop, "pps")
    assert v_ney <= v_prop < uniform_variance(upd, sizes, m)


def test_pps_hh_formula_by_hand():
    # One stratum, no certainties: V = P^2 sigma^2 / m with P = 1.
    sizes = np.array([2.0, 2.0, 3.0])
    upd = np.array([[0.0], [2.0], [4.0]])
    # q = (2/7, 2/7, 3/7), Dbar = 16/7, sigma^2 = E_q[x^2] - Dbar^2 = 56/7 - 256/49 = 136/49
    assert estimator_variance(upd, sizes, [0, 0, 0], [2], "pps") == pytest.approx(68 / 49)
    # sizes (1, 1, 2), m = 2: client 2 has pi = 2 * 1/2 = 1 -> certainty; the rest: P' = 1/2,
    # m' = 1, q = (1/2, 1/2), sigma^2 = 1 -> V = (1/2)^2 * 1 / 1 = 0.25.
    assert estimator_variance(upd, [1, 1, 2], [0, 0, 0], [2], "pps") == pytest.approx(0.25)
    # Taking everything: all certainties -> 0.
    assert estimator_variance(upd, sizes, [0, 0, 0], [3], "pps") == 0.0
    with pytest.raises(ValueError):
        estimator_variance(upd, sizes, [0, 0, 0], [2], "bogus")
    with pytest.raises(ValueError):
        estimator_variance(upd, sizes, [0, 0, 0], [4], "srswor")


def test_predicted_matches_exact_with_true_statistics():
    sizes, upd, strata = _structured(2)  # equal sizes: p_i = P_h / N_h exactly
    st = stratum_statistics(upd, sizes, strata)
    alloc = np.array([4, 6, 5])
    pred = predicted_variance(
        st["counts"], st["masses"], st["stds"], alloc, "srswor", means=st["means"]
    )
    assert pred.stratified == pytest.approx(estimator_variance(upd, sizes, strata, alloc, "srswor"))
    assert pred.uniform == pytest.approx(uniform_variance(upd, sizes, 15))
    pred_pps = predicted_variance(st["counts"], st["masses"], st["stds"], alloc, "pps")
    assert pred_pps.stratified == pytest.approx(
        estimator_variance(upd, sizes, strata, alloc, "pps")
    )
    # Without means the between-strata term is dropped: a lower bound.
    no_means = predicted_variance(st["counts"], st["masses"], st["stds"], alloc, "srswor")
    assert no_means.uniform < pred.uniform
    with pytest.raises(ValueError):
        predicted_variance([1, 2], [0.5, 0.5], [1, 1], [2, 2])


def test_tracker_matches_weighted_moments():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 3))
    w = rng.random(50) + 0.1
    lab = rng.integers(0, 2, 50)
    tr = StratumVarianceTracker(3, 3, prior_std=7.0)
    for i in range(50):
        tr.update(lab[i], x[i], w[i])
    for h in range(2):
        sel = lab == h
        mu = np.average(x[sel], axis=0, weights=w[sel])
        var = np.sum(w[sel] * np.sum((x[sel] - mu) ** 2, axis=1)) / w[sel].sum()
        np.testing.assert_allclose(tr.means()[h], mu)
        np.testing.assert_allclose(tr.stds()[h], np.sqrt(var))
    assert tr.stds()[2] == 7.0 and tr.counts().tolist()[2] == 0
    # Pooled prior when prior_std is None.
    tr2 = StratumVarianceTracker(3, 3)
    assert tr2.stds().tolist() == [1.0, 1.0, 1.0]
    tr2.load_state_dict({**tr.state_dict(), "prior_std": None})
    st = tr.state_dict()  # public moments: total weight W_h and weighted sum of squares M2_h
    pooled = np.sqrt(st["m2"][:2].sum() / st["w"][:2].sum())
    assert tr2.stds()[2] == pytest.approx(pooled)
    np.testing.assert_allclose(tr2.means(), tr.means())
    with pytest.raises(ValueError):
        tr.update(3, x[0])
    with pytest.raises(ValueError):
        tr.update(0, x[0, :2])
    with pytest.raises(ValueError):
        tr.update(0, x[0], weight=0.0)
    with pytest.raises(ValueError):
        StratumVarianceTracker(2, 3, ema=1.5)


def test_tracker_ema_forgets():
    tr = StratumVarianceTracker(1, 1, ema=0.5)
    for _ in range(50):
        tr.update(0, [0.0])
    for _ in range(50):
        tr.update(0, [10.0])
    assert tr.means()[0, 0] == pytest.approx(10.0, abs=1e-6)
    assert tr.stds()[0] == pytest.approx(0.0, abs=1e-3)


def test_tracker_with_ht_weights_estimates_stratum_statistics():
    from fedstrat.sampling import StratifiedSampler

    sizes, upd, strata = _structured(3, equal_sizes=False)
    sampler = StratifiedSampler(sizes, strata, [5, 5, 5], "pps", seed=0)
    tr = StratumVarianceTracker(strata.n_strata, upd.shape[1])
    for _ in range(400):
        sel = sampler.sample()
        for i, h, w in zip(sel.ids, sel.strata, sel.weights, strict=True):
            tr.update(h, upd[i], w)
    st = stratum_statistics(upd, sizes, strata)
    # 2000 observations per stratum: means/stds within 10 % (seeded).
    np.testing.assert_allclose(tr.stds(), st["stds"], rtol=0.1)
    np.testing.assert_allclose(tr.means(), st["means"], atol=0.1 * np.abs(st["means"]).max())


def test_stratum_statistics_stable_under_large_offset():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(50, 3)) + 1e6  # one-pass moments would cancel catastrophically
    lab = np.arange(50) % 2
    st = stratum_statistics(x, np.ones(50), lab)
    for h in range(2):
        direct = np.sqrt(np.sum(np.var(x[lab == h], axis=0)))
        assert st["stds"][h] == pytest.approx(direct, rel=1e-6)
        np.testing.assert_allclose(st["means"][h], x[lab == h].mean(axis=0), rtol=1e-12)


def test_tracker_decay_forgets_the_past_and_counts_effective_updates():
    t = StratumVarianceTracker(1, 2)
    for x in ([0.0, 0.0], [2.0, 0.0]):
        t.update(0, np.array(x), 1.0)
    assert t.effective_counts()[0] == pytest.approx(2.0)
    before = t.variances()[0]
    t.decay(0.5)
    assert t.variances()[0] == pytest.approx(before)  # decay alone changes no moment
    t.update(0, np.array([10.0, 0.0]), 1.0)
    # weights 0.5, 0.5, 1: the new update weighs as much as the two old ones together
    assert t.means()[0, 0] == pytest.approx((0.5 * 0 + 0.5 * 2 + 10) / 2.0)
    assert t.effective_counts()[0] == pytest.approx(2.0**2 / (0.25 + 0.25 + 1.0))
    with pytest.raises(ValueError):
        t.decay(0.0)


def test_tracker_state_without_effective_weights_loads_as_equal_weights():
    t = StratumVarianceTracker(2, 1)
    for v in (1.0, 2.0, 4.0):
        t.update(1, np.array([v]), 2.0)
    state = t.state_dict()
    old = {k: v for k, v in state.items() if k != "w2"}
    u = StratumVarianceTracker(2, 1)
    u.load_state_dict(old)
    np.testing.assert_allclose(u.effective_counts(), t.effective_counts())


@pytest.mark.parametrize(
    "bad",
    [
        dict(stds=[np.nan, 1.0]),
        dict(stds=[1.0, np.inf]),
        dict(masses=[-0.5, 1.5]),
        dict(counts=[4.0, np.nan]),
        dict(allocation=[0.0, 1.0]),
        dict(allocation=[1.0, 5.0]),  # m_h > N_h
        dict(allocation=[np.nan, 1.0]),
    ],
)
def test_predicted_variance_rejects_invalid_statistics(bad):
    ok = dict(counts=[4.0, 4.0], masses=[0.5, 0.5], stds=[1.0, 2.0], allocation=[1.0, 2.0])
    predicted_variance(**ok)  # the valid input passes
    with pytest.raises(ValueError):
        predicted_variance(**{**ok, **bad})


@pytest.mark.parametrize(
    ("stds", "message"),
    [([np.nan, 1.0], "contains NaN or inf"), ([-np.inf, 1.0], "contains NaN or inf"),
     ([-1.0, 1.0], "must be non-negative")],
)
def test_allocation_names_what_is_wrong_with_its_input(stds, message):
    with pytest.raises(ValueError, match=f"stds {message}"):
        design_neyman_allocation([4, 4], [0.5, 0.5], stds, 2)


def test_point_stratified_is_the_stratified_prediction_to_the_last_bit():
    rng = np.random.default_rng(7)
    for design in ("pps", "srswor"):
        for _ in range(50):
            h = int(rng.integers(1, 12))
            counts = rng.integers(2, 40, size=h).astype(np.float64)
            masses = rng.dirichlet(np.ones(h))
            stds = rng.gamma(2.0, 1.0, size=h)
            alloc = np.minimum(rng.integers(1, 6, size=h), counts).astype(np.int64)
            full = predicted_variance(counts, masses, stds, alloc, design)
            assert point_stratified(counts, masses, stds, alloc, design) == full.stratified
            assert point_stratified(counts.tolist(), masses, stds, alloc, design) == full.stratified
