"""choose_design never picks something predicted worse than uniform."""

import numpy as np

from fedstrat.sampling import StratifiedSampler, UniformSampler, choose_design, uniform_variance


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


def test_choose_design_falls_back_to_uniform():
    # All clients identical: every variance is 0, nothing is strictly better than uniform.
    sizes = np.full(10, 10.0)
    choice = choose_design(sizes, np.tile([1.0, 1.0], (10, 1)), 4, candidate_strata=(2,))
    assert choice.design == "uniform" and choice.strata is None
    assert "fallback to uniform" in choice.reason
    assert isinstance(choice.make_sampler(sizes, 4), UniformSampler)
