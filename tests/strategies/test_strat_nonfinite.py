"""NaN / Inf replies: StratifiedSelection checks finiteness in its one pass over the updates
(triage_replies(check_finite=False)), with the reasons and the precedence of the triage."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ConfigRecord
from flwr.serverapp.strategy import FedAvg
from strathelpers import flatten, global_arrays, make_population, population_grid, train_reply

from fedstrat.strategies import StratifiedSelection
from fedstrat.strategies.triage import triage_replies


def _setup(dtype: type, n: int = 8):
    pop = make_population(n=n, classes=3, dim=6, seed=3)
    grid = population_grid(pop)
    s = StratifiedSelection(FedAvg(fraction_evaluate=0.0), clients_per_round=n, seed=1,
                            profiling="query")
    arrays = global_arrays(6, dtype=dtype)
    msgs = list(s.configure_train(1, arrays, ConfigRecord(), grid))
    replies = list(grid.send_and_receive(msgs, timeout=5))
    return s, msgs, replies


def _spoil(reply, msg, key: str, value: float):
    """``reply`` (to instruction ``msg``) again, with ``value`` as the last entry of ``key``."""
    rec = reply.content["arrays"]
    new = {k: rec[k].numpy().copy() for k in rec.keys()}
    new[key].flat[-1] = value
    return train_reply(msg, new, dict(reply.content["metrics"]))


def _to(msgs, reply):
    return next(m for m in msgs if m.metadata.dst_node_id == reply.metadata.src_node_id)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_nonfinite_replies_rejected_with_the_triage_reason(dtype):
    s, msgs, replies = _setup(dtype)
    bad = {replies[0].metadata.src_node_id: ("w", np.nan),
           replies[1].metadata.src_node_id: ("b", np.inf),
           replies[2].metadata.src_node_id: ("w", -np.inf)}
    sent = [_spoil(r, _to(msgs, r), *bad[r.metadata.src_node_id])
            if r.metadata.src_node_id in bad else r for r in replies]
    new, _ = s.aggregate_train(1, sent)
    rec = s.records[-1]
    reasons = {e.node: e.reason for e in rec.rejected}
    for node, (key, _) in bad.items():
        assert reasons[node] == f"array '{key}' contains NaN or Inf"
        assert node not in rec.responders
    assert len(rec.responders) == len(replies) - 3
    assert np.all(np.isfinite(flatten(new)))


def test_nan_before_a_claim_mismatch_and_duplicates():
    s, msgs, replies = _setup(np.float32)
    plan = s.pending_plan
    a, b, c = replies[0], replies[1], replies[2]
    # a: NaN reply, then a good duplicate -> the good one counts (the NaN one is rejected)
    # b: good reply, then a NaN duplicate -> the NaN one is rejected for NaN, not as duplicate
    # c: NaN reply whose weight metric also disagrees with the learned size -> NaN named
    c_bad = _spoil(c, _to(msgs, c), "w", np.nan)
    c_bad.content["metrics"]["num-examples"] = 1
    a_again = _spoil(a, _to(msgs, a), "w", float(a.content["arrays"]["w"].numpy().flat[-1]))
    sent = [_spoil(a, _to(msgs, a), "w", np.nan), b, _spoil(b, _to(msgs, b), "b", np.nan),
            c_bad, a_again] + replies[3:]
    for finite_here in (True, False):
        t = triage_replies(sent, plan, "num-examples", s.registry, check_finite=finite_here)
        valid = [v.node_id for v in t.valid]
        reasons = [(e.node, e.reason) for e in t.rejected]
        na, nb, nc = (r.metadata.src_node_id for r in (a, b, c))
        assert valid.count(na) == 1 and valid.count(nb) == 1 and nc not in valid
        assert sorted(reasons) == sorted([(na, "array 'w' contains NaN or Inf"),
                                          (nb, "array 'b' contains NaN or Inf"),
                                          (nc, "array 'w' contains NaN or Inf")])
        assert np.isfinite(next(v for v in t.valid if v.node_id == na).arrays["w"]).all()
