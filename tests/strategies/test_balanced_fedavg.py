"""FedAvg rounds drawn balanced: FedAvg's inclusion and weights, one node per block."""

from __future__ import annotations

import numpy as np
import pytest
from strathelpers import make_population
from test_size_strata import mse
from test_strat_decision import profiled, run_rounds

from fedstrat.sampling import StratifiedSampler, UniformSampler
from fedstrat.strategies import SelectionOptions


def follows_labels(pop):
    """IID-label population: a node's update is its label proportions' deviation (what label
    count noise does to an update) plus fresh noise."""
    mean = np.mean([pop.histogram(n) / np.sum(pop.histogram(n)) for n in pop.node_ids], axis=0)

    def sketch_of(node, stratum, rng):
        h = np.asarray(pop.histogram(node), dtype=np.float64)
        v = np.zeros(8)
        v[: len(h)] = 20.0 * (h / h.sum() - mean)
        return v + 0.05 * rng.normal(size=8)
    return sketch_of


def test_fedavg_rounds_draw_one_node_per_block_with_fedavgs_inclusion_and_weights():
    pop = make_population(n=36, classes=4, dim=6, alpha=1000.0, seed=3)  # IID labels
    policy, draws = run_rounds(pop, follows_labels(pop), rounds=6, size_strata=False)
    for d in draws[1:]:
        assert d.design == "fedavg" and d.estimator == "ratio"
        assert "drawn balanced" in d.reason and "histograms" in d.reason
        assert "uniform draw's, an upper bound" in d.reason
        assert np.allclose(d.selection.inclusion, 6 / 36)  # m divides N: FedAvg's m/N
        assert d.selection.weights.sum() == pytest.approx(1.0)
    smp = policy.last_sampler
    assert isinstance(smp, StratifiedSampler)
    drawn = smp.strata.labels[draws[-1].selection.ids]
    assert sorted(drawn.tolist()) == list(range(6))


def test_balanced_draws_beat_uniform_draws_where_updates_follow_the_profile():
    pop = make_population(n=36, classes=4, dim=6, alpha=1000.0, seed=3)
    sketch_of = follows_labels(pop)
    policy, _ = run_rounds(pop, sketch_of, rounds=3, size_strata=False)
    nodes = sorted(pop.node_ids)
    sizes = profiled(pop).sizes(nodes)
    p = sizes / sizes.sum()
    updates = np.array([sketch_of(n, 0, np.random.default_rng(0)) for n in nodes])
    rng = np.random.default_rng(9)  # seeded Monte Carlo, 3,000 draws each
    balanced = mse(policy.last_sampler, updates, p, rng, fedavg=True)
    uniform = mse(UniformSampler(sizes, 6, seed=0), updates, p, rng, fedavg=True)
    assert balanced < 0.8 * uniform


def test_balanced_fedavg_off_draws_uniformly_and_the_option_is_checked():
    pop = make_population(n=36, classes=4, dim=6, alpha=1000.0, seed=3)
    policy, draws = run_rounds(pop, follows_labels(pop), rounds=4, size_strata=False,
                               balanced_fedavg=False)
    assert isinstance(policy.last_sampler, UniformSampler)
    assert not any("drawn balanced" in d.reason for d in draws)
    with pytest.raises(ValueError, match="balanced_fedavg"):
        SelectionOptions(clients_per_round=6, balanced_fedavg="yes")
