"""Strategy-only server CPU per round: Flower FedAvg vs StratifiedSelection(FedAvg), side by side.

Grid: model size d in {40k, 1M, 10M} float32 parameters x N in {100, 10k, 100k} connected nodes,
10 clients a round. In-process fake Grid (:class:`fedstrat.strategies.local_grid.LocalGrid`,
instant replies); every node has a Dirichlet(0.1) label mix, its size and its update
``Delta_i = a_i u + b_i v`` (two fixed random directions, coefficients from the label mix, so
that updates are stratified by label). Timed: ``configure_train`` + ``aggregate_train`` of each
strategy, minus the time spent inside the fake clients (their replies are built in the grid's
``send_and_receive``, which the wrapper also calls for profiling in round 1). The two strategies
run interleaved round by round, so that machine load affects both alike.

Round 1 of the wrapper profiles every node (label histogram + size), stratifies and allocates:
reported separately (``setup``, server CPU and wall). The per-round figure is the median over the
following rounds; the ratio's uncertainty is the spread of the per-round ratios (interquartile
range over the timed rounds). Memory per node: the growth of traced Python/numpy memory held by
the wrapper after its setup round (tracemalloc, a separate setup run at the smallest d), and the
bytes of its checkpoint ``state_dict()`` as JSON.

Run: ``python benchmarks/strategy_overhead.py`` (full grid, ~5 min on 2 loaded cores),
``--sizes 40k --nodes 100 10000 --rounds 10`` for a part. Rounds are capped by d x N (fewer
rounds where one round is long): see ``rounds_for``. Writes
``benchmarks/results/strategy_overhead.json``. ``--steps --sizes 1M --nodes 100``: the
wrapper's per-step CPU at one cell instead (printed, no JSON).
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import platform
import statistics
import time
import tracemalloc
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

from fedstrat.strategies import SelectionOptions, StratifiedSelection  # noqa: E402
from fedstrat.strategies.local_grid import LocalGrid  # noqa: E402
from fedstrat.wire import NUM_EXAMPLES, PROFILE_KEY  # noqa: E402

CLASSES = 10
M = 10
SIZES = {"40k": 39_760, "1M": 1_000_000, "10M": 10_000_000}


def shapes_for(d: int) -> dict[str, tuple[int, ...]]:
    """Array shapes of a model with ``d`` parameters: the 784-50-10 MLP at 39,760, else an
    embedding table ``(d // 16 - 11, 16)`` plus a 16 -> 10 head (``d`` - 6 parameters)."""
    if d == 39_760:
        return {"fc1.weight": (50, 784), "fc1.bias": (50,), "fc2.weight": (10, 50),
                "fc2.bias": (10,)}
    return {"emb.weight": (d // 16 - 11, 16), "head.weight": (10, 16), "head.bias": (10,)}


def rounds_for(d: int, n: int, rounds: int) -> int:
    """Timed rounds (after the setup round): ``rounds`` up to 1M x 10k, fewer above."""
    if d >= 10_000_000:
        return min(rounds, 4)
    if d >= 1_000_000 or n >= 100_000:
        return min(rounds, 8)
    return rounds


class FakeClients:
    """Instant replies: profile (size, label histogram) and train (``x_g + a_i u + b_i v``).

    ``spent``/``spent_cpu``: wall / CPU seconds inside the handler (subtracted from the
    strategies' times, so that only server work is counted)."""

    def __init__(
        self, n_nodes: int, shapes: dict[str, tuple[int, ...]], seed: int = 0, alpha: float = 0.1
    ) -> None:
        rng = np.random.default_rng(seed)
        self.node_ids = [int(v) for v in rng.choice(2**62, size=n_nodes, replace=False) + 1]
        self.index = {n: i for i, n in enumerate(self.node_ids)}
        self.props = rng.dirichlet(np.full(CLASSES, alpha), size=n_nodes)
        self.sizes = rng.integers(20, 500, size=n_nodes)
        alpha, beta = rng.normal(size=CLASSES), rng.normal(size=CLASSES)
        self.coef = np.stack([self.props @ alpha, self.props @ beta], axis=1).astype(np.float32)
        self.dirs = {
            k: rng.normal(scale=0.01, size=(2, *s)).astype(np.float32) for k, s in shapes.items()
        }
        self.spent = 0.0
        self.spent_cpu = 0.0

    def __call__(self, msg: Message) -> Message:
        w0, c0 = time.perf_counter(), time.process_time()
        try:
            return self._reply(msg)
        finally:
            self.spent += time.perf_counter() - w0
            self.spent_cpu += time.process_time() - c0

    def _reply(self, msg: Message) -> Message:
        i = self.index[msg.metadata.dst_node_id]
        if msg.metadata.message_type == MessageType.QUERY:
            hist = np.round(self.props[i] * self.sizes[i]).tolist()
            rec = MetricRecord({NUM_EXAMPLES: int(self.sizes[i]), "label-hist": hist})
            return Message(RecordDict({PROFILE_KEY: rec}), reply_to=msg)
        a, b = self.coef[i]
        new = {}
        for k, arr in msg.content["arrays"].items():
            x = arr.numpy() + a * self.dirs[k][0]
            x += b * self.dirs[k][1]
            new[k] = Array(x)
        metrics = MetricRecord({NUM_EXAMPLES: int(self.sizes[i]), "train-loss": 1.0})
        return Message(RecordDict({"arrays": ArrayRecord(new), "metrics": metrics}), reply_to=msg)


def initial_arrays(shapes: dict[str, tuple[int, ...]], seed: int = 0) -> ArrayRecord:
    rng = np.random.default_rng(seed)
    return ArrayRecord(
        {k: Array(0.05 * rng.standard_normal(size=s, dtype=np.float32)) for k, s in
         shapes.items()}
    )


def run_round(strategy, grid: LocalGrid, clients: FakeClients, r: int, state: dict) -> dict:
    """One round; server wall and CPU seconds of configure + aggregate (client time removed)."""
    arrays = state["arrays"]
    s0, sc0 = clients.spent, clients.spent_cpu
    w0, c0 = time.perf_counter(), time.process_time()
    msgs = list(strategy.configure_train(r, arrays, ConfigRecord(), grid))
    w1, c1 = time.perf_counter(), time.process_time()
    s1, sc1 = clients.spent, clients.spent_cpu
    replies = list(grid.send_and_receive(msgs, timeout=10))
    s2 = clients.spent
    w2, c2 = time.perf_counter(), time.process_time()
    new, _ = strategy.aggregate_train(r, replies)
    w3, c3 = time.perf_counter(), time.process_time()
    grid.sent.clear()  # the fake grid keeps every message; keep memory flat
    del msgs, replies
    if new is not None:
        state["arrays"] = new
    client_conf, client_conf_cpu = s1 - s0, sc1 - sc0  # profiling replies inside configure
    return {
        "configure": (w1 - w0) - client_conf,
        "aggregate": w3 - w2,
        "server": (w1 - w0) - client_conf + (w3 - w2),
        "server_cpu": (c1 - c0) - client_conf_cpu + (c3 - c2),
        "clients": (s2 - s1) + client_conf,
    }


def make_stratified() -> StratifiedSelection:
    kw = {"clients_per_round": M, "seed": 0, "profile_timeout": 600}
    if "profiling" in SelectionOptions.names():  # profile with label histograms at round 1
        kw["profiling"] = "query"
    return StratifiedSelection(FedAvg(fraction_evaluate=0.0), **kw)


def iqr(values: list[float]) -> tuple[float, float]:
    q = np.quantile(np.asarray(values), [0.25, 0.75])
    return float(q[0]), float(q[1])


def bench(d: int, n_nodes: int, rounds: int, alpha: float = 0.1) -> dict:
    shapes = shapes_for(d)
    clients = FakeClients(n_nodes, shapes, alpha=alpha)
    fedavg = FedAvg(
        fraction_train=M / n_nodes, fraction_evaluate=0.0, min_train_nodes=M, min_available_nodes=M
    )
    strat = make_stratified()
    grid_a = LocalGrid(clients.node_ids, clients)
    grid_b = LocalGrid(clients.node_ids, clients)
    x0 = initial_arrays(shapes)
    st_a, st_b = {"arrays": x0}, {"arrays": x0}
    t_a = [run_round(fedavg, grid_a, clients, 1, st_a)]
    t_b = [run_round(strat, grid_b, clients, 1, st_b)]  # setup: profile + stratify + allocate
    timed = rounds_for(d, n_nodes, rounds)
    for r in range(2, timed + 2):
        t_a.append(run_round(fedavg, grid_a, clients, r, st_a))
        t_b.append(run_round(strat, grid_b, clients, r, st_b))
    cpu_a = [x["server_cpu"] for x in t_a[1:]]
    cpu_b = [x["server_cpu"] for x in t_b[1:]]
    ratios = [b / a for a, b in zip(cpu_a, cpu_b, strict=True) if a > 0]
    rec = strat.records[-1].to_json()
    med = statistics.median
    return {
        "d": int(sum(int(np.prod(s)) for s in shapes.values())),
        "size": next(k for k, v in SIZES.items() if v == d),
        "nodes": n_nodes,
        "clients_per_round": M,
        "rounds_timed": len(cpu_a),
        "fedavg_cpu_ms": 1e3 * med(cpu_a),
        "stratified_cpu_ms": 1e3 * med(cpu_b),
        "cpu_ratio": med(ratios),
        "cpu_ratio_iqr": iqr(ratios),
        "fedavg_wall_ms": 1e3 * med(x["server"] for x in t_a[1:]),
        "stratified_wall_ms": 1e3 * med(x["server"] for x in t_b[1:]),
        "stratified_configure_ms": 1e3 * med(x["configure"] for x in t_b[1:]),
        "stratified_aggregate_ms": 1e3 * med(x["aggregate"] for x in t_b[1:]),
        "fedavg_round1_cpu_s": t_a[0]["server_cpu"],
        "setup_cpu_s": t_b[0]["server_cpu"],
        "setup_wall_s": t_b[0]["server"],
        "setup_clients_s": t_b[0]["clients"],
        "design": rec["design"],
        "n_strata": len(rec["m_h"]) if rec["m_h"] else 1,
        "sketch_method": strat.sketch_method,
    }


def memory_per_node(n_nodes: int, alpha: float = 0.1) -> dict:
    """Traced memory the wrapper keeps after its setup round at ``n_nodes`` (d = 40k)."""
    shapes = shapes_for(SIZES["40k"])
    clients = FakeClients(n_nodes, shapes, alpha=alpha)
    grid = LocalGrid(clients.node_ids, clients)
    state = {"arrays": initial_arrays(shapes)}
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    strat = make_stratified()
    run_round(strat, grid, clients, 1, state)
    run_round(strat, grid, clients, 2, state)
    state.clear()
    gc.collect()
    held = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    ckpt = len(json.dumps(strat.state_dict()))
    return {"nodes": n_nodes, "held_bytes": held, "held_bytes_per_node": held / n_nodes,
            "state_json_bytes": ckpt, "state_json_bytes_per_node": ckpt / n_nodes}


def print_table(rows: list[dict], mem: list[dict]) -> None:
    table = Table(title=f"Strategy-only server CPU per round, {M} clients/round (median)")
    cols = ("d", "nodes", "rounds", "FedAvg CPU ms", "Strat. CPU ms", "ratio [IQR]",
            "Strat. conf / agg wall ms", "setup CPU s (wall s)", "design")
    for col in cols:
        table.add_column(col, justify="right")
    for r in rows:
        lo, hi = r["cpu_ratio_iqr"]
        table.add_row(
            r["size"], f"{r['nodes']:,}", str(r["rounds_timed"]),
            f"{r['fedavg_cpu_ms']:.1f}", f"{r['stratified_cpu_ms']:.1f}",
            f"{r['cpu_ratio']:.2f}x [{lo:.2f}, {hi:.2f}]",
            f"{r['stratified_configure_ms']:.1f} / {r['stratified_aggregate_ms']:.1f}",
            f"{r['setup_cpu_s']:.2f} ({r['setup_wall_s']:.2f})",
            f"{r['design']} ({r['n_strata']})",
        )
    console = Console(width=170)
    console.print(table)
    for m in mem:
        console.print(
            f"memory at {m['nodes']:,} nodes: {m['held_bytes_per_node']:.0f} B/node held "
            f"({m['held_bytes'] / 2**20:.1f} MiB), checkpoint {m['state_json_bytes_per_node']:.0f}"
            " B/node"
        )


#: the steps ``--steps`` times: names in the modules that call them, so that patching the name
#: there replaces the call (module, attribute, label)
STEP_NAMES = [
    ("fedstrat.strategies.stratified_selection", n, n) for n in (
        "triage_replies", "screen_triage", "observe_replies", "aggregate_inner",
        "inner_payload", "fan_out", "round_line")
] + [("fedstrat.strategies.reply_screen", n, n) for n in ("scan_updates", "screen_magnitudes",
                                                          "ht_arrays")
] + [("fedstrat.strategies.inner_aggregate", n, n) for n in (
    "rewrite_replies", "consistent_replies", "rewritten_contents", "consistent_contents",
    "view_arrays", "affine_ht")]


def step_profile(d: int, n_nodes: int, rounds: int, alpha: float = 0.1) -> dict[str, float]:
    """Median CPU ms per round of the wrapper's steps (rounds 3..), by patching the names in
    :data:`STEP_NAMES`, the policy's ``plan``/``observe``, the node waiter, the count-sketch
    stream and the wrapped FedAvg with timers (nested steps count in both)."""
    import collections
    import importlib

    acc: dict[str, float] = collections.defaultdict(float)
    undo: list[tuple[object, str, object]] = []

    def timed(obj, name: str, label: str) -> None:
        f = getattr(obj, name)
        undo.append((obj, name, obj.__dict__.get(name, f)))

        def wrapper(*a, **k):
            t = time.process_time()
            try:
                return f(*a, **k)
            finally:
                acc[label] += time.process_time() - t
        setattr(obj, name, wrapper)

    for mod, name, label in STEP_NAMES:
        timed(importlib.import_module(mod), name, label)
    stream = importlib.import_module("fedstrat.sampling.sketch").CountSketchStream
    timed(stream, "add", "sketch add")
    timed(stream, "result", "sketch bucket sums")
    try:
        shapes = shapes_for(d)
        clients = FakeClients(n_nodes, shapes, alpha=alpha)
        strat = make_stratified()
        timed(strat.policy, "plan", "policy plan")
        timed(strat.policy, "observe", "policy observe")
        timed(strat._waiter, "available", "node waiter")
        timed(strat.strategy, "aggregate_train", "FedAvg aggregate_train")
        grid = LocalGrid(clients.node_ids, clients)
        state = {"arrays": initial_arrays(shapes)}
        per: dict[str, list[float]] = collections.defaultdict(list)
        for r in range(1, rounds + 3):
            before = dict(acc)
            cpu = run_round(strat, grid, clients, r, state)["server_cpu"]
            if r > 2:
                per["total"].append(cpu)
                for k, v in acc.items():
                    per[k].append(v - before.get(k, 0.0))
    finally:
        for obj, name, original in reversed(undo):  # the module functions and the stream's
            setattr(obj, name, original)
    return {k: 1e3 * statistics.median(v) for k, v in per.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    ap.add_argument("--nodes", type=int, nargs="+", default=[100, 10_000, 100_000])
    ap.add_argument("--rounds", type=int, default=12, help="timed rounds (capped by rounds_for)")
    ap.add_argument("--memory-nodes", type=int, nargs="*", default=[10_000])
    ap.add_argument(
        "--out", default=str(Path(__file__).parent / "results" / "strategy_overhead.json")
    )
    ap.add_argument("--alpha", type=float, default=0.1,
                    help="Dirichlet concentration of the nodes' label mix (1000: IID labels, "
                    "so the wrapper runs FedAvg rounds, drawn balanced)")
    ap.add_argument("--steps", action="store_true",
                    help="per-step CPU of the wrapper at the first --sizes / --nodes (no JSON)")
    args = ap.parse_args()
    logging.getLogger("flwr").setLevel(logging.WARNING)
    if args.steps:
        steps = step_profile(SIZES[args.sizes[0]], args.nodes[0], args.rounds, args.alpha)
        print(f"d={args.sizes[0]} N={args.nodes[0]:,}: median CPU ms per round, rounds 3..")
        for k, v in sorted(steps.items(), key=lambda kv: -kv[1]):
            print(f"  {k:26s} {v:7.3f}")
        return
    t0 = time.perf_counter()
    rows = []
    for size in args.sizes:
        for n in args.nodes:
            rows.append(bench(SIZES[size], n, args.rounds, args.alpha))
            r = rows[-1]
            print(f"d={size} N={n:,}: ratio {r['cpu_ratio']:.2f}x, setup {r['setup_cpu_s']:.2f}"
                  f" s CPU ({time.perf_counter() - t0:.0f} s so far)", flush=True)
            gc.collect()
    mem = [memory_per_node(n, args.alpha) for n in args.memory_nodes]
    print_table(rows, mem)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "benchmark": "strategy_overhead",
        "command": "python benchmarks/strategy_overhead.py "
        + " ".join(
            f"--{k} {' '.join(map(str, v)) if isinstance(v, list) else v}"
            for k, v in (("sizes", args.sizes), ("nodes", args.nodes), ("rounds", args.rounds),
                         ("memory-nodes", args.memory_nodes), ("alpha", args.alpha))
        ),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "loadavg_1m_end": os.getloadavg()[0],
            "numpy": np.__version__,
        },
        "targets": {"cpu_ratio": 1.5, "setup_cpu_s_at_100k": 10.0},
        "runtime_s": time.perf_counter() - t0,
        "rows": rows,
        "memory": mem,
    }
    out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
