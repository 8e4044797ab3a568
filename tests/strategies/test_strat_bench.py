"""Nodes that sit out after unusable replies: the schedule, and what it does to a run."""

from __future__ import annotations

import numpy as np
from flwr.app import ConfigRecord
from flwr.serverapp.strategy import FedAvg
from strathelpers import global_arrays, make_population, population_grid, train_reply

from fedstrat.strategies import StratifiedSelection
from fedstrat.strategies.bench import BENCH_MAX, FIRST_REJECTED, Bench


def test_sit_outs_double_with_unusable_replies_in_a_row_and_end_with_a_usable_one():
    b = Bench()
    lengths = [b.record(r, [], [7])[0][1] for r in (1, 20, 60, 130, 200)]
    assert lengths == [FIRST_REJECTED, 2 * FIRST_REJECTED, 4 * FIRST_REJECTED, BENCH_MAX,
                       BENCH_MAX]
    # a failed reply (error, silence) is forgiven once, then 1, 2, 4, ... rounds
    assert b.record(1, [], [], [8]) == [] and 8 not in b.out(2)
    assert [b.record(r, [], [], [8])[0][1] for r in (2, 4, 7)] == [1, 2, 4]
    assert 8 in b.out(8) and 8 in b.out(11) and 8 not in b.out(12)
    b.record(12, [8], [])  # a usable reply: no strike left
    assert b.record(13, [], [], [8]) == [] and b.record(14, [], [], [8]) == [(8, 1, 2)]
    assert Bench.from_state(b.state_dict()) == b


def _nan_reply(msg, new):
    new = {k: np.full_like(v, np.nan) if v.dtype.kind == "f" else v for k, v in new.items()}
    return train_reply(msg, new, {"num-examples": 10})


def test_a_stratum_that_never_answers_usably_no_longer_holds_decisions_at_the_proxy():
    # 15 of 40 nodes (those with most labels of class 0) answer NaN: without sitting out,
    # their strata took a slot every round and, with no tracked update ever, kept every
    # decision on the label-histogram proxy for all 20 rounds
    pop = make_population(n=40, classes=4, dim=6, alpha=0.05, seed=3)
    broken = {n for n, d in zip(pop.node_ids, pop.props.argmax(axis=1), strict=True) if d == 0}
    grid = population_grid(pop, overrides=dict.fromkeys(broken, _nan_reply))
    s = StratifiedSelection(FedAvg(fraction_evaluate=0.0), clients_per_round=8, seed=0,
                            profiling="query")
    arrays = global_arrays(6)
    for r in range(1, 21):
        msgs = list(s.configure_train(r, arrays, ConfigRecord(), grid))
        arrays, metrics = s.aggregate_train(r, grid.send_and_receive(msgs, timeout=5))
        rec = s.records[-1]
        assert not set(rec.selected) & set(rec.benched or [])  # sitting out: not drawn
        assert metrics["fedstrat-n-benched"] == len(rec.benched or [])
        assert np.isfinite(np.concatenate([a.numpy().ravel() for a in arrays.values()])).all()
    tracked = [r.round for r in s.records if r.decision and r.decision.evidence == "tracked"]
    assert tracked, [r.decision.reason for r in s.records]
    assert all(set(r.benched or []) <= broken for r in s.records)  # honest nodes never sit out
    wasted = sum(len(r.rejected) for r in s.records)
    assert wasted < 2 * 20  # 2-3 a round without sitting out
    # the checkpoint carries who sits out until when
    again = StratifiedSelection(FedAvg(fraction_evaluate=0.0), clients_per_round=8, seed=0,
                                profiling="query")
    again.load_state_dict(s.state_dict())
    assert again.bench == s.bench and again.bench.out(21) == s.bench.out(21)
