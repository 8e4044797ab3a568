"""The HT estimate through FedAvg as one affine pass over its mean (fedstrat.strategies
.inner_aggregate): same aggregate as the per-reply rewrite, replies passed unchanged, used
only where the wrapped aggregate is FedAvg's weighted mean."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ConfigRecord
from flwr.serverapp.strategy import (
    DifferentialPrivacyServerSideFixedClipping,
    FedAdam,
    FedAvg,
    FedProx,
    FedYogi,
)
from strathelpers import flatten, global_arrays, make_population, population_grid, train_reply

from fedstrat.strategies import StratifiedSelection
from fedstrat.strategies.inner_aggregate import mean_aggregate


class OwnAggregate(FedAvg):
    """FedAvg with its own aggregate_train (the same rule): the wrapper must rewrite replies."""

    def aggregate_train(self, server_round, replies):
        return super().aggregate_train(server_round, replies)


def run_rounds(inner, pop, dtype, rounds=3, overrides=None):
    grid = population_grid(pop, overrides=overrides)
    s = StratifiedSelection(inner, clients_per_round=8, seed=3, profiling="query",
                            design="srswor")  # HT weights with W != 1
    arrays = global_arrays(6, dtype=dtype)
    out = []
    for r in range(1, rounds + 1):
        msgs = list(s.configure_train(r, arrays, ConfigRecord(), grid))
        new, _ = s.aggregate_train(r, list(grid.send_and_receive(msgs, timeout=5)))
        out.append((new, s.records[-1]))
        arrays = new
    return out


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_fedavg_mean_corrected_equals_the_rewritten_replies(dtype):
    pop = make_population(n=30, classes=4, dim=6, alpha=0.2, seed=4)
    fast = run_rounds(FedAvg(fraction_evaluate=0.0), pop, dtype)
    slow = run_rounds(OwnAggregate(fraction_evaluate=0.0), pop, dtype)
    tol = 1e-12 if dtype == np.float64 else 2e-6
    for (a, ra), (b, rb) in zip(fast, slow, strict=True):
        assert ra.selected == rb.selected and ra.weights == rb.weights
        assert abs(sum(ra.weights) - 1.0) > 1e-3  # W != 1: the correction is not trivial
        assert a["w"].dtype == b["w"].dtype == np.dtype(dtype).name
        np.testing.assert_allclose(flatten(a), flatten(b), rtol=0, atol=tol)


def test_a_screened_out_reply_leaves_w_of_the_kept_ones():
    """A reply the magnitude screen rejects is not in W = sum_i w_i of the correction."""
    pop = make_population(n=12, classes=3, dim=6, seed=2)
    bad = {}

    def huge(msg, new):
        new = {k: np.asarray(v, dtype=np.float64).copy() for k, v in new.items()}
        new["w"][0] = 1e30
        return train_reply(msg, new, {"num-examples": 10, "train-loss": 1.0})

    bad[pop.node_ids[0]] = bad[pop.node_ids[5]] = huge
    fast = run_rounds(FedAvg(fraction_evaluate=0.0), pop, np.float64, 2, overrides=bad)
    slow = run_rounds(OwnAggregate(fraction_evaluate=0.0), pop, np.float64, 2, overrides=bad)
    assert any(r.rejected for _, r in fast)
    for (a, _), (b, _) in zip(fast, slow, strict=True):
        np.testing.assert_allclose(flatten(a), flatten(b), rtol=0, atol=1e-12)
        assert np.all(np.abs(flatten(a)) < 1e3)


def test_replies_reach_fedavg_with_their_own_arrays():
    pop = make_population(n=20, classes=4, dim=6, seed=1)
    grid = population_grid(pop)
    inner = FedAvg(fraction_evaluate=0.0)
    seen = []

    def spy(server_round, replies):
        seen.extend(replies)
        return FedAvg.aggregate_train(inner, server_round, replies)

    inner.aggregate_train = spy  # the class's aggregate is still FedAvg's
    s = StratifiedSelection(inner, clients_per_round=6, seed=0, profiling="query",
                            design="srswor")
    arrays = global_arrays(6)
    msgs = list(s.configure_train(1, arrays, ConfigRecord(), grid))
    replies = list(grid.send_and_receive(msgs, timeout=5))
    s.aggregate_train(1, replies)
    sent = {r.metadata.src_node_id: flatten(r.content["arrays"]) for r in replies}
    rec = s.records[-1]
    assert len(seen) == len(rec.responders) == 6
    for msg, node, w in zip(seen, rec.responders, rec.weights, strict=True):
        assert np.array_equal(flatten(msg.content["arrays"]), sent[node])
        assert msg.content["metrics"]["num-examples"] == w


def test_only_fedavgs_own_aggregate_takes_the_affine_path():
    assert mean_aggregate(FedAvg()) and mean_aggregate(FedProx(proximal_mu=0.1))
    assert not mean_aggregate(OwnAggregate())
    assert not mean_aggregate(FedAdam()) and not mean_aggregate(FedYogi())
    dp = DifferentialPrivacyServerSideFixedClipping(FedAvg(), noise_multiplier=0.0,
                                                    clipping_norm=1.0, num_sampled_clients=4)
    assert not mean_aggregate(dp)
