"""Reply triage, the pure reply rewrite, observation and the round record, on hand-built
rounds (LocalGrid messages, no Flower run)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from flwr.app import ConfigRecord, Error, Message, MessageType, RecordDict
from flwr.serverapp.strategy import FedAvg
from strathelpers import flatten, global_arrays, make_population, population_grid, train_reply

from fedstrat.strategies import RoundRecord, StratifiedSelection
from fedstrat.strategies.array_codec import decode_array
from fedstrat.strategies.node_registry import NodeRegistry
from fedstrat.strategies.observation import observe_replies
from fedstrat.strategies.record import jsonl_appender
from fedstrat.strategies.rewrite import flat_deltas, rewrite_replies, rewritten_contents
from fedstrat.strategies.triage import ReplyProblem, reply_weights, triage_replies

#: the sampling.jsonl keys of the version before the split, in their order
OLD_KEYS = [
    "round", "selection", "design", "design_reason", "estimator", "allocation_rule",
    "n_available", "selected", "selection_weights", "inclusion", "selected_strata",
    "responders", "weights", "rejected", "failures", "notes", "strata", "N_h", "P_h", "m_h",
    "S_h", "pred_var", "pred_var_uniform", "var_ratio",
]


def configured(n=12, m=6, with_int=False, **kw):
    pop = make_population(n=n, classes=3, dim=6, seed=2)
    grid = population_grid(pop)
    s = StratifiedSelection(FedAvg(fraction_evaluate=0.0), clients_per_round=m, seed=1, **kw,
                            profiling="query")
    arrays = global_arrays(6, with_int=with_int)
    msgs = list(s.configure_train(1, arrays, ConfigRecord(), grid))
    replies = list(grid.send_and_receive(msgs))
    return s, s.pending_plan, msgs, replies, arrays


# ---------------------------------------------------------------- triage
def test_triage_accepts_one_valid_reply_per_selected_node():
    s, plan, _, replies, _ = configured()
    t = triage_replies(replies + [replies[0]], plan, "num-examples")
    assert sorted(v.node_id for v in t.valid) == sorted(plan.selected)
    assert t.rejected == [ReplyProblem(replies[0].metadata.src_node_id, "duplicate reply")]
    assert t.failures == []


def test_triage_rejects_strangers_and_counts_silent_nodes_as_failures():
    s, plan, msgs, replies, _ = configured()
    stranger = Message(RecordDict(), dst_node_id=999, message_type=MessageType.TRAIN)
    extra = train_reply(stranger, {"w": np.zeros(3), "b": np.zeros(3)})
    t = triage_replies(replies[1:] + [extra], plan, "num-examples")
    assert [p.node for p in t.rejected] == [999] and "not selected" in t.rejected[0].reason
    assert t.failures == [ReplyProblem(msgs[0].metadata.dst_node_id, "no reply")]


def test_triage_blames_a_superlink_error_on_the_node_that_was_asked():
    s, plan, msgs, replies, _ = configured()
    err = Message(Error(code=1, reason="Node Unavailable"), reply_to=msgs[0])
    err.metadata.__dict__["_src_node_id"] = 1
    dead = msgs[0].metadata.dst_node_id
    rest = [r for r in replies if r.metadata.src_node_id != dead]
    t = triage_replies(rest + [err], plan, "num-examples")
    assert [p.node for p in t.failures] == [dead]


def test_reply_weights_equal_selection_weights_when_everyone_answers():
    s, plan, _, replies, _ = configured()
    t = triage_replies(replies, plan, "num-examples")
    w, notes = reply_weights(plan, t.valid)
    by_node = dict(zip(plan.selected, plan.selection.weights, strict=True))
    assert w.tolist() == [by_node[v.node_id] for v in t.valid] and notes == []


# ---------------------------------------------------------------- rewrite
def test_ht_rewrite_makes_the_weighted_mean_the_ht_estimate():
    s, plan, _, replies, arrays = configured(with_int=True)
    valid = triage_replies(replies, plan, "num-examples").valid
    g = {k: decode_array(a) for k, a in arrays.items()}
    w = np.linspace(0.1, 0.6, len(valid))
    out = rewrite_replies(valid, w, g, "ht", "num-examples")
    xs = np.array([flatten(m.content["arrays"]) for m in out])
    ws = np.array([m.content["metrics"]["num-examples"] for m in out])
    xg = flatten(arrays)
    deltas = flat_deltas(valid, g)
    np.testing.assert_allclose(ws, w)
    np.testing.assert_allclose(ws @ xs / ws.sum(), xg + w @ deltas, atol=1e-12)
    for m in out:  # integer buffers are passed unchanged
        assert m.content["arrays"]["steps"].numpy().tolist() == [3]


def test_ratio_rewrite_changes_only_the_weight_and_never_the_originals():
    s, plan, _, replies, arrays = configured()
    valid = triage_replies(replies, plan, "num-examples").valid
    before = [flatten(r.content["arrays"]) for r in replies]
    g = {k: decode_array(a) for k, a in arrays.items()}
    out = rewrite_replies(valid, np.full(len(valid), 0.5), g, "ratio", "num-examples")
    for v, m in zip(valid, out, strict=True):
        np.testing.assert_array_equal(flatten(m.content["arrays"]), flatten(v.arrays))
        assert m.content["metrics"]["num-examples"] == 0.5
        assert m.content["metrics"]["train-loss"] == v.metrics["train-loss"]
    for r, b in zip(replies, before, strict=True):
        np.testing.assert_array_equal(flatten(r.content["arrays"]), b)
        assert isinstance(r.content["metrics"]["num-examples"], int)


def test_rewritten_contents_are_the_rewritten_replies_contents():
    s, plan, _, replies, arrays = configured(with_int=True)
    valid = triage_replies(replies, plan, "num-examples").valid
    g = {k: decode_array(a) for k, a in arrays.items()}
    w = np.linspace(0.1, 0.6, len(valid))
    kept = [{"steps": v.message.content[v.array_key]["steps"]} for v in valid]
    for arrays_in in (None, kept):
        got = rewritten_contents(valid, w, "num-examples", arrays_in)
        want = rewrite_replies(valid, w, g, "ratio", "num-examples", prepared=arrays_in)
        for c, m in zip(got, want, strict=True):
            assert list(c.keys()) == list(m.content.keys())
            assert dict(c["metrics"]) == dict(m.content["metrics"])
            assert list(c["arrays"].keys()) == list(m.content["arrays"].keys())
            assert all(c["arrays"][k] is m.content["arrays"][k] for k in c["arrays"])


def test_flat_deltas_skip_integer_arrays_and_empty_rounds():
    s, plan, _, replies, arrays = configured(with_int=True)
    valid = triage_replies(replies, plan, "num-examples").valid
    g = {k: decode_array(a) for k, a in arrays.items()}
    assert flat_deltas(valid, g).shape == (len(valid), 6)
    assert flat_deltas([], g) is None


# ---------------------------------------------------------------- observation
def test_observation_records_sizes_losses_sketches_and_reported_costs():
    s, plan, _, replies, arrays = configured()
    valid = triage_replies(replies, plan, "num-examples").valid
    g = {k: decode_array(a) for k, a in arrays.items()}
    reg = NodeRegistry()
    sk = observe_replies(reg, valid, flat_deltas(valid, g), plan.sent_at, 8, 0, "num-examples")
    assert sk.shape == (len(valid), 8)
    n0 = valid[0].node_id
    assert reg.num_examples[n0] == valid[0].num_examples
    assert reg.losses[n0] == valid[0].metrics["train-loss"]
    assert reg.mean_cost(n0) == valid[0].num_examples  # cost_key given: the metric's value
    np.testing.assert_allclose(reg.sketches[n0], sk[0])


# ---------------------------------------------------------------- record
def test_record_json_keeps_the_sampling_jsonl_keys_and_order():
    s, plan, _, replies, _ = configured()
    s.aggregate_train(1, replies)
    rec = s.records[-1]
    assert isinstance(rec, RoundRecord)
    assert list(rec.to_json()) == OLD_KEYS + ["S_h_basis", "decision"]
    assert set(rec.to_json()["decision"]) == {
        "mode", "evidence", "candidate", "pred_var", "pred_var_fedavg", "reason"
    }
    u, _, _, r2, _ = configured(selection="uniform")
    u.aggregate_train(1, r2)
    assert list(u.records[-1].to_json()) == OLD_KEYS  # no strata: no basis


def test_record_metrics_summarise_the_round():
    s, plan, msgs, replies, _ = configured()
    _, metrics = s.aggregate_train(1, replies[1:])
    rec = s.records[-1]
    m = rec.metrics()
    assert m["fedstrat-n-selected"] == 6 and m["fedstrat-n-responders"] == 5
    assert m["fedstrat-n-failed"] == 1 and m["fedstrat-n-rejected"] == 0
    assert m["fedstrat-weight-sum"] == pytest.approx(sum(rec.weights))
    assert m["fedstrat-n-strata"] == len(rec.m_h)
    # round 1 predicts from label proportions: recorded, but no MSE metric or ratio
    assert rec.S_h_basis == "prior" and rec.pred_var is not None and rec.var_ratio is None
    assert "fedstrat-pred-var" not in m and "fedstrat-var-ratio" not in m
    assert all(metrics[k] == v for k, v in m.items())


def test_on_record_gets_every_round_and_record_path_appends_json_lines(tmp_path):
    got = []
    pop = make_population(n=12, classes=3, dim=6, seed=2)
    grid = population_grid(pop)
    path = tmp_path / "a" / "sampling.jsonl"
    s1 = StratifiedSelection(FedAvg(fraction_evaluate=0.0), 4, seed=1, on_record=got.append,
                            profiling="query")
    s2 = StratifiedSelection(FedAvg(fraction_evaluate=0.0), 4, seed=1, record_path=path,
                            profiling="query")
    for s in (s1, s2):
        for r in (1, 2):
            msgs = list(s.configure_train(r, global_arrays(6), ConfigRecord(), grid))
            s.aggregate_train(r, grid.send_and_receive(msgs))
    assert got == s1.records and len(got) == 2
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert lines == [r.to_json() for r in got]
    p = tmp_path / "b.jsonl"
    jsonl_appender(p)(got[0])
    assert p.read_text() == json.dumps(got[0].to_json()) + "\n"
