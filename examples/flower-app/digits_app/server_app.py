"""digits-app ServerApp: FedAvg, with training clients chosen by stratified selection.

Run config ``mode`` switches between the three apps of issue 11 (same data, model and training):

* ``"fedavg"``: plain Flower FedAvg sampling ``clients-per-round`` nodes (no fedstrat);
* ``"auto"``: ``StratifiedSelection(FedAvg(...), profiling="auto")``, for an unmodified
  ClientApp (``digits_app.client_plain:app``): only TRAIN messages, strata from update sketches;
* ``"query"`` (default): ``profiling="query"``, for the ClientApp with the one-line
  ``register_profiling`` handler (``digits_app.client_app:app``): label-histogram strata.
"""

from __future__ import annotations

import random
import time
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg, Result, Strategy

from digits_app.task import evaluate, init_arrays, test_data
from fedstrat.strategies import StratifiedSelection

MODES = ("fedavg", "auto", "query")

app = ServerApp()


def central_evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
    loss, acc = evaluate(arrays, *test_data())
    return MetricRecord({"loss": loss, "accuracy": acc})


def make_strategy(cfg: dict[str, Any], num_nodes: int, **selection: Any) -> Strategy:
    """The run's strategy for ``cfg["mode"]`` (``num_nodes``: connected nodes, for FedAvg's
    ``fraction_train``); ``selection`` goes to StratifiedSelection."""
    mode = str(cfg.get("mode", "query"))
    m = int(cfg.get("clients-per-round", 10))
    if mode == "fedavg":
        random.seed(int(cfg.get("seed", 0)))  # Flower's FedAvg samples with `random`
        return FedAvg(fraction_train=min(1.0, m / num_nodes), fraction_evaluate=0.0,
                      min_train_nodes=m, min_available_nodes=m)
    if mode not in MODES:
        raise ValueError(f"run config mode must be one of {MODES}, got {mode!r}")
    return StratifiedSelection(FedAvg(fraction_evaluate=0.0), clients_per_round=m,
                               profiling=mode, seed=int(cfg.get("seed", 0)), **selection)


def connected_nodes(grid: Grid, m: int, settle: float = 2.0, timeout: float = 120.0) -> int:
    """The number of connected nodes once at least ``m`` are and the count held still for
    ``settle`` seconds (or ``timeout`` passed): FedAvg's ``fraction_train`` needs ``N``."""
    start = last_change = time.monotonic()
    count = -1
    while time.monotonic() - start < timeout:
        now = len(list(grid.get_node_ids()))
        if now != count:
            count, last_change = now, time.monotonic()
        elif count >= m and time.monotonic() - last_change >= settle:
            break
        time.sleep(0.25)
    return max(count, 1)


def run(grid: Grid, context: Context, **selection: Any) -> tuple[Strategy, Result]:
    """Train for ``num-server-rounds``; the strategy and Flower's Result."""
    cfg = context.run_config
    m = int(cfg.get("clients-per-round", 10))
    n = connected_nodes(grid, m) if cfg.get("mode", "query") == "fedavg" else m
    strategy = make_strategy(cfg, n, **selection)
    result = strategy.start(
        grid=grid,
        initial_arrays=init_arrays(),
        num_rounds=int(cfg.get("num-server-rounds", 20)),
        train_config=ConfigRecord(
            {"lr": float(cfg.get("lr", 0.5)), "local-epochs": int(cfg.get("local-epochs", 2)),
             "local-steps": int(cfg.get("local-steps", 0))}
        ),
        evaluate_fn=central_evaluate,
    )
    return strategy, result


@app.main()
def main(grid: Grid, context: Context) -> None:
    _, result = run(grid, context)
    print(
        "final accuracy:",
        result.evaluate_metrics_serverapp[max(result.evaluate_metrics_serverapp)]["accuracy"],
    )
