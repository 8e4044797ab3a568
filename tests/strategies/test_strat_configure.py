"""configure_train of StratifiedSelection: waiting, payload, profiling, fallback, baselines,
reproducibility, checkpointing (LocalGrid, no simulation)."""

from __future__ import annotations

import json
import logging
import time

import numpy as np
import pytest
from flwr.app import ConfigRecord, MessageType
from flwr.serverapp.strategy import FedAvg, FedProx
from strathelpers import flatten, global_arrays, make_population, population_grid

from fedstrat.strategies import StratifiedSelection
from fedstrat.strategies.allocation_rule import stratum_costs
from fedstrat.strategies.local_grid import LocalGrid
from fedstrat.strategies.responder_weights import responder_weights


def run(strategy, grid, arrays, rounds):
    out = []
    for r in rounds:
        msgs = list(strategy.configure_train(r, arrays, ConfigRecord(), grid))
        new, metrics = strategy.aggregate_train(r, grid.send_and_receive(msgs, timeout=5))
        out.append((msgs, new, metrics))
    return out


@pytest.fixture(scope="module")
def pop():
    return make_population(n=30, classes=4, dim=6, alpha=0.1, seed=1)


# ---------------------------------------------------------------- node wait and payload
def test_no_node_raises_after_deadline_instead_of_hanging():
    s = StratifiedSelection(FedAvg(), clients_per_round=5, node_wait_timeout=0.3,
                            poll_interval=0.05, profiling="query")
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match="No node connected"):
        s.configure_train(1, global_arrays(4), ConfigRecord(), LocalGrid([], lambda m: None))
    assert time.monotonic() - t0 < 3.0


def test_fewer_nodes_than_wanted_uses_all_with_warning(pop, caplog):
    few = make_population(n=3, seed=7)
    grid = population_grid(few)
    s = StratifiedSelection(FedAvg(min_available_nodes=50, min_train_nodes=20),
                            clients_per_round=5, node_wait_timeout=0.2, poll_interval=0.05,
                            selection="uniform", profiling="query")
    t0 = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="flwr"):
        msgs = list(s.configure_train(1, global_arrays(4), ConfigRecord(), grid))
    assert time.monotonic() - t0 < 5.0  # neither our wait nor FedAvg's sample_nodes hangs
    assert sorted(m.metadata.dst_node_id for m in msgs) == sorted(few.node_ids)
    assert any("Only 3 nodes connected" in r.getMessage() for r in caplog.records)


def test_late_nodes_are_waited_for():
    pop = make_population(n=6, seed=3)
    t0 = time.monotonic()
    grid = LocalGrid(lambda: pop.node_ids if time.monotonic() - t0 > 0.3 else pop.node_ids[:2],
                     population_grid(pop).handler)
    s = StratifiedSelection(FedAvg(), clients_per_round=4, node_wait_timeout=10,
                            poll_interval=0.05, selection="uniform", profiling="query")
    msgs = list(s.configure_train(1, global_arrays(4), ConfigRecord(), grid))
    assert len(msgs) == 4
    assert 0.25 < time.monotonic() - t0 < 5.0


def test_round_one_takes_the_population_once_it_stops_growing():
    # Flower's simulation starts the ServerApp while it is still registering the nodes (one
    # run's first read saw 6 of 20): round 1 profiles and draws from all 20, not the first 6
    pop = make_population(n=20, seed=3)
    handler, asked = population_grid(pop).handler, []

    def answer(msg):
        if msg.metadata.message_type == MessageType.QUERY:
            asked.append(msg.metadata.dst_node_id)
        return handler(msg)

    t0 = time.monotonic()
    grid = LocalGrid(lambda: pop.node_ids if time.monotonic() - t0 > 0.05 else pop.node_ids[:6],
                     answer)
    s = StratifiedSelection(FedAvg(), clients_per_round=5, poll_interval=0.05, profiling="query")
    msgs = list(s.configure_train(1, global_arrays(4), ConfigRecord(), grid))
    assert len(msgs) == 5 and sorted(asked) == sorted(pop.node_ids)


def test_payload_of_wrapped_strategy_is_kept(pop):
    grid = population_grid(pop)
    s = StratifiedSelection(FedProx(proximal_mu=0.3, fraction_evaluate=0.0),
                            clients_per_round=6, seed=0, profiling="query")
    cfg = ConfigRecord({"lr": 0.1})
    msgs = list(s.configure_train(4, global_arrays(6), cfg, grid))
    assert len(msgs) == 6 and len({m.metadata.dst_node_id for m in msgs}) == 6
    for m in msgs:
        assert m.metadata.message_type == MessageType.TRAIN
        c = m.content["config"]
        assert c["proximal-mu"] == 0.3 and c["server-round"] == 4 and c["lr"] == 0.1
        np.testing.assert_array_equal(flatten(m.content["arrays"]), flatten(global_arrays(6)))
    # profile queries went out once, to every node, with the design.md protocol
    queries = [m for m in grid.sent if m.metadata.message_type == MessageType.QUERY]
    assert sorted(q.metadata.dst_node_id for q in queries) == sorted(pop.node_ids)
    assert queries[0].content["fedstrat-profile"]["epsilon"] == 0.0
    assert len(s.registry.histograms) == len(pop.node_ids)


def test_inner_without_training_message_is_a_clear_error(pop):
    # FedAvg(fraction_train=0.0) skips training: refused when the wrapper is built, not after
    # the "ignored" warning at round 1
    with pytest.raises(ValueError, match=r"FedAvg\(fraction_train=0.0\) skips federated"):
        StratifiedSelection(FedAvg(fraction_train=0.0), clients_per_round=4)

    class Silent(FedAvg):  # any other reason for no training message: one clear error
        def configure_train(self, server_round, arrays, config, grid):
            return []

    s = StratifiedSelection(Silent(), clients_per_round=4, profiling="query")
    with pytest.raises(RuntimeError, match="configured no training message"):
        s.configure_train(1, global_arrays(4), ConfigRecord(), population_grid(pop))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"selection": "random"},
        {"design": "cluster"},
        {"allocation": "optimal"},
        {"estimator": "mean"},
        {"stratify_by": "labels"},
        {"clients_per_round": 0},
        {"n_strata": 20},
        {"node_wait_timeout": -1.0},
        {"profile_epsilon": float("nan")},
        {"poc_d": 2},
    ],
)
def test_bad_arguments_raise_value_error(kwargs):
    args = {"clients_per_round": 5, **kwargs}
    with pytest.raises(ValueError):
        StratifiedSelection(FedAvg(), **args)


# ---------------------------------------------------------------- selection
def test_selection_is_reproducible_under_seed(pop):
    def selections(seed):
        s = StratifiedSelection(FedAvg(fraction_evaluate=0.0), clients_per_round=6, seed=seed,
                                profiling="query")
        run(s, population_grid(pop), global_arrays(6), range(1, 4))
        return [r.selected for r in s.records]

    a, b, c = selections(5), selections(5), selections(6)
    assert a == b
    assert a != c


def test_records_and_metrics(pop, tmp_path):
    path = tmp_path / "rec" / "sampling.jsonl"
    s = StratifiedSelection(FedAvg(fraction_evaluate=0.0), clients_per_round=6, seed=0,
                            record_path=path, profiling="query")
    out = run(s, population_grid(pop), global_arrays(6), range(1, 4))
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert [r["round"] for r in lines] == [1, 2, 3] == [r.round for r in s.records]
    assert lines == [r.to_json() for r in s.records]
    for rec, (_, _, metrics) in zip(lines, out, strict=True):
        assert rec["design"] in ("pps", "srswor")
        assert sum(rec["m_h"]) == 6 == len(rec["selected"])
        assert len(rec["N_h"]) == len(rec["P_h"]) == len(rec["S_h"]) == len(rec["m_h"])
        assert sum(rec["N_h"]) == len(pop.node_ids)
        assert sum(rec["P_h"]) == pytest.approx(1.0)
        if rec["S_h_basis"] == "tracked":
            assert rec["var_ratio"] == pytest.approx(rec["pred_var_uniform"] / rec["pred_var"])
            assert metrics["fedstrat-pred-var"] == pytest.approx(rec["pred_var"])
            assert metrics["fedstrat-var-ratio"] == pytest.approx(rec["var_ratio"])
        else:  # feature-proxy predictions (label-proportion units): recorded, no ratio/metric
            assert rec["pred_var"] > 0 and rec["var_ratio"] is None
            assert "fedstrat-pred-var" not in metrics and "fedstrat-var-ratio" not in metrics
    assert lines[0]["S_h_basis"] == "prior" and lines[2]["S_h_basis"] == "tracked"


@pytest.mark.parametrize(
    "selection", ["uniform", "multinomial", "clustered1", "clustered2", "poc"]
)
def test_baselines_through_the_same_wrapper(pop, selection):
    s = StratifiedSelection(FedAvg(fraction_evaluate=0.0), clients_per_round=5,
                            selection=selection, seed=0, profiling="query")
    out = run(s, population_grid(pop), global_arrays(6), range(1, 3))
    for rec, (msgs, new, _) in zip(s.records, out, strict=True):
        assert rec.design == selection
        assert 1 <= len(msgs) <= 5 and new is not None
        if selection in ("uniform", "poc"):
            assert len(msgs) == 5  # multinomial and clustered may draw a client twice
        if selection == "uniform":
            assert sum(rec.weights) == pytest.approx(
                sum(pop.sizes[pop.index[n]] for n in rec.selected) / pop.sizes.sum() * 30 / 5
            )


def test_poc_prefers_high_loss_nodes(pop):
    s = StratifiedSelection(FedAvg(fraction_evaluate=0.0), clients_per_round=3,
                            selection="poc", poc_d=30, seed=0, profiling="query")
    run(s, population_grid(pop), global_arrays(6), range(1, 3))
    # every node was a candidate (d = N); after round 1 unseen nodes (loss +inf) come first,
    # so round 2 picks none of round 1's nodes
    assert not set(s.records[0].selected) & set(s.records[1].selected)


def test_cost_allocation_uses_reported_train_seconds():
    pop = make_population(n=40, classes=2, dim=6, alpha=0.05, seed=4)
    heavy = {n for n in pop.node_ids if pop.props[pop.index[n], 0] > 0.5}
    grid = population_grid(
        pop, extra_metrics=lambda n: {"train-seconds": 100.0 if n in heavy else 1.0}
    )
    s = StratifiedSelection(FedAvg(fraction_evaluate=0.0), clients_per_round=10, seed=0,
                            design="srswor", n_strata=2, allocation="cost", profiling="query")
    run(s, grid, global_arrays(6), range(1, 3))
    present = np.array(s.records[-1].strata)
    strata = s.policy.stratifier.node_stratum_
    costs = stratum_costs(strata, s.registry, present)
    heavy_h = {strata[n] for n in heavy}
    assert len(heavy_h) == 1
    h = heavy_h.pop()
    assert costs[list(present).index(h)] == pytest.approx(100.0)
    assert costs[1 - list(present).index(h)] == pytest.approx(1.0)


# ---------------------------------------------------------------- profiling fallback
def test_profiling_failure_falls_back_to_uniform_then_sketches(caplog):
    pop = make_population(n=30, classes=4, dim=6, alpha=0.1, seed=1)
    grid = population_grid(pop, profile=False)
    s = StratifiedSelection(FedAvg(fraction_evaluate=0.0), clients_per_round=8, seed=0,
                            warmup_rounds=2, profiling="query")
    with caplog.at_level(logging.INFO, logger="flwr"):
        run(s, grid, global_arrays(6), range(1, 5))
    msgs = [r.getMessage() for r in caplog.records]
    # a ClientApp without a query handler: one INFO line, no WARNING about it
    assert any("30 nodes have no profiling handler" in m for m in msgs)
    assert not any("Profiling failed" in m for m in msgs)
    assert any("stratifying by update sketches" in m for m in msgs)
    assert [r.design for r in s.records[:2]] == ["uniform-warmup"] * 2
    # strata from one warm-up round's sketches: FedAvg until every stratum has tracked updates
    assert s.records[2].design == "fedavg" and s.records[2].decision.evidence == "proxy"
    assert s.records[2].decision.candidate in ("pps", "srswor")
    assert any("on sketches" in m for m in msgs)
    # round 1: no size known before the draw -> FedAvg's weights n_i / sum n_j, from the claims
    first = np.array([pop.sizes[pop.index[n]] for n in s.records[0].responders], dtype=float)
    assert s.records[0].weights == pytest.approx(first / first.sum())
    # nodes never trained form the unknown stratum; their size is the mean observed size
    trained = {n for r in s.records for n in r.responders}
    unseen = [n for n in pop.node_ids if n not in trained]
    if unseen:
        st = s.policy.stratifier
        assert all(st.node_stratum_[n] == st.unknown_stratum == len(st.centroids_)
                   for n in unseen)
        mean_size = np.mean([pop.sizes[pop.index[n]] for n in trained])
        assert s.registry.sizes(unseen[:1])[0] == pytest.approx(mean_size)


def test_a_fedavg_round_weighs_nodes_of_unknown_size_as_flower_fedavg_does(pop):
    # no profiling handler: no size is known before round 1's draw; its FedAvg aggregate must be
    # Flower's n_i-weighted mean of the replies, not an equal-weight mean of them
    grid = population_grid(pop, profile=False)
    s = StratifiedSelection(FedAvg(fraction_evaluate=0.0), clients_per_round=6, seed=2)
    (msgs, new, _), = run(s, grid, global_arrays(6), [1])
    nodes = [m.metadata.dst_node_id for m in msgs]
    n = np.array([pop.sizes[pop.index[k]] for k in nodes], dtype=float)
    fedavg = 0.5 + (n / n.sum()) @ np.array([pop.update(k) for k in nodes])
    assert s.records[0].estimator in ("ratio", "ht") and s.records[0].design != "stratified"
    assert flatten(new) == pytest.approx(fedavg, rel=1e-12, abs=1e-12)


def test_fedavg_until_tracked_evidence_gives_no_stale_prediction():
    # strata fitted on one warm-up round's sketches: the FedAvg rounds that wait for tracked
    # evidence say how much there is, not the fit-time proxy's figures (which the record's own
    # predictions of later rounds could contradict)
    pop = make_population(n=30, classes=4, dim=6, alpha=0.1, seed=1)
    s = StratifiedSelection(FedAvg(fraction_evaluate=0.0), clients_per_round=8, seed=0,
                            warmup_rounds=2)
    run(s, population_grid(pop, profile=False), global_arrays(6), range(1, 5))
    waiting = [r.decision.reason for r in s.records if r.decision is not None
               and r.decision.reason.startswith("FedAvg until tracked evidence")]
    assert waiting and all("tracked updates in a stratum" in w and "fitted at round 3" in w
                           and "predicted variance" not in w and "x lower" not in w
                           for w in waiting)


def test_nodes_without_a_profiling_handler_are_one_line_whatever_their_tracebacks(caplog):
    # Ray's error reason carries each node's pid and actor: still one line for all of them
    pop = make_population(n=12, classes=3, dim=6, seed=2)
    handler = population_grid(pop).handler

    def answer(msg):
        if msg.metadata.message_type == MessageType.QUERY:
            raise ValueError(f"ray::ClientAppActor.run() (pid={msg.metadata.dst_node_id})\n"
                             "ValueError: No query function registered with name 'default'")
        return handler(msg)

    s = StratifiedSelection(FedAvg(fraction_evaluate=0.0), clients_per_round=4,
                            profiling="query")
    with caplog.at_level(logging.INFO, logger="flwr"):
        run(s, LocalGrid(list(pop.node_ids), answer), global_arrays(6), [1])
    lines = [r.getMessage() for r in caplog.records if "profil" in r.getMessage().lower()]
    assert any(m.startswith("12 nodes have no profiling handler") for m in lines), lines
    assert not any("Profiling failed" in m for m in lines), lines


def test_new_nodes_join_nearest_stratum():
    pop = make_population(n=30, classes=3, dim=6, alpha=0.05, seed=9)
    first = pop.node_ids[:24]
    t = {"late": False}
    grid = LocalGrid(lambda: pop.node_ids if t["late"] else first,
                     population_grid(pop).handler)
    s = StratifiedSelection(FedAvg(fraction_evaluate=0.0), clients_per_round=6, seed=0,
                            design="pps", n_strata=3, profiling="query")
    run(s, grid, global_arrays(6), [1])
    t["late"] = True
    run(s, grid, global_arrays(6), [2])
    st = s.policy.stratifier
    for n in pop.node_ids[24:]:
        h = st.node_stratum_[n]
        x = np.array(pop.histogram(n)) / sum(pop.histogram(n))
        d = ((st.centroids_ - x) ** 2).sum(axis=1)
        assert h == int(d.argmin())
    assert sum(s.records[-1].N_h) == 30


# ---------------------------------------------------------------- checkpointing
def test_state_dict_resumes_identically(pop):
    def make():
        return StratifiedSelection(FedAvg(fraction_evaluate=0.0), clients_per_round=6,
                                   seed=2, restratify_every=2, profiling="query")

    a = make()
    run(a, population_grid(pop), global_arrays(6), range(1, 4))
    state = json.loads(json.dumps(a.state_dict()))
    b = make()
    b.load_state_dict(state)
    assert b.n_records == 3
    out_a = run(a, population_grid(pop), global_arrays(6), range(4, 6))
    out_b = run(b, population_grid(pop), global_arrays(6), range(4, 6))
    assert a.records[-2:] == b.records
    for (_, xa, _), (_, xb, _) in zip(out_a, out_b, strict=True):
        np.testing.assert_array_equal(flatten(xa), flatten(xb))
    with pytest.raises(ValueError, match="seed"):
        StratifiedSelection(FedAvg(), clients_per_round=6, seed=3,
                                profiling="query").load_state_dict(state)


# ---------------------------------------------------------------- responder_weights by hand
def test_responder_weights_by_hand():
    w, notes = responder_weights(
        np.array([0.1, 0.1, 0.2, 0.2, 0.4]),
        np.array([0, 0, 1, 1, 2]),
        np.zeros(5, dtype=bool),
        np.array([True, False, True, True, False]),
    )
    # stratum 0: 2 selected, 1 responded -> x2 (0.2); stratum 2 empty: its 0.4 goes to the
    # responders proportionally: (0.2 + 0.4) -> x (1.0 / 0.6)
    np.testing.assert_allclose(w, [1 / 3, 0, 1 / 3, 1 / 3, 0], rtol=1e-12)
    assert len(notes) == 2
    w, _ = responder_weights(np.array([0.5, 0.25, 0.25]), None,
                             np.array([True, False, False]), np.array([False, True, True]))
    np.testing.assert_allclose(w, [0, 0.5, 0.5])
    w, notes = responder_weights(np.ones(3), None, np.zeros(3, bool), np.zeros(3, bool))
    assert not w.any() and "no responders" in notes[0]
    with pytest.raises(ValueError):
        responder_weights(np.ones(3), None, np.zeros(2, bool), np.ones(3, bool))


def test_stratify_by_sketches_after_warmup_and_restratify(pop):
    s = StratifiedSelection(FedAvg(fraction_evaluate=0.0), clients_per_round=8, seed=0,
                            stratify_by="sketches", warmup_rounds=2, restratify_every=2,
                            profile_epsilon=1.0, profiling="query")
    grid = population_grid(pop)
    run(s, grid, global_arrays(6), range(1, 6))
    designs = [r.design for r in s.records]
    assert designs[:2] == ["uniform-warmup"] * 2
    assert all(d in ("pps", "srswor", "fedavg") for d in designs[2:])
    assert all(r.design == "fedavg" for r in s.records[2:] if r.decision.evidence == "proxy")
    assert s.policy.stratifier.features_kind_ == "sketches"
    assert s.policy.stratifier.fitted_round_ == 5  # built at round 3, rebuilt at round 5
    q = next(m for m in grid.sent if m.metadata.message_type == MessageType.QUERY)
    assert q.content["fedstrat-profile"]["epsilon"] == 1.0
    # sizes still come from the profiles
    n0 = pop.node_ids[0]
    assert s.registry.num_examples[n0] == pytest.approx(pop.sizes[0])
