"""Hostile and careless replies, part by part: size claims (consistency, learned once, the cap),
values that would overflow the aggregate, and records the wrapped strategy would find
inconsistent (issue 13)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.exception import InconsistentMessageReplies
from flwr.serverapp.strategy import FedAvg
from strathelpers import global_arrays, make_population, population_grid, train_reply

from fedstrat.sampling import privatize_histogram
from fedstrat.strategies import StratifiedSelection
from fedstrat.strategies.local_grid import LocalGrid
from fedstrat.strategies.node_registry import NodeRegistry
from fedstrat.strategies.reply_screen import (
    consistent_contents,
    consistent_replies,
    screen_magnitudes,
)
from fedstrat.strategies.rewrite import flat_deltas
from fedstrat.strategies.triage import triage_replies
from fedstrat.strategies.weight_cap import (
    FirstClaims,
    SizeRules,
    histogram_allowance,
    profile_mismatch,
    size_cap_value,
)


# ---------------------------------------------------------------- profile consistency
def test_exact_profile_must_match_its_histogram():
    rules = SizeRules()
    assert profile_mismatch(100, [60.0, 40.0], rules) is None
    assert profile_mismatch(101, [60.0, 40.0], rules) is None  # within 10% + rounding
    reason = profile_mismatch(1e12, [60.0, 40.0], rules)
    assert reason is not None and "disagrees with its label histogram" in reason


def test_ldp_histograms_pass_the_check_a_size_lie_does_not():
    counts = np.array([30, 0, 5, 0, 0, 12, 0, 0, 1, 2])
    for eps in (0.1, 0.5, 1.0, 4.0):
        rules = SizeRules(epsilon=eps)
        for seed in range(200):
            noisy = privatize_histogram(counts, eps, np.random.default_rng(seed))
            hist = np.clip(noisy, 0, None).astype(float).tolist()
            assert profile_mismatch(int(counts.sum()), hist, rules) is None, (eps, seed)
        assert profile_mismatch(1e12, counts.astype(float).tolist(), rules) is not None
    assert histogram_allowance(0.0, 10) == 5.0
    assert histogram_allowance(1.0, 10) > histogram_allowance(4.0, 10) > 5.0


def test_registry_refuses_an_inconsistent_profile_and_learns_sizes_once():
    reg = NodeRegistry()
    assert reg.set_profile(1, 100, [50.0, 50.0]) is None
    reason = reg.set_profile(2, 1e12, [50.0, 50.0])
    assert reason is not None and "disagrees" in reason
    assert reg.known(2) and 2 not in reg.histograms and reg.profile_failed[2] == reason
    # node 2 was refused: its first training claim is learned, later ones are only checked
    reg.observe_train(2, num_examples=80)
    reg.observe_train(2, num_examples=5000)
    assert reg.num_examples[2] == 80.0
    assert reg.claim_problem(2, 5000) is not None
    assert reg.claim_problem(2, 84) is None  # 5% off: within tolerance
    assert reg.claim_problem(1, 100) is None and reg.claim_problem(1, 1e12) is not None
    assert reg.claim_problem(3, 1e12) is None  # nothing learned yet
    # a profiled node's size is not compared with another weight metric (other units)
    assert reg.claim_problem(1, 0.5, "weight") is None


# ---------------------------------------------------------------- the cap
def test_cap_is_a_multiple_of_the_median_and_binds_only_on_outliers():
    reg = NodeRegistry(SizeRules(cap_multiple=10.0))
    sizes = [20.0, 35.0, 50.0, 64.0, 90.0, 120.0, 150.0]
    for node, n in enumerate(sizes):
        reg.observe_train(node, num_examples=n)
    nodes = list(range(len(sizes)))
    # honest sizes: no cap binds, sizes are exactly the learned ones
    assert reg.sizes(nodes).tolist() == sizes
    assert not reg.cap_effect(nodes).binding
    reg.observe_train(99, num_examples=1e12)
    cap = 10.0 * float(np.median(sizes + [1e12]))
    assert reg.size_cap() == cap == size_cap_value(sizes + [1e12], 10.0)
    got = reg.sizes(nodes + [99, 1234])  # 1234 unknown: mean of the capped known sizes
    assert got[:-2].tolist() == sizes and got[-2] == cap
    assert got[-1] == pytest.approx(np.mean(sizes + [cap]))
    eff = reg.cap_effect(nodes + [99])
    assert eff.binding and eff.nodes == [99] and eff.claimed == [1e12]
    assert eff.removed == pytest.approx((1e12 - cap) / (sum(sizes) + 1e12))
    assert eff.to_json()["cap"] == cap
    # no cap
    off = NodeRegistry(SizeRules(cap_multiple=0.0))
    off.observe_train(1, num_examples=1e12)
    assert math.isinf(off.size_cap()) and off.sizes([1]).tolist() == [1e12]
    assert off.cap_effect([1]).to_json()["cap"] is None


# ---------------------------------------------------------------- triage and screens
def configured(n=12, m=6, dtype=np.float64, overrides=None, **kw):
    pop = make_population(n=n, classes=3, dim=6, seed=2)
    grid = population_grid(pop, overrides=overrides)
    s = StratifiedSelection(FedAvg(fraction_evaluate=0.0), clients_per_round=m, seed=1, **kw)
    arrays = global_arrays(6, dtype=dtype)
    msgs = list(s.configure_train(1, arrays, ConfigRecord(), grid))
    return s, pop, grid, msgs, arrays


def test_triage_rejects_a_claim_that_disagrees_with_the_learned_size():
    s, pop, grid, msgs, _ = configured()
    plan = s.pending_plan
    replies = list(grid.send_and_receive(msgs))
    liar = plan.selected[0]
    reg = NodeRegistry()
    for node in plan.selected:
        reg.observe_train(node, num_examples=float(pop.sizes[pop.index[node]]))
    reg.num_examples[liar] = 7.0  # learned: 7; the reply claims the population size
    t = triage_replies(replies, plan, "num-examples", reg)
    assert [p.node for p in t.rejected] == [liar] and "learned size" in t.rejected[0].reason
    assert liar not in [v.node_id for v in t.valid]
    assert len(triage_replies(replies, plan, "num-examples").valid) == len(plan.selected)


def _huge(value, dtype):
    def behave(msg, new):
        new = {k: np.asarray(v).copy() for k, v in new.items()}
        new["w"] = new["w"].astype(dtype)
        new["w"][0] = value
        return train_reply(msg, new, {"num-examples": 10, "train-loss": 1.0})

    return behave


@pytest.mark.parametrize("value,dtype", [(3e38, np.float32), (1.7e308, np.float64),
                                         (-1e200, np.float64)])
def test_values_that_would_overflow_are_rejected_with_a_reason(value, dtype):
    overrides = {}
    s, pop, grid, msgs, arrays = configured(dtype=dtype, overrides=overrides)
    plan = s.pending_plan
    bad = plan.selected[1]
    overrides[bad] = _huge(value, dtype)
    replies = list(grid.send_and_receive(msgs))
    valid = triage_replies(replies, plan, "num-examples").valid
    assert bad in [v.node_id for v in valid]  # finite: passes validation
    g = {k: a.numpy() for k, a in arrays.items()}
    out = screen_magnitudes(plan, valid, g, flat_deltas(valid, g))
    assert [p.node for p in out.rejected] == [bad]
    assert "too large" in out.rejected[0].reason or "overflow" in out.rejected[0].reason
    assert bad not in [v.node_id for v in out.valid] and len(out.valid) == len(valid) - 1
    assert out.deltas.shape[0] == len(out.valid) and np.isfinite(out.deltas).all()
    assert len(out.weights) == len(out.valid)


def test_honest_replies_pass_the_magnitude_screen_untouched():
    s, pop, grid, msgs, arrays = configured(dtype=np.float32)
    plan = s.pending_plan
    valid = triage_replies(list(grid.send_and_receive(msgs)), plan, "num-examples").valid
    g = {k: a.numpy() for k, a in arrays.items()}
    deltas = flat_deltas(valid, g)
    out = screen_magnitudes(plan, valid, g, deltas)
    assert out.rejected == [] and out.valid is valid and out.deltas is deltas


def _msg(arrays_name="arrays", metrics_name="metrics", **metrics):
    rec = ArrayRecord({"w": Array(np.zeros(2))})
    return Message(RecordDict({arrays_name: rec, metrics_name: MetricRecord(metrics)}),
                   dst_node_id=5, message_type="train")


def test_consistent_replies_drop_odd_metrics_and_rename_records():
    base = {"num-examples": 1.0, "train-loss": 0.5}
    same = [_msg(**base), _msg(**base)]
    out, notes = consistent_replies(same, "num-examples")
    assert out is same and notes == []
    odd = [_msg(**base), _msg(**base, extra=3.0), _msg(**{**base, "train-loss": [1.0, 2.0]}),
           _msg("model", "stats", **base)]
    out, notes = consistent_replies(odd, "num-examples")
    assert len(out) == 4 and len(notes) == 2
    for m in out:
        assert list(m.content.array_records) == ["arrays"]
        assert list(m.content.metric_records) == ["metrics"]
        assert set(m.content["metrics"]) == {"num-examples"}
    assert "extra" in notes[1] and "train-loss" in notes[1] and "renamed" in notes[0]
    # the wrapped strategy now aggregates them without InconsistentMessageReplies
    arrays, metrics = FedAvg().aggregate_train(1, out)
    assert arrays is not None


def test_consistent_contents_are_those_of_consistent_replies():
    base = {"num-examples": 1.0, "train-loss": 0.5}
    same = [_msg(**base), _msg(**base)]
    contents = [m.content for m in same]
    out, notes = consistent_contents(contents, "num-examples")
    assert out is contents and notes == []
    odd = [_msg(**base), _msg(**base, extra=3.0), _msg("model", "stats", **base)]
    got, got_notes = consistent_contents([m.content for m in odd], "num-examples")
    want, want_notes = consistent_replies(odd, "num-examples")
    assert got_notes == want_notes and len(got) == len(want)
    for c, m in zip(got, want, strict=True):
        assert list(c.keys()) == list(m.content.keys())
        assert dict(c["metrics"]) == dict(m.content["metrics"])
        assert c["arrays"] is m.content["arrays"]


def test_evaluation_replies_that_differ_or_lie_cannot_stop_aggregate_evaluate():
    pop = make_population(n=12, classes=3, dim=6, seed=2)
    s = StratifiedSelection(FedAvg(fraction_evaluate=1.0), clients_per_round=6, seed=1)
    odd = {pop.node_ids[0]: {"eval-loss": 1.0, "extra": 2.0},  # extra metric
           pop.node_ids[1]: {"eval-loss": 1.0, "num-examples": -3},  # negative weight
           pop.node_ids[2]: {"eval-loss": 1.0, "num-examples": [1, 2]}}  # list weight

    def handler(msg):
        node = msg.metadata.dst_node_id
        metrics = {"num-examples": 10, "eval-loss": 0.5}
        metrics.update(odd.get(node, {}))
        return Message(RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)

    grid = LocalGrid(list(pop.node_ids), handler)
    msgs = list(s.configure_evaluate(1, global_arrays(6), ConfigRecord(), grid))
    replies = list(grid.send_and_receive(msgs))
    with pytest.raises(InconsistentMessageReplies):
        FedAvg().aggregate_evaluate(1, replies)  # what the wrapped strategy alone does
    metrics = s.aggregate_evaluate(1, replies)
    assert set(metrics) == {"eval-loss"}
    # node 0 (extra metric) counts, with eval-loss 1.0; nodes 1 and 2 are left out
    n_ok = len(replies) - 2
    assert metrics["eval-loss"] == pytest.approx((0.5 * (n_ok - 1) + 1.0) / n_ok)


def test_a_first_size_claim_is_capped_by_the_median_of_the_rounds_claims():
    # no profiling: round 1 (FedAvg's weights from the replies' claims) meets a node claiming
    # 1e12 examples; it weighs as 20 x the median claim at most, and is learned as claimed
    pop = make_population(n=12, dim=6, seed=4)
    liar = pop.node_ids[3]

    def lie(msg, new):
        return train_reply(msg, new, {"num-examples": 1e12})

    grid = population_grid(pop, profile=False, overrides={liar: lie})
    s = StratifiedSelection(FedAvg(fraction_evaluate=0.0), clients_per_round=12, seed=0)
    msgs = list(s.configure_train(1, global_arrays(6), ConfigRecord(), grid))
    s.aggregate_train(1, grid.send_and_receive(msgs, timeout=5))
    rec = s.records[0]
    w = dict(zip(rec.responders, rec.weights, strict=True))
    honest = np.array([pop.sizes[pop.index[n]] for n in rec.responders if n != liar], float)
    cap = size_cap_value(list(honest) + [1e12], 20.0)
    assert w[liar] / sum(w.values()) == pytest.approx(cap / (cap + honest.sum()), rel=1e-12)
    assert w[liar] / sum(w.values()) < 0.7 and s.registry.num_examples[liar] == 1e12


def test_first_claims_need_a_median_that_one_liar_cannot_set():
    claims = FirstClaims(frozenset({1, 2, 3}), fill=50.0, learned=(), cap_multiple=20.0)
    assert list(claims.factors([1, 2], [40.0, 1e12])) == [1.0, 1.0]  # two sizes: fill kept
    f = claims.factors([1, 2, 3, 9], [40.0, 1e12, 60.0, 7.0])  # node 9's size was known
    assert list(f) == [40.0 / 50.0, 20.0 * 60.0 / 50.0, 60.0 / 50.0, 1.0]


def test_a_crashed_node_is_one_line_in_the_log_and_the_record(caplog):
    # Ray hands back the whole coloured traceback as the error reason; Flower logs it already
    pop = make_population(n=6, dim=6, seed=5)
    crash = pop.node_ids[2]

    def boom(msg, new):
        raise RuntimeError("\x1b[36mray::ClientAppActor.run()\x1b[39m (pid=1)\n"
                           '  File "app.py", line 3, in train\n'
                           "Exception ClientAppException occurred. Message: disk full'>")

    grid = population_grid(pop, profile=False, overrides={crash: boom})
    s = StratifiedSelection(FedAvg(fraction_evaluate=0.0), clients_per_round=6, seed=0)
    msgs = list(s.configure_train(1, global_arrays(6), ConfigRecord(), grid))
    with caplog.at_level("WARNING", logger="flwr"):
        s.aggregate_train(1, grid.send_and_receive(msgs, timeout=5))
    (failed,) = s.records[0].failures
    assert failed.node == crash and failed.reason.endswith(
        "Exception ClientAppException occurred. Message: disk full")
    assert "\n" not in failed.reason and "\x1b" not in failed.reason
    assert all("\n" not in r.getMessage() and "\x1b" not in r.getMessage()
               for r in caplog.records if str(crash) in r.getMessage())
