"""StratifiedSelection as a drop-in for real Flower apps: clear construction errors, delegation
of what it does not own (attributes, a subclass's ``start()``), logs that agree, one node wait,
and an unmodified ClientApp (no profiling handler) that never sees a message it cannot handle."""

from __future__ import annotations

import logging
import re
import time

import numpy as np
import pytest
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp.strategy import (
    DifferentialPrivacyServerSideFixedClipping,
    FedAvg,
    FedXgbBagging,
)

from fedstrat.strategies import StratifiedSelection
from fedstrat.strategies.local_grid import LocalGrid

NODES = [500 + 3 * i for i in range(20)]


def arrays0() -> ArrayRecord:
    return ArrayRecord({"w": Array(np.zeros(6, np.float32)), "b": Array(np.zeros(2, np.float32))})


def plain_client(sleep: float = 0.0):
    """An unmodified ClientApp: train only; anything else fails as in Flower."""
    sent: list[str] = []

    def handler(msg: Message) -> Message:
        sent.append(msg.metadata.message_type)
        if msg.metadata.message_type != MessageType.TRAIN:
            raise ValueError("No query function registered with name 'default'")
        time.sleep(sleep)
        node = msg.metadata.dst_node_id
        rec = msg.content["arrays"]
        g = np.random.default_rng([node, int(msg.content["config"]["server-round"])])
        out = {k: Array((rec[k].numpy() + g.normal(0.1 * (node % 4), 0.05, rec[k].numpy().shape))
                        .astype(np.float32)) for k in rec.keys()}
        metrics = MetricRecord({"num-examples": 10 + node % 17, "train-loss": 1.0})
        return Message(RecordDict({"arrays": ArrayRecord(out), "metrics": metrics}),
                       reply_to=msg)

    handler.sent = sent  # type: ignore[attr-defined]
    return handler


def run_rounds(strategy, grid, rounds, arrays=None):
    arrays = arrays0() if arrays is None else arrays
    out = []
    for rnd in range(1, rounds + 1):
        msgs = strategy.configure_train(rnd, arrays, ConfigRecord(), grid)
        new, metrics = strategy.aggregate_train(rnd, grid.send_and_receive(msgs))
        out.append((arrays, new, metrics))
        arrays = new if new is not None else arrays
    return out


# ---------------------------------------------------------------- construction
def test_legacy_strategy_is_named_as_legacy():
    from flwr.server.strategy import FedAvg as LegacyFedAvg

    with pytest.raises(ValueError, match=r"legacy .*flwr\.serverapp\.strategy\.FedAvg"):
        StratifiedSelection(LegacyFedAvg(), clients_per_round=5)


def test_wrapper_inside_a_wrapper_is_refused():
    inner = StratifiedSelection(FedAvg(), clients_per_round=5)
    with pytest.raises(ValueError, match="another StratifiedSelection"):
        StratifiedSelection(inner, clients_per_round=5)
    dp = DifferentialPrivacyServerSideFixedClipping(inner, 0.1, 1.0, 5)
    with pytest.raises(ValueError, match="another StratifiedSelection"):
        StratifiedSelection(dp, clients_per_round=5)


def test_missing_clients_per_round_is_a_clear_error():
    with pytest.raises(TypeError, match="needs clients_per_round"):
        StratifiedSelection(FedAvg(), clients_per_round=None)


def test_tree_strategies_are_refused():
    with pytest.raises(ValueError, match="FedXgbBagging"):
        StratifiedSelection(FedXgbBagging(), clients_per_round=5)


def test_overridden_inner_options_are_warned_once(caplog):
    with caplog.at_level(logging.WARNING, logger="flwr"):
        StratifiedSelection(FedAvg(fraction_train=0.2, min_train_nodes=4), clients_per_round=5)
        StratifiedSelection(FedAvg(), clients_per_round=5)
    warned = [r.getMessage() for r in caplog.records if "ignored" in r.getMessage()]
    assert len(warned) == 1
    assert "fraction_train=0.2" in warned[0] and "min_train_nodes=4" in warned[0]


# ---------------------------------------------------------------- delegation
class AppFedAvg(FedAvg):
    """Like advanced-pytorch's CustomFedAvg: its own methods and a start() that checkpoints."""

    def set_save_path_and_run_dir(self, path: str, run_dir: str) -> None:
        self.save_path, self.run_dir = path, run_dir

    def start(self, grid, initial_arrays, num_rounds=3, timeout=3600, train_config=None,
              evaluate_config=None, evaluate_fn=None):
        self.checkpoints: list[int] = []

        def saving_eval(rnd, arrays):
            self.checkpoints.append(rnd)  # the app's checkpoint / W&B logging
            return None

        return super().start(grid, initial_arrays, num_rounds, timeout, train_config,
                             evaluate_config, saving_eval)


class LoopFedAvg(FedAvg):
    """A start() that is its own loop (no super().start())."""

    def start(self, grid, initial_arrays, num_rounds=3, **kwargs):
        self.saved = []
        arrays = initial_arrays
        for rnd in range(1, num_rounds + 1):
            replies = grid.send_and_receive(self.configure_train(rnd, arrays, ConfigRecord(),
                                                                 grid))
            arrays, _ = self.aggregate_train(rnd, replies)
            self.saved.append(rnd)
        return arrays


def test_app_methods_are_delegated_to_the_wrapped_strategy():
    inner = AppFedAvg(fraction_evaluate=0.0)
    s = StratifiedSelection(inner, clients_per_round=5)
    s.set_save_path_and_run_dir("/tmp/x", "run1")
    assert inner.save_path == "/tmp/x" and s.run_dir == "run1"
    assert s.fraction_evaluate == 0.0
    with pytest.raises(AttributeError):
        _ = s.no_such_attribute


@pytest.mark.parametrize("cls", [AppFedAvg, LoopFedAvg])
def test_subclass_start_runs_with_stratified_selection(cls):
    inner = cls(fraction_evaluate=0.0)
    s = StratifiedSelection(inner, clients_per_round=5, node_wait_timeout=0.1)
    client = plain_client()
    s.start(LocalGrid(list(NODES), client), arrays0(), num_rounds=3)
    assert [r.round for r in s.records] == [1, 2, 3]  # the wrapper selected every round
    assert all(len(r.selected) == 5 for r in s.records)
    assert client.sent.count(MessageType.TRAIN) == 15  # 5 a round, not FedAvg's fraction 1.0
    if cls is AppFedAvg:
        assert inner.checkpoints == [0, 1, 2, 3]  # the subclass's own start() behaviour
    else:
        assert inner.saved == [1, 2, 3]


# ---------------------------------------------------------------- unmodified ClientApp
def test_unmodified_client_app_gets_no_query_and_no_error_logs(caplog):
    client = plain_client()
    s = StratifiedSelection(FedAvg(fraction_evaluate=0.0), clients_per_round=5, seed=0,
                            node_wait_timeout=0.1)
    with caplog.at_level(logging.DEBUG):
        out = run_rounds(s, LocalGrid(list(NODES), client), 4)
    assert set(client.sent) == {MessageType.TRAIN}
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING
                and "rofil" in r.getMessage()]
    for old, new, _ in out:  # trains normally
        assert new is not None and not np.array_equal(old["w"].numpy(), new["w"].numpy())
    assert all(len(r.responders) == 5 and not r.rejected for r in s.records)


def test_query_mode_is_quiet_when_the_client_has_no_handler(caplog):
    client = plain_client()
    s = StratifiedSelection(FedAvg(fraction_evaluate=0.0), clients_per_round=5, seed=0,
                            node_wait_timeout=0.1, profiling="query")
    with caplog.at_level(logging.INFO, logger="flwr"):
        run_rounds(s, LocalGrid(list(NODES), client), 2)
    assert client.sent.count(MessageType.QUERY) == 20  # each node asked once
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not any("Profiling failed" in r.getMessage() for r in caplog.records)
    assert sum("no profiling handler" in r.getMessage() for r in caplog.records) == 1


# ---------------------------------------------------------------- logs
def test_one_round_line_agrees_with_the_metrics(caplog):
    s = StratifiedSelection(FedAvg(fraction_evaluate=0.0), clients_per_round=6, seed=0,
                            node_wait_timeout=0.1, design="pps", n_strata=3)
    with caplog.at_level(logging.INFO, logger="flwr"):
        out = run_rounds(s, LocalGrid(list(NODES), plain_client()), 6)
    msgs = [r.getMessage() for r in caplog.records]
    lines = [m for m in msgs if "StratifiedSelection (selection=stratified) chose" in m]
    assert len(lines) == 6
    assert not any("Sampled" in m for m in msgs)  # the wrapped strategy's own sampling line
    assert not any(re.search(r"\binf\b|infx", m) for m in msgs)
    for line, (_, _, metrics) in zip(lines, out, strict=True):
        found = re.search(r"(\d+) strata this round", line)
        if "fedstrat-n-strata" in metrics:
            assert found and int(found.group(1)) == int(metrics["fedstrat-n-strata"])
        ratio = re.search(r"([\d.]+)x (lower|higher) than (FedAvg|uniform) \((±\d+%|[\d.e-]+ \[)",
                          line)
        assert ratio or "not enough evidence yet" in line or "strata this round" not in line


# ---------------------------------------------------------------- node wait
def test_more_clients_per_round_than_nodes_waits_once(caplog):
    def timed(m):
        s = StratifiedSelection(FedAvg(fraction_evaluate=0.0), clients_per_round=m, seed=0,
                                node_wait_timeout=1.0, poll_interval=0.1, selection="uniform")
        grid = LocalGrid(list(NODES), plain_client(sleep=0.02))
        t = time.perf_counter()
        run_rounds(s, grid, 3)
        return time.perf_counter() - t

    base = timed(20)
    with caplog.at_level(logging.INFO, logger="flwr"):
        over = timed(30)
    msgs = [r.getMessage() for r in caplog.records]
    assert sum("Waiting up to" in m for m in msgs) == 1
    assert sum("Only 20 nodes connected" in m for m in msgs) == 1
    # One settled wait costs node_wait_timeout (1.0 s); a wait in every round would cost 3.0 s
    # (two or more waits >= 2.0 s: each runs to its deadline). The bound 2 * base + 0.2 left
    # only base - 0.8 s ~ 0.45 s of slack (base is 60 x 0.02 s of sleeps): one stall of the
    # loaded machine during `over` of ~0.5 s would fail it.
    assert over - base < 2.0, (over, base)


def test_new_nodes_end_the_settled_wait():
    connected = list(NODES[:10])
    s = StratifiedSelection(FedAvg(fraction_evaluate=0.0), clients_per_round=15, seed=0,
                            node_wait_timeout=0.3, poll_interval=0.05, selection="uniform")
    grid = LocalGrid(lambda: list(connected), plain_client())
    run_rounds(s, grid, 1)
    assert len(s.records[-1].selected) == 10
    connected.extend(NODES[10:16])  # 16 >= 15: no wait, 15 selected
    arrays = arrays0()
    s.aggregate_train(2, grid.send_and_receive(s.configure_train(2, arrays, ConfigRecord(),
                                                                 grid)))
    assert len(s.records[-1].selected) == 15


def test_ratio_is_printed_only_with_evidence_and_uncertainty():
    from fedstrat.sampling import Strata
    from fedstrat.sampling.variance import VariancePrediction
    from fedstrat.strategies.plan import StrataPlan
    from fedstrat.strategies.round_log import ratio_text

    def plan(pred, basis="tracked"):
        one = np.ones(2)
        return StrataPlan(Strata(np.array([0, 1])), np.array([0, 1]), np.array([1, 1]), one,
                          basis, one, one / 2, pred)

    good = VariancePrediction(stratified=1.0, uniform=2.0, fedavg=3.0)
    assert re.search(r"3\.00x lower than FedAvg \(±\d+%", ratio_text(plan(good), np.array([5, 9])))
    assert "not enough evidence yet" in ratio_text(plan(good), np.array([2, 9]))
    assert "not enough evidence yet" in ratio_text(plan(good, "prior"), np.array([5, 9]))
    zero = VariancePrediction(stratified=0.0, uniform=2.0, fedavg=3.0)
    text = ratio_text(plan(zero), np.array([5, 9]))
    assert "not enough evidence yet" in text and "inf" not in text
    worse = VariancePrediction(stratified=4.0, uniform=2.0, fedavg=2.0)
    assert "2.00x higher than FedAvg" in ratio_text(plan(worse), np.array([5, 9]))
