"""Aggregation of StratifiedSelection on hand-built replies (LocalGrid, no simulation)."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Error,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp.strategy import (
    DifferentialPrivacyServerSideFixedClipping,
    FedAdam,
    FedAvg,
    FedYogi,
)
from strathelpers import (
    flatten,
    global_arrays,
    make_population,
    population_grid,
    train_reply,
)

from fedstrat.strategies import StratifiedSelection
from fedstrat.strategies.local_grid import LocalGrid


def one_round(strategy, grid, arrays, rnd=1):
    msgs = list(strategy.configure_train(rnd, arrays, ConfigRecord(), grid))
    replies = list(grid.send_and_receive(msgs, timeout=5))
    new, metrics = strategy.aggregate_train(rnd, replies)
    return msgs, replies, new, metrics


def reply_flat(reply: Message) -> np.ndarray:
    return flatten(reply.content["arrays"])


def ht_expected(replies, record, xg: np.ndarray) -> np.ndarray:
    by_node = {r.metadata.src_node_id: reply_flat(r) for r in replies if not r.has_error()}
    out = xg.copy()
    for node, w in zip(record.responders, record.weights, strict=True):
        out += w * (by_node[node] - xg)
    return out


@pytest.fixture
def pop():
    return make_population(n=40, classes=5, dim=6, alpha=0.1, seed=0)


def test_ht_weights_give_exact_estimate_through_fedavg(pop):
    grid = population_grid(pop)
    s = StratifiedSelection(FedAvg(fraction_evaluate=0.0), clients_per_round=8, seed=3,
                            profiling="query")
    arrays = global_arrays(6)
    xg = flatten(arrays)
    msgs, replies, new, metrics = one_round(s, grid, arrays)
    rec = s.records[-1]
    assert len(msgs) == 8 and len({m.metadata.dst_node_id for m in msgs}) == 8
    assert sorted(rec.responders) == sorted(rec.selected)
    # HT weights: w_i = p_i / pi_i with p_i = n_i / n over the population.
    n = pop.sizes.sum()
    for node, w, pi in zip(rec.selected, rec.selection_weights, rec.inclusion,
                           strict=True):
        assert w * pi == pytest.approx(pop.sizes[pop.index[node]] / n, rel=1e-12)
    assert rec.weights == rec.selection_weights  # nobody failed
    expected = ht_expected(replies, rec, xg)
    np.testing.assert_allclose(flatten(new), expected, rtol=0, atol=1e-12)
    assert metrics["fedstrat-n-failed"] == 0 and metrics["fedstrat-n-rejected"] == 0
    assert metrics["fedstrat-weight-sum"] == pytest.approx(sum(rec.weights))


def test_ht_is_unbiased_over_rounds_seeded_monte_carlo():
    """Mean of the aggregated update over R independent rounds (same global model) is
    within 4 standard errors of the full-participation target sum_i p_i Delta_i."""
    pop = make_population(n=30, classes=4, dim=4, alpha=0.2, seed=5)
    grid = population_grid(pop)
    s = StratifiedSelection(FedAvg(fraction_evaluate=0.0), clients_per_round=6, seed=11,
                            profiling="query")
    arrays = global_arrays(4)
    xg = flatten(arrays)
    est = []
    for r in range(1, 101):
        _, _, new, _ = one_round(s, grid, arrays, r)
        est.append(flatten(new) - xg)
    est = np.array(est)
    target = pop.target()
    se = est.std(axis=0, ddof=1) / np.sqrt(len(est))
    assert np.all(np.abs(est.mean(axis=0) - target) <= 4 * se + 1e-12)
    assert s.records[-1].design in ("pps", "srswor")


def test_ratio_estimator_is_self_normalised(pop):
    grid = population_grid(pop)
    s = StratifiedSelection(
        FedAvg(fraction_evaluate=0.0), clients_per_round=8, seed=3, estimator="ratio",
        profiling="query",
    )
    arrays = global_arrays(6)
    _, replies, new, _ = one_round(s, grid, arrays)
    rec = s.records[-1]
    by_node = {r.metadata.src_node_id: reply_flat(r) for r in replies}
    w = np.array(rec.weights)
    xs = np.array([by_node[n] for n in rec.responders])
    np.testing.assert_allclose(flatten(new), w @ xs / w.sum(), rtol=0, atol=1e-12)


@pytest.mark.parametrize("opt", [FedAdam, FedYogi])
def test_fedopt_applies_its_server_optimizer_to_the_ht_aggregate(pop, opt):
    grid = population_grid(pop)
    kw = {"fraction_evaluate": 0.0, "eta": 0.05, "tau": 1e-3}
    s = StratifiedSelection(opt(**kw), clients_per_round=8, seed=3, profiling="query")
    arrays = global_arrays(6)
    xg = flatten(arrays)
    _, replies, new, _ = one_round(s, grid, arrays)
    ht = ht_expected(replies, s.records[-1], xg)
    # Reference: the plain optimizer fed one reply carrying the HT aggregate.
    ref = opt(**kw)
    ref_grid = LocalGrid(pop.node_ids[:2], lambda m: None)
    list(ref.configure_train(1, arrays, ConfigRecord(), ref_grid))
    a = 3
    instr = Message(RecordDict(), dst_node_id=pop.node_ids[0], message_type=MessageType.TRAIN)
    one = train_reply(instr, {"w": ht[:a], "b": ht[a:]}, {"num-examples": 1})
    ref_arrays, _ = ref.aggregate_train(1, [one])
    np.testing.assert_allclose(flatten(new), flatten(ref_arrays), rtol=1e-10, atol=1e-12)
    assert not np.allclose(flatten(new), ht)  # the server optimizer did something


def test_integer_buffers_pass_unchanged_and_float32_supported(pop):
    grid = population_grid(pop)
    s = StratifiedSelection(FedAvg(fraction_evaluate=0.0), clients_per_round=8, seed=3,
                            profiling="query")
    arrays = global_arrays(6, with_int=True, dtype=np.float32)
    xg = flatten(arrays)
    _, replies, new, _ = one_round(s, grid, arrays)
    np.testing.assert_allclose(flatten(new), ht_expected(replies, s.records[-1], xg),
                               rtol=0, atol=1e-5)
    assert new["steps"].numpy().tolist() == pytest.approx([3.0])


def test_dp_wrapper_composes(pop):
    grid = population_grid(pop)
    inner = DifferentialPrivacyServerSideFixedClipping(
        FedAvg(fraction_evaluate=0.0), noise_multiplier=0.0, clipping_norm=1e6,
        num_sampled_clients=8,
    )
    s = StratifiedSelection(inner, clients_per_round=8, seed=3, profiling="query")
    arrays = global_arrays(6)
    _, replies, new, _ = one_round(s, grid, arrays)
    np.testing.assert_allclose(
        flatten(new), ht_expected(replies, s.records[-1], flatten(arrays)), atol=1e-9
    )


def _corrupt(kind):
    def behave(msg, new):
        new = dict(new)
        if kind == "nan":
            new["w"] = new["w"].copy()
            new["w"][0] = np.nan
        elif kind == "inf":
            new["b"] = new["b"].copy()
            new["b"][-1] = np.inf
        elif kind == "shape":
            new["w"] = np.zeros(new["w"].size + 1)
        elif kind == "dtype":
            new["w"] = new["w"].astype(np.complex128)  # float32 is accepted (same family)
        elif kind == "missing":
            del new["b"]
        elif kind == "extra":
            new["zzz"] = np.zeros(2)
        elif kind == "no-num-examples":
            return train_reply(msg, new, {"train-loss": 1.0})
        elif kind == "error":
            raise RuntimeError("client crashed")
        elif kind == "silent":
            return None
        return train_reply(msg, new, {"num-examples": 50, "train-loss": 1.0})

    return behave


REASONS = {
    "nan": "NaN or Inf",
    "inf": "NaN or Inf",
    "shape": "shape",
    "dtype": "dtype",
    "missing": "missing ['b']",
    "extra": "unexpected ['zzz']",
    "no-num-examples": "num-examples",
    "error": "client crashed",
    "silent": "no reply",
}


def test_invalid_replies_are_rejected_never_aggregated():
    pop = make_population(n=12, classes=3, dim=6, seed=2)
    kinds = list(REASONS)
    overrides = {}
    grid = population_grid(pop, overrides=overrides)
    s = StratifiedSelection(FedAvg(fraction_evaluate=0.0), clients_per_round=12, seed=1,
                            profiling="query")
    arrays = global_arrays(6)
    msgs = list(s.configure_train(1, arrays, ConfigRecord(), grid))
    assert len(msgs) == 12
    bad = {}
    for kind, msg in zip(kinds, msgs, strict=False):
        overrides[msg.metadata.dst_node_id] = _corrupt(kind)
        bad[msg.metadata.dst_node_id] = kind
    replies = list(grid.send_and_receive(msgs, timeout=5))
    # a reply from a node that was not selected, and a duplicate of a good reply
    stranger = Message(RecordDict(), dst_node_id=424242, message_type=MessageType.TRAIN)
    good = next(r for r in replies if r.metadata.src_node_id not in bad)
    replies += [train_reply(stranger, {"w": np.zeros(3), "b": np.zeros(3)}), good]
    new, metrics = s.aggregate_train(1, replies)
    rec = s.records[-1]
    problems = {e.node: e.reason for e in rec.rejected + rec.failures}
    for node, kind in bad.items():
        assert REASONS[kind] in problems[node], (kind, problems[node])
        assert node not in rec.responders
    assert "not selected" in problems[424242]
    assert any(e.reason == "duplicate reply" for e in rec.rejected)
    assert len(rec.responders) == 12 - len(bad)
    assert metrics["fedstrat-n-failed"] == 2  # error + silent
    assert metrics["fedstrat-n-rejected"] == len(bad) - 2 + 2  # + stranger + duplicate
    assert np.all(np.isfinite(flatten(new)))
    np.testing.assert_allclose(flatten(new), ht_expected(replies, rec, flatten(arrays)),
                               atol=1e-12)


def test_failed_nodes_reweight_their_stratum():
    pop = make_population(n=40, classes=2, dim=6, alpha=0.05, seed=4)
    overrides = {}
    grid = population_grid(pop, overrides=overrides)
    s = StratifiedSelection(FedAvg(fraction_evaluate=0.0), clients_per_round=10, seed=0,
                            design="srswor", n_strata=2, allocation="proportional",
                                                    profiling="query")
    arrays = global_arrays(6)
    msgs = list(s.configure_train(1, arrays, ConfigRecord(), grid))
    plan_sel = s.pending_plan.selection
    strata = plan_sel.strata
    h = int(np.bincount(strata).argmax())  # the stratum with more selected units
    members = [m.metadata.dst_node_id for m, st in zip(msgs, strata, strict=True) if st == h]
    assert len(members) >= 2
    overrides[members[0]] = _corrupt("error")
    replies = list(grid.send_and_receive(msgs, timeout=5))
    _, metrics = s.aggregate_train(1, replies)
    rec = s.records[-1]
    factor = len(members) / (len(members) - 1)
    sel_w = dict(zip(rec.selected, rec.selection_weights, strict=True))
    for node, w in zip(rec.responders, rec.weights, strict=True):
        expect = sel_w[node] * (factor if node in members else 1.0)
        assert w == pytest.approx(expect, rel=1e-12)
    assert metrics["fedstrat-n-failed"] == 1
    assert any("non-certainty units failed" in note for note in rec.notes)


def test_empty_stratum_share_is_redistributed():
    pop = make_population(n=40, classes=2, dim=6, alpha=0.05, seed=4)
    overrides = {}
    grid = population_grid(pop, overrides=overrides)
    s = StratifiedSelection(FedAvg(fraction_evaluate=0.0), clients_per_round=10, seed=0,
                            design="pps", n_strata=2, profiling="query")
    arrays = global_arrays(6)
    msgs = list(s.configure_train(1, arrays, ConfigRecord(), grid))
    strata = s.pending_plan.selection.strata
    dead = [m.metadata.dst_node_id for m, st in zip(msgs, strata, strict=True) if st == 0]
    for node in dead:
        overrides[node] = _corrupt("silent")
    replies = list(grid.send_and_receive(msgs, timeout=5))
    new, _ = s.aggregate_train(1, replies)
    rec = s.records[-1]
    sel_w = dict(zip(rec.selected, rec.selection_weights, strict=True))
    total = sum(sel_w.values())
    alive = sum(sel_w[n] for n in rec.responders)
    for node, w in zip(rec.responders, rec.weights, strict=True):
        assert w == pytest.approx(sel_w[node] * total / alive, rel=1e-12)
    assert sum(rec.weights) == pytest.approx(total)
    assert any("no responder" in note for note in rec.notes)
    np.testing.assert_allclose(flatten(new), ht_expected(replies, rec, flatten(arrays)),
                               atol=1e-12)


def test_no_valid_reply_returns_no_arrays_but_metrics(pop):
    grid = population_grid(pop, overrides={n: _corrupt("error") for n in pop.node_ids})
    s = StratifiedSelection(FedAvg(fraction_evaluate=0.0), clients_per_round=5, seed=0,
                            profiling="query")
    _, _, new, metrics = one_round(s, grid, global_arrays(6))
    assert new is None
    assert metrics["fedstrat-n-failed"] == 5
    assert s.records[-1].responders == []


def test_aggregate_without_configure_raises():
    s = StratifiedSelection(FedAvg(fraction_evaluate=0.0), clients_per_round=5, profiling="query")
    with pytest.raises(RuntimeError, match="without configure_train"):
        s.aggregate_train(1, [])


def test_metric_record_of_reply_keeps_other_metrics(pop):
    grid = population_grid(pop)
    s = StratifiedSelection(FedAvg(fraction_evaluate=0.0), clients_per_round=8, seed=3,
                            profiling="query")
    _, replies, _, metrics = one_round(s, grid, global_arrays(6))
    rec = s.records[-1]
    losses = {r.metadata.src_node_id: r.content["metrics"]["train-loss"] for r in replies}
    w = np.array(rec.weights)
    expected = sum(wi * losses[n] for n, wi in zip(rec.responders, w, strict=True)) / w.sum()
    assert metrics["train-loss"] == pytest.approx(expected)
    # replies handed to the wrapped strategy are copies: the originals are untouched
    for r in replies:
        assert isinstance(r.content["metrics"]["num-examples"], int)
    assert isinstance(metrics, MetricRecord)
    assert isinstance(rec.to_json(), dict) and isinstance(ArrayRecord, type)


def test_superlink_error_reply_is_attributed_to_the_node_that_was_asked():
    """Flower's SuperLink answers for an unreachable node with an error reply whose sender is
    SUPERLINK_NODE_ID (1): the failure belongs to the node the instruction was sent to."""
    pop = make_population(n=6, classes=3, dim=6, seed=2)
    grid = population_grid(pop)
    s = StratifiedSelection(FedAvg(fraction_evaluate=0.0), clients_per_round=3, seed=1,
                            profiling="query")
    msgs = list(s.configure_train(1, global_arrays(6), ConfigRecord(), grid))
    replies = list(grid.send_and_receive(msgs))
    dead = msgs[0].metadata.dst_node_id
    dead_reply = next(r for r in replies if r.metadata.src_node_id == dead)
    replies.remove(dead_reply)
    err = Message(Error(code=1, reason="Node Unavailable"), reply_to=msgs[0])
    err.metadata.__dict__["_src_node_id"] = 1  # the SuperLink, not a client node
    replies.append(err)
    s.aggregate_train(1, replies)
    rec = s.records[-1]
    assert [f.node for f in rec.failures] == [dead]
    assert dead not in rec.responders and len(rec.responders) == 2
