"""The HT and ratio estimates through FedAvg without a pass per reply (fedstrat.strategies
.inner_aggregate): from the weighted update sums of the reply screen's pass, or as one affine
pass over FedAvg's mean; the same aggregate as the per-reply rewrite, used only where the
wrapped aggregate is FedAvg's weighted mean."""

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
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords
from strathelpers import flatten, global_arrays, make_population, population_grid, train_reply

from fedstrat.strategies import StratifiedSelection
from fedstrat.strategies.inner_aggregate import mean_aggregate


class OwnAggregate(FedAvg):
    """FedAvg with its own aggregate_train (the same rule): the wrapper must rewrite replies."""

    def aggregate_train(self, server_round, replies):
        return super().aggregate_train(server_round, replies)


def run_rounds(inner, pop, dtype, rounds=3, overrides=None, estimator="ht", with_int=False):
    grid = population_grid(pop, overrides=overrides)
    s = StratifiedSelection(inner, clients_per_round=8, seed=3, profiling="query",
                            design="srswor", estimator=estimator)  # HT weights with W != 1
    arrays = global_arrays(6, dtype=dtype, with_int=with_int)
    out = []
    for r in range(1, rounds + 1):
        msgs = list(s.configure_train(r, arrays, ConfigRecord(), grid))
        new, _ = s.aggregate_train(r, list(grid.send_and_receive(msgs, timeout=5)))
        out.append((new, s.records[-1]))
        arrays = new
    return out


@pytest.mark.parametrize("estimator", ["ht", "ratio"])
@pytest.mark.parametrize("with_int", [False, True])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_fedavg_fast_path_equals_the_rewritten_replies(dtype, with_int, estimator):
    pop = make_population(n=30, classes=4, dim=6, alpha=0.2, seed=4)
    kw = {"estimator": estimator, "with_int": with_int}
    fast = run_rounds(FedAvg(fraction_evaluate=0.0), pop, dtype, **kw)
    slow = run_rounds(OwnAggregate(fraction_evaluate=0.0), pop, dtype, **kw)
    tol = 1e-12 if dtype == np.float64 else 2e-6
    # W != 1 in some round: the HT correction (ratio: the 1 / W) is not trivial
    assert any(abs(sum(r.weights) - 1.0) > 1e-3 for _, r in fast)
    for (a, ra), (b, rb) in zip(fast, slow, strict=True):
        assert ra.selected == rb.selected and ra.weights == rb.weights
        assert list(a.keys()) == list(b.keys())  # the global arrays' order
        assert a["w"].dtype == b["w"].dtype == np.dtype(dtype).name
        np.testing.assert_allclose(flatten(a), flatten(b), rtol=0, atol=tol)
        if with_int:  # FedAvg's own mean of the integer buffer, on both paths
            assert a["steps"].dtype == b["steps"].dtype
            np.testing.assert_allclose(a["steps"].numpy(), b["steps"].numpy(), rtol=1e-12)


def test_replies_in_another_dtype_than_the_global_arrays_give_the_same_aggregate():
    """float64 replies to a float32 model: no weighted sums in the pass (FedAvg's mean would
    not be float32), the affine path instead; the same aggregate as the rewrite."""
    pop = make_population(n=20, classes=4, dim=6, seed=5)
    wide = {n: (lambda msg, new: train_reply(
        msg, {k: np.asarray(v, dtype=np.float64) for k, v in new.items()},
        {"num-examples": 50, "train-loss": 1.0})) for n in pop.node_ids[::2]}
    fast = run_rounds(FedAvg(fraction_evaluate=0.0), pop, np.float32, 2, overrides=wide)
    slow = run_rounds(OwnAggregate(fraction_evaluate=0.0), pop, np.float32, 2, overrides=wide)
    for (a, _), (b, _) in zip(fast, slow, strict=True):
        np.testing.assert_allclose(flatten(a), flatten(b), rtol=0, atol=2e-6)


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


def test_fedavg_gets_the_weights_and_other_arrays_not_the_summed_ones():
    """Summed in the screen's pass, the floating arrays do not reach FedAvg; it aggregates the
    metrics with weights w_i and the integer buffer."""
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
    arrays = global_arrays(6, with_int=True)
    msgs = list(s.configure_train(1, arrays, ConfigRecord(), grid))
    replies = list(grid.send_and_receive(msgs, timeout=5))
    new, metrics = s.aggregate_train(1, replies)
    rec = s.records[-1]
    assert len(seen) == len(rec.responders) == 6
    for msg, w in zip(seen, rec.weights, strict=True):
        assert list(msg.content["arrays"].keys()) == ["steps"]
        assert msg.content["metrics"]["num-examples"] == w
    loss = {r.metadata.src_node_id: r.content["metrics"]["train-loss"] for r in replies}
    expected = sum(w * loss[n] for n, w in zip(rec.responders, rec.weights, strict=True))
    assert metrics["train-loss"] == pytest.approx(expected / sum(rec.weights), rel=1e-12)
    assert list(new.keys()) == ["w", "b", "steps"]


def _metrics_of_rounds(inner, pop, rounds=3):
    grid = population_grid(pop)
    s = StratifiedSelection(inner, clients_per_round=6, seed=0, profiling="query",
                            design="srswor")
    arrays, out = global_arrays(6), []
    for r in range(1, rounds + 1):
        msgs = list(s.configure_train(r, arrays, ConfigRecord(), grid))
        arrays, metrics = s.aggregate_train(r, list(grid.send_and_receive(msgs, timeout=5)))
        out.append(dict(metrics))
    return out


def test_without_other_arrays_the_metrics_are_fedavgs_own_with_its_aggregation_function():
    """Every array summed in the screen's pass: FedAvg's aggregate would average no array, so
    the wrapper calls its ``train_metrics_aggr_fn`` on the replies itself. The metrics equal
    those of FedAvg's own aggregate of the same replies, a custom aggregation function is the
    one used, and an ``aggregate_train`` set on the instance still gets the replies."""
    pop = make_population(n=20, classes=4, dim=6, seed=1)
    calls = []

    def aggr(records, key):
        calls.append(len(records))
        return aggregate_metricrecords(records, key)

    fast = _metrics_of_rounds(FedAvg(fraction_evaluate=0.0, train_metrics_aggr_fn=aggr), pop)
    slow = _metrics_of_rounds(OwnAggregate(fraction_evaluate=0.0), pop)
    assert calls == [6, 6, 6]
    for a, b in zip(fast, slow, strict=True):
        assert a.keys() == b.keys() and "train-loss" in a
        for k in a:
            assert a[k] == pytest.approx(b[k], rel=1e-12)
    inner, seen = FedAvg(fraction_evaluate=0.0), []

    def spy(server_round, replies):
        seen.append(len(replies))
        return FedAvg.aggregate_train(inner, server_round, replies)

    inner.aggregate_train = spy
    spied = _metrics_of_rounds(inner, pop)
    assert seen == [6, 6, 6]
    assert [m["train-loss"] for m in spied] == pytest.approx([m["train-loss"] for m in slow])


def test_only_fedavgs_own_aggregate_takes_the_affine_path():
    assert mean_aggregate(FedAvg()) and mean_aggregate(FedProx(proximal_mu=0.1))
    assert not mean_aggregate(OwnAggregate())
    assert not mean_aggregate(FedAdam()) and not mean_aggregate(FedYogi())
    dp = DifferentialPrivacyServerSideFixedClipping(FedAvg(), noise_multiplier=0.0,
                                                    clipping_norm=1.0, num_sampled_clients=4)
    assert not mean_aggregate(dp)
