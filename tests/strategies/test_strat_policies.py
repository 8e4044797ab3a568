"""Selection policies, the stratifier and the allocation rule, without Flower messages."""

from __future__ import annotations

import json

import numpy as np
import pytest
from strathelpers import make_population

from fedstrat.sampling import Strata, StratumVarianceTracker
from fedstrat.strategies import POLICIES, SelectionOptions, SelectionPolicy, make_policy
from fedstrat.strategies.allocation_rule import (
    allocate,
    stratum_costs,
    stratum_means,
    stratum_sigmas,
)
from fedstrat.strategies.node_registry import NodeRegistry
from fedstrat.strategies.plan import Feedback, PopulationFrame, SamplerSpec
from fedstrat.strategies.policies import policy_class
from fedstrat.strategies.stratifier import Stratifier


@pytest.fixture(scope="module")
def pop():
    return make_population(n=30, classes=3, dim=6, alpha=0.05, seed=9)


def profiled(pop, nodes=None) -> NodeRegistry:
    reg = NodeRegistry()
    for n in nodes or pop.node_ids:
        reg.set_profile(n, float(pop.sizes[pop.index[n]]), pop.histogram(n))
    return reg


def frame(pop, reg, rnd=1, m=6, nodes=None) -> PopulationFrame:
    nodes = sorted(nodes or pop.node_ids)
    return PopulationFrame(rnd, nodes, reg.sizes(nodes), m, reg)


# ---------------------------------------------------------------- registry and protocol
def test_every_registered_policy_satisfies_the_protocol():
    for name, cls in POLICIES.items():
        policy = make_policy(SelectionOptions(clients_per_round=4, selection=name))
        assert isinstance(policy, cls) and isinstance(policy, SelectionPolicy)
        assert cls.name == name


def test_unknown_policy_name_is_a_value_error_listing_the_known_ones():
    with pytest.raises(ValueError, match="clustered2"):
        policy_class("random")


@pytest.mark.parametrize("name", list(POLICIES))
def test_plan_is_a_function_of_the_rng(pop, name):
    reg = profiled(pop)
    opts = SelectionOptions(clients_per_round=6, selection=name)
    a = make_policy(opts).plan(frame(pop, reg), np.random.default_rng([0, 1]))
    b = make_policy(opts).plan(frame(pop, reg), np.random.default_rng([0, 1]))
    np.testing.assert_array_equal(a.selection.ids, b.selection.ids)
    assert 1 <= len(a.selection) <= 6 and a.selection.ids.max() < len(pop.node_ids)
    assert a.design in (name, "pps", "srswor", "uniform")


def test_baselines_have_no_state(pop):
    p = make_policy(SelectionOptions(clients_per_round=6, selection="uniform"))
    p.observe(Feedback([pop.node_ids[0]], np.ones((1, 64)), np.ones(1)))
    assert p.state_dict() == {}


def test_poc_candidate_set_defaults_to_min_n_2m():
    sizes = np.full(7, 10.0)
    assert policy_class("poc").sampler(SamplerSpec(sizes, 3)).d == 6
    assert policy_class("poc").sampler(SamplerSpec(sizes, 5)).d == 7
    assert policy_class("poc").sampler(SamplerSpec(sizes, 3, poc_d=4)).d == 4


def test_poc_prefers_unseen_then_high_loss_nodes(pop):
    reg = profiled(pop)
    nodes = sorted(pop.node_ids)
    for k, n in enumerate(nodes):
        reg.observe_train(n, loss=float(k))
    p = make_policy(SelectionOptions(clients_per_round=3, selection="poc", poc_d=30))
    draw = p.plan(frame(pop, reg, m=3), np.random.default_rng(0))
    assert sorted(draw.selection.ids.tolist()) == [27, 28, 29]  # the 3 highest losses
    assert not draw.selection.unbiased


def test_clustered2_falls_back_to_algorithm_1_without_representatives(pop):
    sizes = np.array(pop.sizes, dtype=float)
    cls = policy_class("clustered2")
    assert cls.sampler(SamplerSpec(sizes, 5)).algorithm == 1
    assert cls.sampler(SamplerSpec(sizes, 5, representatives=pop.props)).algorithm == 2


# ---------------------------------------------------------------- stratified policy
def test_stratified_policy_samples_uniformly_until_strata_exist(pop):
    reg = NodeRegistry()  # no histograms: nothing to stratify on
    p = make_policy(SelectionOptions(clients_per_round=6, warmup_rounds=2))
    draw = p.plan(frame(pop, reg), np.random.default_rng(0))
    assert draw.design == "uniform-warmup" and draw.strata is None
    assert p.fallback  # will stratify by sketches after the warm-up


def test_stratified_policy_plans_strata_and_allocation_summing_to_m(pop):
    reg = profiled(pop)
    p = make_policy(SelectionOptions(clients_per_round=6, design="pps", n_strata=3))
    draw = p.plan(frame(pop, reg), np.random.default_rng(0))
    sp = draw.strata
    assert draw.design == "pps" and sp is not None
    assert int(sp.allocation.sum()) == 6 and sp.allocation.min() >= 1
    assert sp.basis == "prior" and sp.counts.sum() == 30
    assert np.bincount(draw.selection.strata, minlength=3).tolist() == sp.allocation.tolist()


def test_too_many_strata_for_m_gives_a_fedavg_round(pop):
    reg = profiled(pop)
    p = make_policy(SelectionOptions(clients_per_round=6, design="srswor", n_strata=3,
                                     min_per_stratum=3))
    draw = p.plan(frame(pop, reg), np.random.default_rng(0))
    assert draw.design == "fedavg" and draw.strata is None and draw.estimator == "ratio"
    assert draw.decision is not None and "too many strata" in draw.decision.reason
    sizes = pop.sizes[[pop.index[n] for n in sorted(pop.node_ids)]]
    w = draw.selection.weights
    np.testing.assert_allclose(w, sizes[draw.selection.ids] / sizes[draw.selection.ids].sum())


def test_observe_feeds_the_tracker_of_the_responders_strata(pop):
    reg = profiled(pop)
    p = make_policy(SelectionOptions(clients_per_round=6, design="pps", n_strata=3,
                                     sketch_dim=4))
    p.plan(frame(pop, reg), np.random.default_rng(0))
    tracker = p.stratifier.tracker_
    before = tracker.counts().sum()
    nodes = pop.node_ids[:3]
    p.observe(Feedback(nodes, np.ones((3, 4)), np.array([0.5, 0.0, 0.25])))
    assert tracker.counts().sum() == before + 2  # zero weight is not an observation


def test_stratified_policy_state_round_trips_through_json(pop):
    reg = profiled(pop)
    opts = SelectionOptions(clients_per_round=6, design="pps", n_strata=3)
    a = make_policy(opts)
    a.plan(frame(pop, reg), np.random.default_rng(0))
    b = make_policy(opts)
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))
    da = a.plan(frame(pop, reg, rnd=2), np.random.default_rng(5))
    db = b.plan(frame(pop, reg, rnd=2), np.random.default_rng(5))
    np.testing.assert_array_equal(da.selection.ids, db.selection.ids)
    np.testing.assert_array_equal(da.selection.weights, db.selection.weights)


# ---------------------------------------------------------------- stratifier
def test_fit_sets_the_fitted_attributes(pop):
    reg = profiled(pop)
    st = Stratifier(SelectionOptions(clients_per_round=6, design="pps", n_strata=3))
    assert not st.fitted
    assert st.fit(reg, pop.node_ids, "histograms", server_round=4) is st
    assert st.fitted and st.features_kind_ == "histograms" and st.fitted_round_ == 4
    assert st.centroids_.shape == (3, 3) and st.unknown_stratum == 3
    assert set(st.node_stratum_) == set(pop.node_ids)
    assert st.prior_stds_.shape == (4,) and st.tracker_.n_strata == 4
    assert st.design_ == "pps" and "3 strata" in st.design_reason_


def test_assign_uses_the_nearest_centroid_and_unknown_without_features(pop):
    reg = profiled(pop, pop.node_ids[:24])
    st = Stratifier(SelectionOptions(clients_per_round=6, design="pps", n_strata=3))
    st.fit(reg, pop.node_ids[:24], "histograms", 1)
    for n in pop.node_ids[24:27]:
        reg.set_profile(n, float(pop.sizes[pop.index[n]]), pop.histogram(n))
    st.assign(reg, pop.node_ids)
    for n in pop.node_ids[24:27]:
        x = np.array(pop.histogram(n)) / sum(pop.histogram(n))
        assert st.node_stratum_[n] == int(((st.centroids_ - x) ** 2).sum(axis=1).argmin())
    assert all(st.node_stratum_[n] == st.unknown_stratum for n in pop.node_ids[27:])
    assert st.labels(pop.node_ids[:3]) is not None and st.labels([-5]) is None


# ---------------------------------------------------------------- allocation rule
@pytest.mark.parametrize("rule", ["neyman", "proportional", "cost"])
@pytest.mark.parametrize("design", ["pps", "srswor"])
def test_allocation_sums_to_m_with_the_minimum_per_stratum(rule, design):
    counts = np.array([10.0, 5.0, 20.0])
    masses = np.array([0.3, 0.1, 0.6])
    stds = np.array([1.0, 3.0, 0.5])
    alloc = allocate(rule, design, counts, masses, stds, 9, 1, costs=np.array([1.0, 4.0, 1.0]))
    assert alloc.dtype == np.int64 and alloc.sum() == 9 and alloc.min() >= 1
    assert (alloc <= counts).all()


def test_proportional_pps_allocation_follows_the_masses():
    alloc = allocate("proportional", "pps", np.array([50.0, 50.0]), np.array([0.25, 0.75]),
                     np.ones(2), 8, 1)
    assert alloc.tolist() == [2, 6]


def test_expensive_strata_get_fewer_clients_under_the_cost_rule():
    args = ("srswor", np.array([20.0, 20.0]), np.array([0.5, 0.5]), np.ones(2), 10, 1)
    assert allocate("neyman", *args).tolist() == [5, 5]
    cost = allocate("cost", *args, costs=np.array([1.0, 100.0]))
    assert cost[0] > cost[1]
    with pytest.raises(ValueError, match="costs"):
        allocate("cost", *args)


def test_stratum_costs_fill_unobserved_strata_with_the_overall_mean():
    reg = NodeRegistry()
    reg.observe_train(1, cost=2.0)
    reg.observe_train(2, cost=4.0)
    costs = stratum_costs({1: 0, 2: 0, 3: 1}, reg, np.array([0, 1]))
    assert costs.tolist() == [3.0, 3.0]
    assert stratum_costs({3: 0}, NodeRegistry(), np.array([0])).tolist() == [1.0]


def test_sigma_basis_moves_from_prior_to_tracked(pop):
    reg = profiled(pop)
    st = Stratifier(SelectionOptions(clients_per_round=6, design="pps", n_strata=3,
                                     sketch_dim=2))
    st.fit(reg, pop.node_ids, "histograms", 1)
    present = np.array([0, 1, 2])
    stds, basis = stratum_sigmas(st, present)
    assert basis == "prior" and np.allclose(stds, st.prior_stds_[:3])
    masses = Strata(np.array([0, 1, 2])).masses(np.ones(3))
    assert stratum_means(st, present, masses, "prior").shape == (3, 3)
    st.tracker_ = StratumVarianceTracker(4, 2)
    st.tracker_.update(0, [0.0, 0.0])
    st.tracker_.update(0, [2.0, 0.0])
    stds, basis = stratum_sigmas(st, present)
    assert basis == "tracked" and stds[0] == pytest.approx(1.0)
