"""The balanced FedAvg draw's order is reused, not rebuilt each round: sketch orders until a
tenth of their nodes have new sketches, histogram orders while the profiles are unchanged;
new sizes rebuild only the sampler."""

from __future__ import annotations

import numpy as np

from fedstrat.strategies.balanced_draw import REFRESH, BalancedDraw
from fedstrat.strategies.node_registry import NodeRegistry
from fedstrat.strategies.plan import PopulationFrame

N, M = 200, 10


def registry_with_sketches(rng):
    reg = NodeRegistry()
    for node in range(1, N + 1):
        reg.observe_train(node, num_examples=50, sketch=rng.normal(size=8))
    return reg


def frame(reg, round_=1):
    nodes = list(range(1, N + 1))
    return PopulationFrame(round_, nodes, reg.sizes(nodes), M, reg, key=1)


def blocks(smp):
    return smp.strata.labels.copy()


def test_a_sketch_order_is_kept_until_a_tenth_of_its_nodes_have_new_sketches():
    rng = np.random.default_rng(0)
    reg = registry_with_sketches(rng)
    draw = BalancedDraw()
    first = blocks(draw.sampler(frame(reg)))
    assert draw.basis_ == "sketches" and REFRESH == 0.1
    allowance = int(REFRESH * N)  # 20 new sketches
    for i in range(allowance - 1):  # 19 nodes get very different sketches: order kept
        reg.observe_train(1 + i, sketch=100.0 * rng.normal(size=8))
        smp = draw.sampler(frame(reg, 2 + i))
        assert np.array_equal(blocks(smp), first)
        ids = smp.sample(np.random.default_rng(i)).ids
        assert sorted(smp.strata.labels[ids].tolist()) == list(range(M))  # one per block
    reg.observe_train(allowance, sketch=100.0 * rng.normal(size=8))  # the 20th: made again
    assert not np.array_equal(blocks(draw.sampler(frame(reg, 99))), first)


def test_new_sizes_rebuild_the_sampler_on_the_same_order():
    rng = np.random.default_rng(1)
    reg = registry_with_sketches(rng)
    reg.num_examples.pop(7)  # a node whose size is not known yet
    reg.version += 1
    draw = BalancedDraw()
    before = draw.sampler(frame(reg))
    reg.observe_train(7, num_examples=500)  # learned from its first train reply
    after = draw.sampler(frame(reg))
    assert after is not before and np.array_equal(blocks(after), blocks(before))
    assert draw.sampler(frame(reg)) is after  # nothing changed: the same sampler


def test_a_histogram_order_ignores_sketches_and_follows_new_profiles():
    rng = np.random.default_rng(2)
    reg = NodeRegistry()
    for node in range(1, N):
        reg.set_profile(node, 40, rng.dirichlet(np.full(5, 0.3)) * 40)
    reg.observe_train(N, num_examples=40)  # one node never profiled (ordered last)
    draw = BalancedDraw()
    first = draw.sampler(frame(reg))
    assert draw.basis_ == "histograms"
    for node in range(1, N):  # every node's sketch changes: the histogram order stays
        reg.observe_train(node, sketch=rng.normal(size=8))
    assert draw.sampler(frame(reg)) is first
    reg.set_profile(N, 40, [40.0, 0, 0, 0, 0])  # a new profile: ordered again
    assert draw.sampler(frame(reg)) is not first
