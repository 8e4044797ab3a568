"""Per-round O(N) work cached while the node set and the learned sizes are unchanged: the
cached answers must follow every change."""

from __future__ import annotations

from fedstrat.strategies.discovery import NodeWaiter
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
    assert first == [10, 20, 30]
    first.append(99)  # a caller's list: the cache is not shared
    assert waiter.available(grid) == [10, 20, 30]
    grid.ids = [30, 5, 10, 20]
    assert waiter.available(grid) == [5, 10, 20, 30]
    grid.ids = [20, 10]
    assert waiter.available(grid) == [10, 20]


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
