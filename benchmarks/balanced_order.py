"""Server CPU of a balanced FedAvg round when nodes are ordered by their last update sketches.

FedAvg rounds draw one node from each of ``m`` blocks of similar nodes
(``fedstrat.strategies.balanced_draw``); without profiled histograms the order comes from the
nodes' last update sketches, which change every round for the ``m`` nodes that trained. This
times :meth:`BalancedDraw.sampler` plus one draw per round on a registry of ``--nodes`` nodes
with ``--dim``-dimensional sketches, ``m`` new sketches after each round, side by side for
``REFRESH = 0`` (the order made again every round, as before the refresh rule) and the shipped
``REFRESH`` (made again once that fraction of its nodes have new sketches).

    python benchmarks/balanced_order.py                      # 100,000 x 64, m = 50, 12 rounds
    python benchmarks/balanced_order.py --nodes 2000 --m 10  # Ward's order instead of bisection

Writes ``benchmarks/results/balanced_order.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np

from fedstrat.strategies import balanced_draw
from fedstrat.strategies.node_registry import NodeRegistry
from fedstrat.strategies.plan import PopulationFrame

OUT = Path(__file__).resolve().parent / "results" / "balanced_order.json"


def run(nodes: int, dim: int, m: int, rounds: int, refresh: float) -> list[float]:
    """CPU seconds of each round's sampler + draw with ``REFRESH = refresh``."""
    rng = np.random.default_rng(0)
    reg = NodeRegistry()
    for n in range(1, nodes + 1):
        reg.observe_train(n, num_examples=int(rng.integers(20, 500)), sketch=rng.normal(size=dim))
    ids = list(range(1, nodes + 1))
    sizes = reg.sizes(ids)
    shipped, balanced_draw.REFRESH = balanced_draw.REFRESH, refresh
    try:
        draw = balanced_draw.BalancedDraw()
        out = []
        for r in range(rounds):
            t = time.process_time()
            draw.sampler(PopulationFrame(r, ids, sizes, m, reg, key=1)).sample(
                np.random.default_rng(r))
            out.append(time.process_time() - t)
            for n in rng.choice(nodes, size=m, replace=False):  # the round's replies
                reg.observe_train(int(n) + 1, sketch=rng.normal(size=dim))
        return out
    finally:
        balanced_draw.REFRESH = shipped


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--m", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    rows = {}
    for name, refresh in (("every_round", 0.0), ("shipped", balanced_draw.REFRESH)):
        secs = run(args.nodes, args.dim, args.m, args.rounds, refresh)
        rows[name] = {"refresh": refresh, "cpu_s": secs, "first_s": secs[0],
                      "median_later_s": statistics.median(secs[1:])}
        print(f"{name:12s} REFRESH={refresh}: first round {secs[0]:.3f} s CPU, later rounds "
              f"median {rows[name]['median_later_s'] * 1e3:.2f} ms", flush=True)
    payload = {
        "benchmark": "balanced_order",
        "command": f"python benchmarks/balanced_order.py --nodes {args.nodes} --dim {args.dim} "
                   f"--m {args.m} --rounds {args.rounds}",
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "loadavg_1m_end": os.getloadavg()[0], "numpy": np.__version__},
        "rows": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
