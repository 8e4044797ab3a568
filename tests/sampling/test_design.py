"""choose_design never picks something predicted worse than uniform."""

import numpy as np
import pytest

from fedstrat.sampling import (
    StratifiedSampler,
    UniformSampler,
    choose_design,
    fedavg_variance,
    label_homogeneity,
    uniform_variance,
)


def _dirichlet_population(n, alpha, seed):
    rng = np.random.default_rng(seed)
    props = rng.dirichlet(np.full(10, alpha), n)
    sizes = rng.integers(5, 200, n)
    hist = np.round(props * sizes[:, None]) + 1e-9
    return sizes.astype(float), hist


def test_choose_design_beats_uniform_on_non_iid():
    sizes, hist = _dirichlet_population(60, 0.1, 0)
    choice = choose_design(sizes, hist, 10, candidate_strata=(2, 4, 8), seed=0)
    assert choice.design in ("pps", "srswor")
    assert choice.predicted_variance < choice.uniform_variance
    props = hist / hist.sum(1, keepdims=True)
    assert choice.uniform_variance == uniform_variance(props, sizes, 10)
    assert choice.allocation.sum() == 10
    assert isinstance(choice.make_sampler(sizes, 10), StratifiedSampler)
    assert len(choice.candidates) == 6
    assert min(c["variance"] for c in choice.candidates) == choice.predicted_variance


def test_choose_design_never_worse_than_uniform():
    for seed in range(3):
        rng = np.random.default_rng(seed)
        # IID label proportions: stratifying on noise.
        hist = rng.multinomial(100, np.full(10, 0.1), 40).astype(float)
        sizes = np.full(40, 100.0)
        choice = choose_design(sizes, hist, 5, candidate_strata=(2, 3), seed=seed)
        assert choice.predicted_variance <= choice.uniform_variance
        for c in choice.candidates:
            if c["variance"] >= choice.uniform_variance:
                assert choice.predicted_variance < c["variance"] or choice.design == "uniform"


def test_choose_design_falls_back_to_the_baseline():
    # All clients identical: every variance is 0, nothing is strictly better than FedAvg.
    sizes = np.full(10, 10.0)
    choice = choose_design(sizes, np.tile([1.0, 1.0], (10, 1)), 4, candidate_strata=(2,))
    assert choice.design == "fedavg" and choice.strata is None
    assert "fallback to fedavg" in choice.reason
    old = choose_design(
        sizes, np.tile([1.0, 1.0], (10, 1)), 4, candidate_strata=(2,), baseline="uniform"
    )
    assert old.design == "uniform" and "fallback to uniform" in old.reason
    assert isinstance(old.make_sampler(sizes, 4), UniformSampler)


def test_the_fedavg_fallback_samples_with_fedavgs_weights():
    # the design chosen is FedAvg (uniform draw, self-normalised weights): its sampler must
    # weigh as FedAvg does, so that identical updates aggregate exactly (predicted MSE ~0),
    # which HT weights (sum 0.59 here) do not
    sizes = np.arange(1, 41.0)
    choice = choose_design(sizes, np.ones((40, 5)), 8)
    assert choice.design == "fedavg" and choice.predicted_variance < 1e-20
    for seed in range(5):
        sel = choice.make_sampler(sizes, 8, seed=seed).sample()
        assert sel.weights == pytest.approx(sizes[sel.ids] / sizes[sel.ids].sum(), rel=1e-12)
        assert not sel.unbiased


def test_choose_design_compares_with_fedavg_not_uniform_ht():
    # IID label proportions, very unequal sizes: uniform HT pays for the size spread, FedAvg
    # (self-normalised) does not, so strata that beat HT need not beat FedAvg.
    rng = np.random.default_rng(3)
    sizes = rng.integers(2, 400, 80).astype(float)
    hist = np.stack([rng.multinomial(int(s), np.full(10, 0.1)) for s in sizes]).astype(float)
    vs_ht = choose_design(sizes, hist, 10, seed=0, baseline="uniform")
    vs_fedavg = choose_design(sizes, hist, 10, seed=0)
    props = hist / hist.sum(1, keepdims=True)
    assert vs_fedavg.fedavg_variance == fedavg_variance(props, sizes, 10)
    assert vs_fedavg.fedavg_variance < vs_fedavg.uniform_variance
    assert vs_fedavg.predicted_variance <= vs_fedavg.fedavg_variance
    assert vs_ht.design in ("pps", "srswor")  # the old comparison stratified on noise


def test_label_homogeneity_separates_iid_from_label_skew():
    rng = np.random.default_rng(0)
    sizes = rng.integers(5, 200, 100)
    iid = np.stack([rng.multinomial(int(s), np.full(10, 0.1)) for s in sizes])
    skew = np.stack([rng.multinomial(int(s), rng.dirichlet(np.full(10, 0.5))) for s in sizes])
    p_iid = []
    for k in range(20):
        g = np.random.default_rng(k)
        table = np.stack([g.multinomial(int(s), np.full(10, 0.1)) for s in sizes])
        p_iid.append(label_homogeneity(table).p_value)
    assert label_homogeneity(iid).iid() and not label_homogeneity(skew).iid()
    assert label_homogeneity(skew).p_value < 1e-12
    assert 0.1 < float(np.mean(p_iid)) < 0.9  # p ~ U(0, 1) under homogeneity
    assert label_homogeneity(np.ones((1, 3))).df == 0
