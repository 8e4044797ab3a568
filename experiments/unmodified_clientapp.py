"""Issue 11, "an unmodified ClientApp is a first-class path": plain FedAvg vs StratifiedSelection
with an unmodified ClientApp vs with the one-line profiling handler, on the example app in
``examples/flower-app`` (numpy softmax regression on sklearn digits).

Setting of the issue: Dirichlet(0.3) label skew over 20 nodes, 5 nodes a round, 20 local SGD
steps (batch 32, lr 0.5), seeds 0-4; "final" = test accuracy after round 6 (6-round runs) and
the mean test accuracy of rounds 8-10 (10-round runs). Variants (run config ``mode``):

* ``fedavg``: Flower's FedAvg sampling 5 of 20 nodes (``random`` seeded with the seed);
* ``unmodified``: ``StratifiedSelection(FedAvg(...), profiling="auto", seed=seed)`` with
  ``digits_app.client_plain:app`` (train / evaluate only, no query handler);
* ``profiled``: ``profiling="query"`` with ``digits_app.client_app:app`` (``register_profiling``).

The seed also seeds the clients' local SGD; the partition is the app's (fixed seed), so every
variant and seed sees the same data.

Engines: ``local`` (default) runs the example's ServerApp logic and ClientApp objects in process
on :class:`fedstrat.strategies.LocalGrid` (each message is answered by ``client_app(message,
context)``, exactly what a SuperNode calls; node ids fixed, so runs are reproducible);
``simulation`` runs them through Flower's ``run_simulation`` (Ray; node ids random per run).

Every ``ERROR`` log record emitted during a run is counted (``error_records``) and the
stratified variants' per-round ``decision`` (sampling.jsonl's) is kept.

    python experiments/unmodified_clientapp.py --seeds 0,1,2,3,4 \
        --out experiments/results/unmodified_clientapp.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples" / "flower-app"))
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

from digits_app import client_app, client_plain, server_app  # noqa: E402
from flwr.app import Context, RecordDict  # noqa: E402
from flwr.clientapp import ClientApp  # noqa: E402
from flwr.serverapp import Grid, ServerApp  # noqa: E402

VARIANTS = {  # name -> (run config mode, ClientApp)
    "fedavg": ("fedavg", client_plain.app),
    "unmodified": ("auto", client_plain.app),
    "profiled": ("query", client_app.app),
}
BASE = {"alpha": 0.3, "clients-per-round": 5, "local-steps": 20, "local-epochs": 1, "lr": 0.5}


class ErrorCounter(logging.Handler):
    """Keeps every record at level ERROR or above."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(f"{record.name}: {record.getMessage()[:200]}")


def _decision(rec: Any) -> dict[str, Any]:
    d = rec.decision
    out: dict[str, Any] = {"round": rec.round, "design": rec.design,
                           "n_strata": None if rec.m_h is None else len(rec.m_h)}
    if d is not None:
        out.update(mode=d.mode, evidence=d.evidence, reason=d.reason,
                   pred_var=None if d.predicted is None else d.predicted.to_json(),
                   pred_var_fedavg=(None if d.predicted_fedavg is None
                                    else d.predicted_fedavg.to_json()))
    return out


def _server(cfg: dict[str, Any], out: dict[str, Any]):
    def main(grid: Grid, context: Context) -> None:
        context = Context(run_id=context.run_id, node_id=context.node_id,
                          node_config=context.node_config, state=context.state,
                          run_config={**context.run_config, **cfg})
        strategy, result = server_app.run(grid, context)
        out["accuracy"] = [float(result.evaluate_metrics_serverapp[r]["accuracy"])
                           for r in sorted(result.evaluate_metrics_serverapp)]
        out["decisions"] = [_decision(r) for r in getattr(strategy, "records", [])]

    return main


def _with_run_config(app: ClientApp, cfg: dict[str, Any], query: bool) -> ClientApp:
    """``app`` seen by nodes whose run config is ``cfg`` (``run_simulation`` passes none): the
    same train / evaluate (and, with ``query``, query) handlers, nothing added."""
    outer = ClientApp()

    def forward(msg, context):
        ctx = Context(run_id=context.run_id, node_id=context.node_id,
                      node_config=context.node_config, state=context.state,
                      run_config={**context.run_config, **cfg})
        return app(msg, ctx)

    outer.train()(forward)
    outer.evaluate()(forward)
    if query:
        outer.query()(forward)
    return outer


def run_one(variant: str, seed: int, rounds: int, nodes: int, engine: str) -> dict[str, Any]:
    mode, client = VARIANTS[variant]
    cfg = {**BASE, "mode": mode, "seed": seed, "num-server-rounds": rounds}
    out: dict[str, Any] = {}
    counter = ErrorCounter()
    loggers = [logging.getLogger(), logging.getLogger("flwr")]
    for lg in loggers:
        lg.addHandler(counter)
    t0 = time.perf_counter()
    try:
        if engine == "local":
            from fedstrat.strategies import LocalGrid
            from fedstrat.strategies.local_grid import client_app_handler

            ids = [1000 + 7 * k for k in range(nodes)]
            grid = LocalGrid(ids, client_app_handler(client, ids, cfg))
            ctx = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(),
                          run_config=dict(cfg))
            _server(cfg, out)(grid, ctx)
        else:
            from flwr.simulation import run_simulation

            server = ServerApp()
            server.main()(_server(cfg, out))
            run_simulation(server, _with_run_config(client, cfg, mode == "query"),
                           num_supernodes=nodes,
                           backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                                           "init_args": {"num_cpus": 2, "num_gpus": 0}})
    finally:
        for lg in loggers:
            lg.removeHandler(counter)
    acc = out.get("accuracy", [])
    return {"variant": variant, "seed": seed, "rounds": rounds, "accuracy": acc,
            "final": acc[-1] if acc else None,
            "last3": statistics.fmean(acc[-3:]) if len(acc) >= 4 else None,
            "error_records": counter.records, "decisions": out.get("decisions", []),
            "seconds": round(time.perf_counter() - t0, 2)}


def summarize(runs: list[dict[str, Any]], key: str) -> dict[str, Any]:
    by = {v: {r["seed"]: r[key] for r in runs if r["variant"] == v} for v in VARIANTS}
    seeds = sorted(by["fedavg"])
    out: dict[str, Any] = {}
    for v, vals in by.items():
        xs = [vals[s] for s in seeds if s in vals]
        out[v] = {"per_seed": xs, "median": statistics.median(xs), "mean": statistics.fmean(xs),
                  "better_than_fedavg": sum(vals[s] > by["fedavg"][s] for s in seeds),
                  "worse_than_fedavg": sum(vals[s] < by["fedavg"][s] for s in seeds)}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument("--rounds", default="6,10", help="settings: 6 -> final, 10 -> last3")
    ap.add_argument("--nodes", type=int, default=20)
    ap.add_argument("--engine", choices=("local", "simulation"), default="local")
    ap.add_argument("--brief", action="store_true",
                    help="per round only mode / evidence / strata of the decision (smaller JSON)")
    ap.add_argument("--out", default=str(ROOT / "experiments/results/unmodified_clientapp.json"))
    a = ap.parse_args(argv)
    seeds = [int(s) for s in a.seeds.split(",")]
    report: dict[str, Any] = {"command": "python experiments/unmodified_clientapp.py "
                              + " ".join(sys.argv[1:] if argv is None else argv),
                              "setting": {**BASE, "nodes": a.nodes, "engine": a.engine},
                              "runs": [], "summary": {}}
    for rounds in (int(r) for r in a.rounds.split(",")):
        runs = []
        for seed in seeds:
            for variant in VARIANTS:
                r = run_one(variant, seed, rounds, a.nodes, a.engine)
                print(f"rounds={rounds} seed={seed} {variant:10s} final={r['final']:.4f} "
                      f"last3={r['last3'] or 0:.4f} errors={len(r['error_records'])} "
                      f"{r['seconds']}s", flush=True)
                if a.brief:
                    r["decisions"] = [{k: d.get(k) for k in ("round", "mode", "evidence",
                                                             "n_strata")}
                                      for d in r["decisions"]]
                    r["accuracy"] = [round(x, 5) for x in r["accuracy"]]
                runs.append(r)
        report["runs"] += runs
        key = "final" if rounds < 8 else "last3"
        report["summary"][f"{rounds}_rounds_{key}"] = summarize(runs, key)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(report, indent=None if a.brief else 1) + "\n")
    print(json.dumps(report["summary"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
