"""Server-side time per round: FedAvg vs StratifiedSelection(FedAvg), side by side.

In-process fake Grid (:class:`fedstrat.strategies.LocalGrid`, instant replies), a 784-50-10
MLP (39,760 float32 parameters), 10 clients per round, 100 / 1,000 / 10,000 nodes with
Dirichlet(0.1) label histograms. Timed: ``configure_train`` + ``aggregate_train`` (the grid's
send_and_receive, i.e. the simulated clients, is excluded for both). Round 1 of the wrapper
profiles and stratifies every node (one-off setup) and is reported separately; the per-round
figure is the median over the following rounds. Flower's INFO logging is silenced for both.

Run: ``python benchmarks/strategy_overhead.py [--rounds 15] [--nodes 100 1000 10000]``
Writes ``benchmarks/results/strategy_overhead.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import time
from pathlib import Path

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

import numpy as np  # noqa: E402
from flwr.app import (  # noqa: E402
    Array,
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp.strategy import FedAvg  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from fedstrat.strategies import StratifiedSelection  # noqa: E402
from fedstrat.strategies.local_grid import LocalGrid  # noqa: E402
from fedstrat.wire import PROFILE_KEY  # noqa: E402

SHAPES = {"fc1.weight": (50, 784), "fc1.bias": (50,), "fc2.weight": (10, 50), "fc2.bias": (10,)}
CLASSES = 10
M = 10


def initial_arrays(seed: int = 0) -> ArrayRecord:
    rng = np.random.default_rng(seed)
    return ArrayRecord(
        {k: Array((0.05 * rng.normal(size=s)).astype(np.float32)) for k, s in SHAPES.items()}
    )


class FakeClients:
    """Instant replies: profile (size, label histogram) and train (x_g + a fixed per-label-mix
    update). Update tensors are cached per node so client-side cost stays small."""

    def __init__(self, n_nodes: int, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.node_ids = [int(v) for v in rng.choice(2**62, size=n_nodes, replace=False) + 1]
        self.index = {n: i for i, n in enumerate(self.node_ids)}
        self.props = rng.dirichlet(np.full(CLASSES, 0.1), size=n_nodes)
        self.sizes = rng.integers(20, 500, size=n_nodes)
        self.dirs = {
            k: rng.normal(scale=0.01, size=(CLASSES, *s)).astype(np.float32)
            for k, s in SHAPES.items()
        }

    def __call__(self, msg: Message) -> Message:
        i = self.index[msg.metadata.dst_node_id]
        if msg.metadata.message_type == MessageType.QUERY:
            hist = np.round(self.props[i] * self.sizes[i]).tolist()
            rec = MetricRecord({"num-examples": int(self.sizes[i]), "label-hist": hist})
            return Message(RecordDict({PROFILE_KEY: rec}), reply_to=msg)
        arrays = msg.content["arrays"]
        new = {}
        for k, a in arrays.items():
            delta = np.tensordot(self.props[i].astype(np.float32), self.dirs[k], axes=1)
            new[k] = Array(a.numpy() + delta)
        metrics = MetricRecord({"num-examples": int(self.sizes[i]), "train-loss": 1.0})
        return Message(RecordDict({"arrays": ArrayRecord(new), "metrics": metrics}), reply_to=msg)


def run_round(strategy, grid: LocalGrid, r: int, state: dict) -> dict[str, float]:
    """One round; server-side wall and CPU seconds (configure + aggregate)."""
    arrays = state.get("arrays") or initial_arrays()
    w0, c0 = time.perf_counter(), time.process_time()
    msgs = list(strategy.configure_train(r, arrays, ConfigRecord(), grid))
    w1, c1 = time.perf_counter(), time.process_time()
    replies = list(grid.send_and_receive(msgs, timeout=10))
    w2, c2 = time.perf_counter(), time.process_time()
    new, _ = strategy.aggregate_train(r, replies)
    w3, c3 = time.perf_counter(), time.process_time()
    if new is not None:
        state["arrays"] = new
    return {
        "configure": w1 - w0,
        "aggregate": w3 - w2,
        "server": (w1 - w0) + (w3 - w2),
        "server_cpu": (c1 - c0) + (c3 - c2),
    }


def bench(n_nodes: int, rounds: int) -> dict:
    clients = FakeClients(n_nodes)
    fedavg = FedAvg(
        fraction_train=M / n_nodes, fraction_evaluate=0.0, min_train_nodes=M, min_available_nodes=M
    )
    strat = StratifiedSelection(
        FedAvg(fraction_evaluate=0.0), clients_per_round=M, seed=0, profile_timeout=60,
        profiling="query",
    )
    # interleave the two so that machine load affects both alike
    grid_a = LocalGrid(clients.node_ids, clients)
    grid_b = LocalGrid(clients.node_ids, clients)
    st_a: dict = {}
    st_b: dict = {}
    t_a = [run_round(fedavg, grid_a, 1, st_a)]
    t_b = [run_round(strat, grid_b, 1, st_b)]  # setup: profile + stratify + choose design
    setup = t_b[0]["server"]
    for r in range(2, rounds + 1):
        t_a.append(run_round(fedavg, grid_a, r, st_a))
        t_b.append(run_round(strat, grid_b, r, st_b))
    fa = [x["server"] for x in t_a[1:]]
    fb = [x["server"] for x in t_b[1:]]
    med_a, med_b = statistics.median(fa), statistics.median(fb)
    cpu_a = statistics.median(x["server_cpu"] for x in t_a[1:])
    cpu_b = statistics.median(x["server_cpu"] for x in t_b[1:])
    rec = strat.records[-1].to_json()
    return {
        "nodes": n_nodes,
        "clients_per_round": M,
        "rounds_timed": len(fa),
        "fedavg_ms": 1e3 * med_a,
        "stratified_ms": 1e3 * med_b,
        "overhead_ms": 1e3 * (med_b - med_a),
        "overhead_pct": 100.0 * (med_b - med_a) / med_a,
        "fedavg_cpu_ms": 1e3 * cpu_a,
        "stratified_cpu_ms": 1e3 * cpu_b,
        "overhead_cpu_pct": 100.0 * (cpu_b - cpu_a) / cpu_a,
        "fedavg_configure_ms": 1e3 * statistics.median(x["configure"] for x in t_a[1:]),
        "fedavg_aggregate_ms": 1e3 * statistics.median(x["aggregate"] for x in t_a[1:]),
        "stratified_configure_ms": 1e3 * statistics.median(x["configure"] for x in t_b[1:]),
        "stratified_aggregate_ms": 1e3 * statistics.median(x["aggregate"] for x in t_b[1:]),
        "setup_round_s": setup,
        "design": rec["design"],
        "n_strata": len(rec["m_h"]) if rec["m_h"] else 1,
        "pred_var_ratio_uniform_over_stratified": rec["var_ratio"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, nargs="+", default=[100, 1000, 10000])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument(
        "--out", default=str(Path(__file__).parent / "results" / "strategy_overhead.json")
    )
    args = ap.parse_args()
    logging.getLogger("flwr").setLevel(logging.WARNING)
    rows = [bench(n, args.rounds) for n in args.nodes]
    table = Table(title=f"Server time per round, {M} clients/round, 784-50-10 MLP (median)")
    cols = (
        "nodes",
        "FedAvg ms",
        "Stratified ms",
        "extra ms",
        "extra %",
        "CPU ms FedAvg / Strat.",
        "extra CPU %",
        "Strat. conf / agg ms",
        "setup round s",
        "design",
    )
    for col in cols:
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(
            f"{r['nodes']:,}",
            f"{r['fedavg_ms']:.2f}",
            f"{r['stratified_ms']:.2f}",
            f"{r['overhead_ms']:.2f}",
            f"{r['overhead_pct']:.0f}%",
            f"{r['fedavg_cpu_ms']:.2f} / {r['stratified_cpu_ms']:.2f}",
            f"{r['overhead_cpu_pct']:.0f}%",
            f"{r['stratified_configure_ms']:.2f} / {r['stratified_aggregate_ms']:.2f}",
            f"{r['setup_round_s']:.2f}",
            f"{r['design']} ({r['n_strata']} strata)",
        )
    Console(width=160).print(table)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "benchmark": "strategy_overhead",
        "command": "python benchmarks/strategy_overhead.py "
        + " ".join(
            f"--{k} {' '.join(map(str, v)) if isinstance(v, list) else v}"
            for k, v in (("nodes", args.nodes), ("rounds", args.rounds))
        ),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "loadavg_1m": os.getloadavg()[0],
        },
        "rows": rows,
    }
    out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
