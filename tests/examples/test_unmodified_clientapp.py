"""Issue 11: an unmodified ClientApp is a first-class path. The example app in
examples/flower-app (numpy softmax regression on digits, Dirichlet label skew) with its plain
ClientApp (``digits_app.client_plain:app``, no query handler) and the ServerApp's
``mode = "auto"`` (``StratifiedSelection(FedAvg(...), profiling="auto")``): it trains, the
server sends it nothing but TRAIN messages, and no ERROR record is logged. The same ClientApp
against ``mode = "query"`` is the counter-example (profile queries it cannot answer).
"""

from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path

import pytest
from flwr.app import Context, MessageType, RecordDict

from fedstrat.strategies import LocalGrid
from fedstrat.strategies.local_grid import client_app_handler

APP_DIR = Path(__file__).resolve().parents[2] / "examples" / "flower-app"
CFG = {"alpha": 0.3, "clients-per-round": 5, "local-steps": 20, "local-epochs": 1, "lr": 0.5}
NODES = 20


@pytest.fixture(scope="module")
def digits():
    sys.path.insert(0, str(APP_DIR))
    try:
        from digits_app import client_app, client_plain, server_app, task

        yield {"plain": client_plain.app, "profiled": client_app.app, "server": server_app,
               "task": task}
    finally:
        sys.path.remove(str(APP_DIR))
        for name in [n for n in sys.modules if n.split(".")[0] == "digits_app"]:
            del sys.modules[name]


class Errors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def _catch_errors() -> Errors:
    h = Errors()
    for name in ("", "flwr"):
        logging.getLogger(name).addHandler(h)
    return h


def _release(h: Errors) -> None:
    for name in ("", "flwr"):
        logging.getLogger(name).removeHandler(h)


def run_local(digits, client, mode: str, seed: int, rounds: int):
    cfg = {**CFG, "mode": mode, "seed": seed, "num-server-rounds": rounds}
    ids = [100 + 3 * k for k in range(NODES)]
    grid = LocalGrid(ids, client_app_handler(client, ids, cfg))
    ctx = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=cfg)
    errors = _catch_errors()
    try:
        strategy, result = digits["server"].run(grid, ctx)
    finally:
        _release(errors)
    return grid, strategy, result, errors.records


@pytest.mark.parametrize("seed", [0, 1])
def test_unmodified_clientapp_trains_without_queries_or_errors(digits, seed):
    grid, strategy, result, errors = run_local(digits, digits["plain"], "auto", seed, 4)
    assert errors == []
    assert {m.metadata.message_type for m in grid.sent} == {MessageType.TRAIN}
    acc = result.evaluate_metrics_serverapp
    assert acc[0]["accuracy"] < 0.2 and acc[4]["accuracy"] > 0.6  # 0.07 at zero weights
    assert [r.round for r in strategy.records] == [1, 2, 3, 4]
    for rec in strategy.records:
        assert len(rec.responders) == 5 and rec.failures == [] and rec.rejected == []
        assert rec.decision is not None and rec.decision.mode in ("stratified", "fedavg")
    assert strategy.records[0].decision.mode == "fedavg"  # warm-up: nothing seen yet
    # every node's size was learnt from its train replies, none from a profile
    assert not strategy.registry.histograms


def test_query_mode_against_unmodified_clientapp_sends_queries_it_cannot_answer(digits):
    """The counter-example: profiling="query" asks the plain ClientApp for profiles."""
    grid, strategy, result, _ = run_local(digits, digits["plain"], "query", 0, 2)
    assert MessageType.QUERY in {m.metadata.message_type for m in grid.sent}
    assert result.evaluate_metrics_serverapp[2]["accuracy"] > 0.3  # falls back, still trains


def test_profiled_clientapp_is_stratified_from_round_one(digits):
    grid, strategy, result, errors = run_local(digits, digits["profiled"], "query", 0, 3)
    assert errors == []
    assert len(strategy.registry.histograms) == NODES
    assert strategy.records[0].design in ("pps", "srswor")
    assert result.evaluate_metrics_serverapp[3]["accuracy"] > 0.5


def test_fedavg_mode_is_plain_flower_fedavg(digits):
    from flwr.serverapp.strategy import FedAvg

    grid, strategy, result, errors = run_local(digits, digits["plain"], "fedavg", 0, 3)
    assert type(strategy) is FedAvg and errors == []
    assert [n for n, _ in grid.send_calls if n] == [5, 5, 5]  # 5 of 20 nodes a round
    assert {m.metadata.message_type for m in grid.sent} == {MessageType.TRAIN}
    assert result.evaluate_metrics_serverapp[3]["accuracy"] > 0.5


@pytest.mark.slow
def test_unmodified_clientapp_in_flower_simulation_logs_no_error(digits, capfd):
    """Flower's run_simulation (Ray, 20 SuperNodes), 2 seeds x 3 rounds: the model trains and
    neither a log record nor the captured output of the run has an ERROR or a query failure."""
    from flwr.serverapp import ServerApp
    from flwr.simulation import run_simulation

    for seed in (0, 1):
        out: dict = {}
        server = ServerApp()

        @server.main()
        def main(grid, context, seed=seed, out=out):
            context.run_config.update({**CFG, "mode": "auto", "seed": seed,
                                       "num-server-rounds": 3})
            out["strategy"], out["result"] = digits["server"].run(grid, context)

        errors = _catch_errors()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                run_simulation(server, digits["plain"], num_supernodes=NODES,
                               backend_config={"client_resources": {"num_cpus": 1,
                                                                    "num_gpus": 0.0},
                                               "init_args": {"num_cpus": 2, "num_gpus": 0}})
        finally:
            _release(errors)
        captured = capfd.readouterr()
        text = captured.out + captured.err
        assert [r.getMessage() for r in errors.records] == []
        assert "No query function" not in text and "ERROR" not in text, text[-3000:]
        acc = out["result"].evaluate_metrics_serverapp
        # trains: about +0.30 after 3 rounds on these seeds. The same seed does not give the
        # same run: Flower's simulation draws random node ids each run, so the strategy's
        # draws (by index into the sorted ids) pick other partitions (and Ray's reply order
        # moves the float sums): +0.245 seen in 2 of 4 runs at 2715fd0 (3 of 3 at 002de38 were
        # above +0.25), so the bar is +0.20 (an untrained model stays at +0.0)
        assert acc[3]["accuracy"] > acc[0]["accuracy"] + 0.20
        assert len(out["strategy"].records) == 3


def test_unmodified_clientapp_runs_fedavg_until_tracked_evidence(digits):
    """Without a profile the strata come from warm-up sketches, which are no evidence against
    FedAvg: every round decided before tracked evidence is a FedAvg round (uniform draw,
    self-normalised weights); only tracked evidence may switch to the stratified design."""
    _, strategy, _, errors = run_local(digits, digits["plain"], "auto", 0, 10)
    assert errors == []
    decisions = [(r.round, r.design, r.decision.mode, r.decision.evidence)
                 for r in strategy.records]
    early = [d for d in decisions if d[3] != "tracked"]
    assert len(early) >= 2  # warm-up and at least one round on warm-up-sketch strata
    assert all(mode == "fedavg" and design in ("fedavg", "uniform-warmup")
               for _, design, mode, _ in early)
    assert any("FedAvg until tracked evidence" in r.decision.reason for r in strategy.records)


@pytest.mark.slow
def test_profiled_app_on_stable_node_ids_repeats_run_for_run(digits):
    """Flower's simulation draws new node ids every run, so one seed gives other draws; a user's
    ServerApp that wraps its grid in ``StableNodeGrid`` (ids ``1 + partition-id`` from the
    profile replies, replies in sender order) gets the same run twice: the same nodes each
    round and the same accuracies, to the last bit."""
    from flwr.serverapp import ServerApp
    from flwr.simulation import run_simulation

    from fedstrat.app.grid import StableNodeGrid

    runs = []
    for _ in range(2):
        out: dict = {}
        server = ServerApp()

        @server.main()
        def main(grid, context, out=out):
            context.run_config.update({**CFG, "mode": "query", "seed": 0,
                                       "num-server-rounds": 3})
            out["strategy"], out["result"] = digits["server"].run(StableNodeGrid(grid), context)

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            run_simulation(server, digits["profiled"], num_supernodes=NODES,
                           backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                                           "init_args": {"num_cpus": 2, "num_gpus": 0}})
        records = out["strategy"].records
        runs.append(([r.selected for r in records], [r.responders for r in records],
                     out["result"].evaluate_metrics_serverapp))
    (sel_a, resp_a, acc_a), (sel_b, resp_b, acc_b) = runs
    assert len(sel_a) == 3 and all(len(s) == 5 for s in sel_a)
    assert {n for s in sel_a for n in s} <= set(range(1, NODES + 1))  # stable ids
    assert sel_a == sel_b and resp_a == resp_b
    assert acc_a[3]["accuracy"] > acc_a[0]["accuracy"] + 0.2  # it trained
    assert [acc_a[r]["accuracy"] for r in range(4)] == [acc_b[r]["accuracy"] for r in range(4)]
