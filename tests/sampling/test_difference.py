"""Difference (control-variate) estimator: exact unbiasedness by enumerating every sample of
every design through the real samplers (a scripted Generator answers their random calls), and
its variance against the exact design formulas on the residuals."""

import itertools
import math

import numpy as np
import pytest

from fedstrat.sampling import (
    ClusteredSampler,
    MultinomialSampler,
    Strata,
    StratifiedSampler,
    UniformSampler,
)
from fedstrat.sampling.difference import (
    ResidualPPSSampler,
    control_offset,
    difference_estimate,
    difference_variance,
    fill_controls,
    residual_pps_variance,
)


class Scripted(np.random.Generator):
    """A Generator whose ``choice``, ``permutation`` and ``random`` return scripted answers."""

    def __init__(self, answers):
        super().__init__(np.random.PCG64(0))
        self.answers = list(answers)

    def _next(self):
        return self.answers.pop(0)

    def choice(self, a, size=None, replace=True, p=None, axis=0, shuffle=True):
        return np.asarray(self._next(), dtype=np.int64)

    def permutation(self, x, axis=0):
        return np.asarray(self._next(), dtype=np.int64)

    def random(self, size=None, dtype=np.float64, out=None):
        return self._next()


def _population(n, dim=3, seed=0):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 40, n).astype(float)
    updates = rng.normal(size=(n, dim)) + np.arange(n)[:, None] * 0.4
    return sizes, updates


def _draws(sampler, scripts):
    """[(probability, Selection)] for each (probability, answers) script."""
    out = []
    for prob, answers in scripts:
        g = Scripted(answers)
        sel = sampler.sample(g)
        assert not g.answers, "the sampler used fewer random calls than scripted"
        out.append((prob, sel))
    return out


def _uniform(n, m):
    combos = list(itertools.combinations(range(n), m))
    return [(1.0 / len(combos), [np.array(c)]) for c in combos]


def _intervals_midpoints(edges):
    """Midpoints and lengths of the pieces of [0, 1) cut at ``edges``."""
    cuts = np.unique(np.concatenate([[0.0, 1.0], np.mod(edges, 1.0)]))
    cuts = cuts[(cuts >= 0) & (cuts <= 1)]
    return [((a + b) / 2, b - a) for a, b in zip(cuts[:-1], cuts[1:], strict=True)
            if b - a > 1e-15]


def _multinomial(p, m):
    cdf = np.concatenate([[0.0], np.cumsum(p)])
    cdf[-1] = 1.0
    mids = (cdf[:-1] + cdf[1:]) / 2
    out = []
    for tup in itertools.product(range(len(p)), repeat=m):
        prob = float(np.prod(p[list(tup)]))
        out.append((prob, [mids[list(tup)]]))
    return out


def _clustered(p, m, order):
    """Scripts for ClusteredSampler: masses m p_i laid end to end in ``order`` (its documented
    layout); draw k picks the client under k + u_k."""
    end = np.cumsum(m * p[order])
    end *= m / end[-1]
    start = np.concatenate([[0.0], end[:-1]])
    atoms = []
    for k in range(m):
        lo, hi = np.maximum(start, k), np.minimum(end, k + 1.0)
        keep = hi - lo > 1e-12
        atoms.append([((a + b) / 2 - k, b - a) for a, b in zip(lo[keep], hi[keep], strict=True)])
    out = []
    for pick in itertools.product(*atoms):
        out.append((float(np.prod([w for _, w in pick])), [np.array([u for u, _ in pick])]))
    return out


def _stratified(sampler, strata, alloc, design):
    per_stratum = []
    for h in range(strata.n_strata):
        mem = strata.members(h)
        if design == "srswor":
            combos = list(itertools.combinations(range(len(mem)), int(alloc[h])))
            per_stratum.append([(1.0 / len(combos), [np.array(c)]) for c in combos])
            continue
        pi = sampler.inclusion[mem]
        rnd = pi[pi < 1.0]
        if not len(rnd):
            per_stratum.append([(1.0, [])])
            continue
        k = int(round(rnd.sum()))
        if k == 1:  # one random draw: the position under u on the cumulative pi, no order
            c = np.cumsum(rnd)
            per_stratum.append([(length, [u]) for u, length in _intervals_midpoints(c / c[-1])])
            continue
        opts = []
        perms = list(itertools.permutations(range(len(rnd))))
        for perm in perms:
            c = np.cumsum(rnd[list(perm)])
            c *= k / c[-1]
            for u, length in _intervals_midpoints(c):
                opts.append((length / len(perms), [np.array(perm), u]))
        per_stratum.append(opts)
    out = []
    for combo in itertools.product(*per_stratum):
        prob = float(np.prod([c[0] for c in combo]))
        out.append((prob, [a for c in combo for a in c[1]]))
    return out


def _designs():
    """(name, sampler, scripts, exact variance of residuals or None)."""
    sizes, upd = _population(6, seed=3)
    p = sizes / sizes.sum()
    out = []
    smp = UniformSampler(sizes, 3)
    out.append(("uniform", smp, _uniform(6, 3), lambda e, s=sizes: difference_variance(
        e, np.zeros_like(e), s, 3, design="uniform")))
    smp = MultinomialSampler(sizes, 3)
    out.append(("multinomial", smp, _multinomial(p, 3), lambda e, s=sizes: difference_variance(
        e, np.zeros_like(e), s, 3, design="multinomial")))
    smp = ClusteredSampler(sizes, 3, algorithm=1)
    order = np.argsort(-sizes, kind="stable")
    out.append(("clustered1", smp, _clustered(p, 3, order), lambda e, s=sizes, c=smp:
                difference_variance(e, np.zeros_like(e), s, design="clustered", sampler=c)))
    from scipy.cluster.hierarchy import leaves_list, linkage

    smp = ClusteredSampler(sizes, 3, algorithm=2, updates=upd)
    order = leaves_list(linkage(upd, method="ward"))
    out.append(("clustered2", smp, _clustered(p, 3, order), lambda e, s=sizes, c=smp:
                difference_variance(e, np.zeros_like(e), s, design="clustered", sampler=c)))
    labels = np.array([0, 1, 0, 1, 0, 1])
    strata = Strata(labels)
    alloc = np.array([2, 1])
    smp = StratifiedSampler(sizes, strata, alloc, design="srswor")
    out.append(("srswor", smp, _stratified(smp, strata, alloc, "srswor"),
                lambda e, s=sizes: difference_variance(
                    e, np.zeros_like(e), s, design="srswor", strata=strata, allocation=alloc)))
    # pps with a certainty unit (client 0 is large) and two strata of random units
    sizes2 = sizes.copy()
    sizes2[0] = 200.0
    labels2 = np.array([0, 0, 0, 1, 1, 1])
    strata2 = Strata(labels2)
    alloc2 = np.array([2, 2])
    smp = StratifiedSampler(sizes2, strata2, alloc2, design="pps")
    assert smp.inclusion[0] == 1.0
    out.append(("pps", smp, _stratified(smp, strata2, alloc2, "pps"), None))
    # residual pps: inclusion from a size measure other than the sizes (a predicted residual
    # norm), HT weights p_i / pi_i; client 3 is a certainty by its size measure
    z = sizes2 / sizes2.sum() * np.array([1.0, 0.2, 3.0, 40.0, 1.0, 0.5])
    smp = ResidualPPSSampler(sizes2, strata2, alloc2, z)
    assert smp.inclusion[3] == 1.0
    out.append(("residual-pps", smp, _stratified(smp, strata2, alloc2, "pps"), None))
    # one draw per stratum: the Hansen-Hurwitz formula is exact
    alloc1 = np.array([1, 1])
    smp = ResidualPPSSampler(sizes, strata2, alloc1, z)
    out.append(("residual-pps-1", smp, _stratified(smp, strata2, alloc1, "pps"),
                lambda e, s=sizes, z=z: residual_pps_variance(e, s, strata2, alloc1, z)))
    return out


DESIGNS = _designs()


@pytest.mark.parametrize("name,sampler,scripts,exact_var", DESIGNS, ids=[d[0] for d in DESIGNS])
def test_difference_estimator_unbiased_by_enumeration(name, sampler, scripts, exact_var):
    draws = _draws(sampler, scripts)
    n = sampler.n_clients
    probs = np.array([pr for pr, _ in draws])
    assert probs.sum() == pytest.approx(1.0, abs=1e-12)
    p = sampler.sizes / sampler.sizes.sum()
    # the HT property, the enumeration's own check: E[w_i 1{i in s}] = p_i for every i
    ew = np.zeros(n)
    for pr, sel in draws:
        np.add.at(ew, sel.ids, pr * sel.weights)
    np.testing.assert_allclose(ew, p, atol=1e-12)
    rng = np.random.default_rng(7)
    upd = rng.normal(size=(n, 4)) * 3 + np.arange(n)[:, None]
    target = p @ upd
    for controls in (np.zeros((n, 4)), rng.normal(size=(n, 4)) * 5, upd + 0.1 * rng.normal(
            size=(n, 4)), upd):
        est = np.array([difference_estimate(sel, upd, controls, sampler.sizes)
                        for _, sel in draws])
        np.testing.assert_allclose(probs @ est, target, atol=1e-12)
        var = float(probs @ np.sum((est - target) ** 2, axis=1))
        if np.array_equal(controls, upd):
            assert var == pytest.approx(0.0, abs=1e-20)  # perfect controls: no variance
        if exact_var is not None:
            assert var == pytest.approx(exact_var(upd - controls), rel=1e-10, abs=1e-14)


def test_controls_chosen_after_the_draw_are_biased():
    """The guarantee needs c fixed before the draw: c_i = Delta_i for the drawn clients only
    (0 for the others) makes the estimate sum_i p_i Delta_i 1{i in s}, biased."""
    sizes, upd = _population(5, seed=1)
    sampler = UniformSampler(sizes, 2)
    draws = _draws(sampler, _uniform(5, 2))
    p = sizes / sizes.sum()
    mean = np.zeros(upd.shape[1])
    for pr, sel in draws:
        c = np.zeros_like(upd)
        c[sel.ids] = upd[sel.ids]
        mean += pr * difference_estimate(sel, upd, c, sizes)
    assert np.linalg.norm(mean - p @ upd) > 0.1


def test_difference_variance_is_the_residual_design_variance():
    sizes, upd = _population(8, seed=2)
    c = upd * 0.9
    v = difference_variance(upd, c, sizes, 3, design="uniform")
    v0 = difference_variance(upd, np.zeros_like(upd), sizes, 3, design="uniform")
    assert v < v0
    assert v == pytest.approx(0.01 * v0, rel=1e-9)
    with pytest.raises(ValueError, match="design"):
        difference_variance(upd, c, sizes, 3, design="nope")
    with pytest.raises(ValueError, match="strata"):
        difference_variance(upd, c, sizes, design="srswor")


def test_control_offset_and_fill():
    sizes = np.array([1.0, 3.0, 4.0, 2.0])
    c = np.arange(8.0).reshape(4, 2)
    np.testing.assert_allclose(control_offset(sizes, c), (sizes / 10) @ c)
    known = np.array([True, False, True, False])
    labels = np.array([0, 0, 1, 2])
    f = fill_controls(c, known, labels)
    np.testing.assert_array_equal(f[0], c[0])
    np.testing.assert_array_equal(f[1], c[0])  # stratum 0's known mean
    np.testing.assert_array_equal(f[3], (c[0] + c[2]) / 2)  # stratum 2 has none: all known
    np.testing.assert_array_equal(fill_controls(c, known, mode="zero")[1], [0.0, 0.0])
    np.testing.assert_array_equal(fill_controls(c, np.zeros(4, bool))[2], [0.0, 0.0])
    assert math.isclose(float(fill_controls(c, known)[1, 0]), 2.0)


@pytest.mark.parametrize("equal_z", [True, False])
def test_uniform_ht_from_strata_is_the_enumerated_srswor_variance(equal_z):
    """FedAvg rounds with estimator="difference" keep HT weights N/m: the variance of
    (N/m) sum_s y_i over every m-subset equals uniform_ht_from_strata from the strata's
    z-weighted mean and std of v = y / z, exactly when z is constant in each stratum, and for
    any z with one node per stratum."""
    from fedstrat.sampling.baseline import uniform_ht_from_strata

    rng = np.random.default_rng(5)
    n, m, d = 7, 3, 2
    labels = np.array([0, 0, 0, 1, 1, 2, 2]) if equal_z else np.arange(n)
    h_count = int(labels.max()) + 1
    z = (np.array([0.1, 0.2, 0.3])[labels] if equal_z else rng.uniform(0.05, 0.4, size=n))
    v = rng.normal(size=(n, d)) + 0.7
    y = z[:, None] * v
    est = np.array([(n / m) * y[list(s)].sum(axis=0) for s in itertools.combinations(range(n), m)])
    exact = float(np.mean(np.sum((est - y.sum(axis=0)) ** 2, axis=1)))
    masses = np.bincount(labels, weights=z, minlength=h_count)
    q2 = np.bincount(labels, weights=z * z, minlength=h_count)
    means = np.stack([z[labels == h] @ v[labels == h] / masses[h] for h in range(h_count)])
    stds = np.sqrt([z[labels == h] @ np.sum((v[labels == h] - means[h]) ** 2, axis=1)
                    / masses[h] for h in range(h_count)])
    assert uniform_ht_from_strata(n, m, masses, q2, stds, means) == pytest.approx(exact,
                                                                                  rel=1e-12)
