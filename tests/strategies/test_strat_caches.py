"""Per-round O(N) work cached while the node set and the learned sizes are unchanged: the
cached answers must follow every change."""

from __future__ import annotations

import gc
import json

import numpy as np
import pytest
from flwr.app import ConfigRecord
from flwr.serverapp.strategy import FedAvg
from strathelpers import global_arrays, make_population, population_grid

from fedstrat.strategies import StratifiedSelection
from fedstrat.strategies.discovery import NodeWaiter
from fedstrat.strategies.local_grid import LocalGrid
from fedstrat.strategies.node_registry import NodeRegistry
from fedstrat.strategies.weight_cap import SizeRules


class _Ids:
    def __init__(self, ids):
        self.ids = ids

    def get_node_ids(self):
        return list(self.ids)


def test_available_is_sorted_and_follows_the_grid():
    grid = _Ids([30, 10, 20])
    waiter = NodeWaiter(want=1, timeout=0.0, poll_interval=0.01)
    first = waiter.available(grid)
    assert first == (10, 20, 30)
    with pytest.raises(AttributeError):
        first.append(99)  # shared between rounds, so it cannot be changed by a caller
    assert waiter.available(grid) is first  # same ids: the same object, no N-item copy
    grid.ids = [30, 5, 10, 20]
    assert waiter.available(grid) == (5, 10, 20, 30)
    grid.ids = [20, 10]
    assert waiter.available(grid) == (10, 20)


def test_cap_effect_follows_new_sizes_and_nodes():
    reg = NodeRegistry(SizeRules(cap_multiple=2.0))
    for node, n in ((1, 10.0), (2, 10.0), (3, 10.0)):
        reg.observe_train(node, num_examples=n)
    nodes = [1, 2, 3, 4]
    assert not reg.cap_effect(nodes).binding and reg.size_cap() == 20.0
    assert reg.cap_effect(nodes) is reg.cap_effect(list(nodes))  # cached
    reg.observe_train(4, num_examples=100.0)  # a new learned size: cap and effect change
    eff = reg.cap_effect(nodes)
    assert eff.nodes == [4] and eff.claimed == [100.0] and reg.size_cap() == 20.0
    assert eff.removed == (100.0 - 20.0) / 130.0
    assert not reg.cap_effect([1, 2, 3]).binding  # other nodes, new answer
    reg.set_profile(5, 1000.0, [500.0, 500.0])
    reg.set_profile(6, 1000.0, [1000.0])
    reg.set_profile(7, 1000.0, [1000.0])
    assert reg.size_cap() == 2.0 * 100.0  # median of 10, 10, 10, 100, 1000 x3
    assert reg.cap_effect(nodes + [5]).nodes == [5]
    other = NodeRegistry(SizeRules(cap_multiple=2.0))
    other.load_state_dict(reg.state_dict())
    assert other.cap_effect(nodes + [5]).to_json() == reg.cap_effect(nodes + [5]).to_json()


def test_waiter_revision_changes_only_with_the_nodes():
    grid = _Ids([30, 10, 20])
    waiter = NodeWaiter(want=1, timeout=0.0, poll_interval=0.01)
    waiter.available(grid)
    rev = waiter.revision
    waiter.available(grid)
    assert waiter.revision == rev  # same nodes: callers may keep their per-population caches
    grid.ids = [30, 10, 20, 40]
    waiter.available(grid)
    assert waiter.revision == rev + 1
    grid.ids = [30, 10, 20]
    waiter.available(grid)
    assert waiter.revision == rev + 2


def test_population_caches_follow_nodes_joining_and_leaving():
    """Round by round the grid shows other nodes: every node is profiled once it appears, and
    the round's population, sizes and strata are those of the nodes connected that round."""
    pop = make_population(n=30, classes=3, dim=6, alpha=0.05, seed=4)
    shown = {"ids": pop.node_ids[:20]}
    grid = LocalGrid(lambda: list(shown["ids"]), population_grid(pop).handler)
    s = StratifiedSelection(FedAvg(fraction_evaluate=0.0), clients_per_round=6, seed=0,
                            design="pps", n_strata=3, profiling="query")
    arrays = global_arrays(6)
    schedule = [pop.node_ids[:20], pop.node_ids[:20], pop.node_ids, pop.node_ids[5:25],
                pop.node_ids[5:25], pop.node_ids]
    for r, ids in enumerate(schedule, start=1):
        shown["ids"] = ids
        msgs = list(s.configure_train(r, arrays, ConfigRecord(), grid))
        plan = s.pending_plan
        assert list(plan.population) == sorted(ids)
        np.testing.assert_array_equal(plan.sizes, [pop.sizes[pop.index[n]] for n in sorted(ids)])
        assert all(s.registry.known(n) for n in ids)
        assert {m.metadata.dst_node_id for m in msgs} <= set(ids)
        s.aggregate_train(r, grid.send_and_receive(msgs, timeout=5))
        if s.records[-1].N_h is not None:
            assert sum(s.records[-1].N_h) == len(ids)


def test_registry_profiles_and_sketches_are_not_gc_tracked_and_round_trip():
    reg = NodeRegistry(SizeRules())
    reg.set_profile(1, 3.0, [1.0, 2.0])
    reg.observe_train(1, num_examples=3.0, sketch=np.array([0.5, -1.0], dtype=np.float32))
    gc.collect()  # tuples of floats are untracked by a collection: no N-object walk later
    assert not gc.is_tracked(reg.histograms[1]) and not gc.is_tracked(reg.sketches[1])
    state = json.loads(json.dumps(reg.state_dict()))
    assert state["histograms"] == {"1": [1.0, 2.0]} and state["sketches"] == {"1": [0.5, -1.0]}
    other = NodeRegistry(SizeRules())
    other.load_state_dict(state)
    assert other.state_dict() == reg.state_dict()
    np.testing.assert_array_equal(other.histogram_matrix([1]), reg.histogram_matrix([1]))
    np.testing.assert_array_equal(other.sketch_matrix([1]), [[0.5, -1.0]])
