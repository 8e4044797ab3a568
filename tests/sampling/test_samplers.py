"""Samplers: unbiasedness (exact enumeration / exact inclusion / seeded Monte Carlo),
exact variance by enumeration, determinism and errors."""

import itertools
import math

import numpy as np
import pytest

from fedstrat.sampling import (
    ClusteredSampler,
    MultinomialSampler,
    PowerOfChoiceSampler,
    Sampler,
    Strata,
    StratifiedSampler,
    UniformSampler,
    estimator_variance,
    multinomial_variance,
    pps_inclusion,
    uniform_variance,
)


def _population(n=7, dim=3, seed=0):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 50, n).astype(float)
    updates = rng.normal(size=(n, dim)) + np.arange(n)[:, None] * 0.3
    p = sizes / sizes.sum()
    return sizes, updates, p, p @ updates


def test_uniform_exact_enumeration():
    sizes, upd, p, target = _population(7)
    m = 3
    sampler = UniformSampler(sizes, m)
    samples = list(itertools.combinations(range(7), m))
    prob = 1.0 / len(samples)
    est = []
    for s in samples:
        ids = np.array(s)
        w = sampler.p[ids] / (m / 7)  # the weights UniformSampler assigns
        est.append(w @ upd[ids])
    est = np.array(est)
    mean = prob * est.sum(axis=0)
    np.testing.assert_allclose(mean, target, atol=1e-12)
    var = prob * np.sum((est - target) ** 2)
    np.testing.assert_allclose(var, uniform_variance(upd, sizes, m), rtol=1e-10)
    # The sampler's actual weights agree with the enumerated formula.
    sel = sampler.sample()
    np.testing.assert_allclose(sel.weights, sampler.p[sel.ids] * 7 / m)
    np.testing.assert_allclose(sel.inclusion, m / 7)


def test_stratified_srswor_exact_enumeration():
    sizes, upd, p, target = _population(8, seed=1)
    labels = np.array([0, 0, 0, 1, 1, 1, 1, 2])
    strata = Strata(labels)
    alloc = np.array([2, 2, 1])
    sampler = StratifiedSampler(sizes, strata, alloc, design="srswor")
    per_stratum = [
        list(itertools.combinations(strata.members(h).tolist(), int(alloc[h]))) for h in range(3)
    ]
    n_samples = math.prod(len(x) for x in per_stratum)
    est = []
    for combo in itertools.product(*per_stratum):
        ids = np.array(sorted(sum(combo, ())))
        est.append(sampler.weights[ids] @ upd[ids])
    est = np.array(est)
    assert len(est) == n_samples
    np.testing.assert_allclose(est.mean(axis=0), target, atol=1e-12)
    var = np.mean(np.sum((est - target) ** 2, axis=1))
    np.testing.assert_allclose(var, estimator_variance(upd, sizes, strata, alloc, "srswor"))


def _systematic_support(pi):
    """Exact distribution of randomized systematic πps by enumerating all orders and the
    piecewise-constant dependence on the random start u."""
    n = len(pi)
    k = int(round(pi.sum()))
    dist = {}
    perms = list(itertools.permutations(range(n)))
    for perm in perms:
        perm = np.array(perm)
        c = np.cumsum(pi[perm])
        c *= k / c[-1]
        cuts = np.unique(np.concatenate([[0.0, 1.0], np.mod(c, 1.0)]))
        for a, b in zip(cuts[:-1], cuts[1:], strict=True):
            if b - a <= 1e-15:
                continue
            u = 0.5 * (a + b)
            idx = np.searchsorted(c, u + np.arange(k), side="right")
            s = tuple(sorted(perm[idx].tolist()))
            dist[s] = dist.get(s, 0.0) + (b - a) / len(perms)
    return dist


def test_pps_exact_inclusion_and_unbiasedness():
    sizes = np.array([1.0, 2.0, 3.0, 4.0, 20.0, 5.0])
    rng = np.random.default_rng(3)
    upd = rng.normal(size=(6, 2))
    p = sizes / sizes.sum()
    target = p @ upd
    # One stratum holding everything, m = 3: client 4 (p = 20/35, 3p > 1) is a certainty.
    sampler = StratifiedSampler(sizes, np.zeros(6, int), [3], design="pps")
    pi = sampler.inclusion
    assert pi[4] == 1.0
    np.testing.assert_allclose(pi.sum(), 3.0)
    np.testing.assert_allclose(pi[[0, 1, 2, 3, 5]], 2 * p[[0, 1, 2, 3, 5]] / (1 - p[4]))
    rest = np.array([0, 1, 2, 3, 5])
    dist = _systematic_support(pi[rest])
    np.testing.assert_allclose(sum(dist.values()), 1.0)
    incl = np.zeros(5)
    mean = np.zeros(2)
    for s, prob in dist.items():
        assert len(s) == 2  # distinct
        incl[list(s)] += prob
        ids = np.concatenate([[4], rest[list(s)]])
        mean += prob * (sampler.weights[ids] @ upd[ids])
    np.testing.assert_allclose(incl, pi[rest], atol=1e-12)
    np.testing.assert_allclose(mean, target, atol=1e-12)


def test_pps_monte_carlo_inclusion():
    sizes, upd, p, target = _population(9, seed=4)
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1])
    sampler = StratifiedSampler(sizes, labels, [2, 3], design="pps", seed=11)
    reps = 8_000
    counts = np.zeros(9)
    for _ in range(reps):
        sel = sampler.sample()
        assert len(sel.ids) == 5 and len(np.unique(sel.ids)) == 5
        counts[sel.ids] += 1
    freq = counts / reps
    se = np.sqrt(sampler.inclusion * (1 - sampler.inclusion) / reps)
    # 5 standard errors (plus tiny slack for certainty units with se = 0).
    assert np.all(np.abs(freq - sampler.inclusion) <= 5 * se + 1e-12)
    # HT unbiasedness by exact inclusion probabilities.
    np.testing.assert_allclose((sampler.inclusion * sampler.weights) @ upd, target)


def _mc(sampler, upd, reps):
    est = np.array([sampler.sample().aggregate(upd) for _ in range(reps)])
    return est.mean(axis=0), np.mean(np.sum((est - est.mean(axis=0)) ** 2, axis=1)), est


def test_multinomial_monte_carlo():
    sizes, upd, p, target = _population(10, seed=5)
    m = 4
    sampler = MultinomialSampler(sizes, m, seed=2)
    reps = 8_000
    mean, var, est = _mc(sampler, upd, reps)
    v_true = multinomial_variance(upd, sizes, m)
    # Mean within 5 standard errors per coordinate (trace variance bounds each coordinate).
    assert np.all(np.abs(mean - target) <= 5 * np.sqrt(v_true / reps))
    # Sample variance of 8000 draws within 8 % (about 4 standard errors).
    assert abs(var / v_true - 1) < 0.08
    sel = sampler.sample()
    assert sel.weights.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(sel.inclusion, m * sampler.p[sel.ids])


@pytest.mark.parametrize("algorithm", [1, 2])
def test_clustered_distributions_and_unbiasedness(algorithm):
    sizes, upd, p, target = _population(12, seed=6)
    sizes[0] = 200.0  # a client with m p_i > 1 spans several distributions
    p = sizes / sizes.sum()
    target = p @ upd
    m = 4
    sampler = ClusteredSampler(sizes, m, algorithm=algorithm, updates=upd, seed=3)
    r = sampler.distributions()
    np.testing.assert_allclose(r.sum(axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(r.sum(axis=0), m * p, atol=1e-12)
    # Exact expectation of the estimator: (1/m) sum_k r_k Delta.
    np.testing.assert_allclose(r.sum(axis=0) / m @ upd, target, atol=1e-12)
    reps = 8_000
    mean, var, _ = _mc(sampler, upd, reps)
    v_true = sampler.variance(upd)
    assert np.all(np.abs(mean - target) <= 5 * np.sqrt(v_true / reps))
    assert abs(var / v_true - 1) < 0.08
    # Clustered sampling never has larger variance than MD sampling (Fraboni et al., Thm 1).
    assert v_true <= multinomial_variance(upd, sizes, m) + 1e-12


def test_clustered_alg2_groups_similar_clients():
    rng = np.random.default_rng(0)
    # 4 tight groups of 5 equal-size clients; m = 4 -> each distribution is one group.
    centers = rng.normal(size=(4, 3)) * 10
    upd = np.repeat(centers, 5, axis=0) + rng.normal(size=(20, 3)) * 0.01
    sizes = np.ones(20)
    sampler = ClusteredSampler(sizes, 4, algorithm=2, updates=upd)
    r = sampler.distributions()
    for k in range(4):
        groups = np.unique(np.flatnonzero(r[k] > 0) // 5)
        assert len(groups) == 1
    assert sampler.variance(upd) < 1e-3
    assert len(sampler.sample().ids) == 4


def test_clustered_alg2_without_updates_warns():
    with pytest.warns(UserWarning, match="falling back"):
        s = ClusteredSampler([1, 2, 3], 2, algorithm=2)
    assert s.algorithm == 1


def test_power_of_choice_picks_highest_losses():
    sizes = np.ones(10)
    s = PowerOfChoiceSampler(sizes, 3, d=10, seed=0)
    s.set_losses(np.arange(10.0))
    sel = s.sample()
    assert sel.ids.tolist() == [7, 8, 9]
    assert not sel.unbiased
    np.testing.assert_allclose(sel.weights, 1 / 3)
    s.set_losses([100.0], ids=[0])
    assert 0 in s.sample().ids
    with pytest.raises(ValueError):
        s.set_losses(np.ones(3))
    with pytest.raises(ValueError):
        PowerOfChoiceSampler(sizes, 3, d=2)


@pytest.mark.parametrize(
    "factory",
    [
        lambda: UniformSampler(np.arange(1, 31), 5, seed=7),
        lambda: MultinomialSampler(np.arange(1, 31), 5, seed=7),
        lambda: StratifiedSampler(np.arange(1, 31), np.arange(30) % 3, [2, 2, 1], "pps", seed=7),
        lambda: StratifiedSampler(np.arange(1, 31), np.arange(30) % 3, [2, 2, 1], "srswor", 7),
        lambda: ClusteredSampler(np.arange(1, 31), 5, seed=7),
        lambda: PowerOfChoiceSampler(np.arange(1, 31), 5, 10, seed=7),
    ],
)
def test_determinism_and_protocol(factory):
    a, b = factory(), factory()
    assert isinstance(a, Sampler)
    for _ in range(3):
        sa, sb = a.sample(), b.sample()
        np.testing.assert_array_equal(sa.ids, sb.ids)
        np.testing.assert_array_equal(sa.weights, sb.weights)
        assert sa.ids.dtype == np.int64 and sa.weights.dtype == np.float64
        assert len(np.unique(sa.ids)) == len(sa.ids)
    s1 = a.sample(np.random.default_rng(99))
    s2 = b.sample(np.random.default_rng(99))
    np.testing.assert_array_equal(s1.ids, s2.ids)


def test_exact_m_distinct():
    sizes = np.random.default_rng(0).integers(1, 1000, 500)
    labels = np.arange(500) % 7
    for design in ("pps", "srswor"):
        s = StratifiedSampler(sizes, labels, [3, 3, 3, 3, 3, 3, 2], design)
        for _ in range(20):
            sel = s.sample()
            assert len(sel.ids) == 20 and len(np.unique(sel.ids)) == 20
            assert np.bincount(sel.strata, minlength=7).tolist() == [3] * 6 + [2]
    u = UniformSampler(sizes, 20)
    assert len(np.unique(u.sample().ids)) == 20


@pytest.mark.parametrize(
    "make",
    [
        lambda: UniformSampler([1, 2, 3], 4),
        lambda: UniformSampler([1, 0, 3], 2),
        lambda: UniformSampler([1, np.nan, 3], 2),
        lambda: UniformSampler([], 1),
        lambda: MultinomialSampler([1, 2], 0),
        lambda: StratifiedSampler([1, 2, 3], [0, 0, 1], [3, 1]),
        lambda: StratifiedSampler([1, 2, 3], [0, 0, 1], [0, 1]),
        lambda: StratifiedSampler([1, 2, 3], [0, 0, 1], [1, 1], design="cluster"),
        lambda: StratifiedSampler([1, 2, 3], [0, 0], [1, 1]),
        lambda: ClusteredSampler([1, 2, 3], 2, algorithm=3),
        lambda: ClusteredSampler([1, 2, 3], 2, algorithm=2, updates=np.ones((2, 2))),
        lambda: pps_inclusion(np.ones(3), 4),
    ],
)
def test_bad_input(make):
    with pytest.raises(ValueError):
        make()


def test_default_poc_d_is_twice_m_capped_at_n():
    from fedstrat.sampling import default_poc_d

    assert default_poc_d(100, 10) == 20
    assert default_poc_d(15, 10) == 15
    assert default_poc_d(100, 10, 0) == 20
    assert default_poc_d(100, 10, 30) == 30
    assert default_poc_d(25, 10, 30) == 25
