"""Does the profiled design cut the variance of the aggregate on the example app? Exact MSE of
FedAvg's 5-of-20 aggregate against the full-participation aggregate, and Monte Carlo MSE of
``StratifiedSelection(FedAvg, profiling="query")``'s round-1 design, on ``examples/flower-app``.

Setting (issue 11, ``experiments/README.md`` section 6): numpy softmax regression on sklearn
digits, Dirichlet(0.3) label skew over N = 20 nodes (the app's partition), m = 5 nodes a round,
20 local SGD steps (batch 32, lr 0.5). For each data seed ``s`` and K in ``--rounds-before``:

* Global model ``x_g``: K rounds of full-participation training from the zero model (every
  node trains with the app's own ``task.train`` and SGD seed ``(s, round, partition)``, as the
  ClientApp does; the aggregate is ``sum_i p_i x_i`` with ``p_i = n_i / n``).
* Updates ``Delta_i = x_i - x_g`` of all 20 nodes at round K + 1 (seed ``(s, K + 1, i)``) and
  the target ``T = sum_i p_i Delta_i`` (what full participation would apply).
* **FedAvg, exact**: ``E||sum_{i in S} n_i Delta_i / sum_{i in S} n_i - T||^2`` with ``S``
  uniform over all C(20, 5) = 15,504 subsets, every subset enumerated (float64; exact up to
  rounding, relative error ~1e-12). This is Flower's FedAvg(fraction_train=5/20) aggregate.
* **Uniform HT, exact**: the same enumeration for ``(N / m) sum_{i in S} p_i Delta_i``.
* **FedAvg with 10 of 20, exact** (``fedavg_10_mse_exact``; C(20, 10) = 184,756 subsets): the
  MSE of the 10-of-20 runs whose accuracy ``--accuracy`` measures.
* **Strategy, Monte Carlo**: ``--draws`` independent runs of one round of
  ``StratifiedSelection(FedAvg(fraction_evaluate=0.0), clients_per_round=5,
  profiling="query", seed=10000 * s + j)`` (j = 0 .. draws - 1) on
  :class:`fedstrat.strategies.LocalGrid` with a ClientApp whose train handler returns
  ``x_g + Delta_i`` (fixed, so only the draw is random) plus the example's one-line
  ``register_profiling`` handler (label histograms, sizes). Its round 1 is what the profiled
  path of the example runs in round 1: a design chosen from label-histogram strata. Error of a
  run: ``||x_new - x_g - T||^2`` (the aggregate comes back as float32: a rounding error of
  ~1e-7 relative, far below the Monte Carlo error). Reported: mean ± s.e. (sample sd /
  sqrt(draws)). The draws do not depend on the updates, so the same ``j`` draws the same nodes
  for every K (common random numbers across K).
* Ratio FedAvg / strategy with s.e. by the delta method: ``se(R) = R * se(MSE_s) / MSE_s``
  (FedAvg's MSE is exact, so only the strategy's Monte Carlo error enters).
* The strategy's own prediction from its ``RoundRecord`` (round 1: the strata's sigma_h are
  label-histogram proxies, not update units, so only ratios are comparable with the
  measurement): ``pred_var_uniform / pred_var`` (uniform HT / design) and
  ``decision.predicted_fedavg / decision.predicted`` (FedAvg / design; at round 1 these bands
  are None and the two predicted variances are read from the decision's reason line,
  "predicted variance V vs fedavg F"); median, min, max over the draws (the strata and
  allocation differ between draws).
* ``designs``: how often each (design, m_h) was drawn (``--per-draw``: also each draw's
  strategy seed, squared error, responder node ids and the record's weights). A draw that
  raises is recorded (``failures``: strategy seed and traceback) and left out of the mean.

``--accuracy`` also runs Flower's FedAvg on the app (``run_one("fedavg", ...)`` of
``experiments/unmodified_clientapp.py``, in process on LocalGrid) with 5, 10 and 20 of 20 nodes a
round, 6 rounds, ``--accuracy-seeds`` (default 0-9): final (round-6) central test accuracy.

    nice -n 10 python experiments/example_app_mse.py --accuracy \
        --out experiments/results/example_app_mse.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import re
import statistics
import subprocess
import sys
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples" / "flower-app"))
sys.path.insert(0, str(ROOT / "experiments"))
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

from digits_app import task  # noqa: E402
from flwr.app import (  # noqa: E402
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp  # noqa: E402
from flwr.serverapp.strategy import FedAvg  # noqa: E402

from fedstrat.clients import register_profiling  # noqa: E402
from fedstrat.strategies import LocalGrid, StratifiedSelection  # noqa: E402
from fedstrat.strategies.local_grid import client_app_handler  # noqa: E402

N, M_PER_ROUND = 20, 5
CFG = {"alpha": 0.3, "clients-per-round": M_PER_ROUND, "local-steps": 20, "local-epochs": 1,
       "lr": 0.5}
NODE_IDS = [1000 + 7 * k for k in range(N)]
#: the design choice's reason line, "... predicted variance V vs fedavg F (R x lower) ..."
PRED_REASON = re.compile(r"predicted variance ([0-9.eE+-]+) vs fedavg ([0-9.eE+-]+)")


class LogCounter(logging.Handler):
    """Counts WARNING and ERROR records by (level, first 160 characters)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.counts: Counter[str] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        self.counts[f"{record.levelname}: {record.getMessage()[:160]}"] += 1


def _flat(a: ArrayRecord) -> np.ndarray:
    return np.concatenate([a["w"].numpy().ravel(), a["b"].numpy().ravel()]).astype(np.float64)


def _unflat(v: np.ndarray, like: ArrayRecord) -> ArrayRecord:
    shape = like["w"].numpy().shape
    k = int(np.prod(shape))
    return ArrayRecord({"w": Array(v[:k].reshape(shape).astype(np.float32)),
                        "b": Array(v[k:].astype(np.float32))})


def setup(seed: int, k_before: int):
    """Contexts, sizes, the global model after ``k_before`` full rounds, the round-(K+1)
    updates ``ArrayRecord`` per node, their flat deltas ``D`` (N x d) and ``p``."""
    cfg = {**CFG, "seed": seed}
    ctxs = [Context(run_id=1, node_id=NODE_IDS[i],
                    node_config={"partition-id": i, "num-partitions": N},
                    state=RecordDict(), run_config=cfg) for i in range(N)]
    data = [task.load_data(c) for c in ctxs]
    n = np.array([len(y) for _, y in data], dtype=float)
    p = n / n.sum()
    g = task.init_arrays()
    steps, lr = int(CFG["local-steps"]), float(CFG["lr"])
    for r in range(1, k_before + 1):
        outs = [_flat(task.train(g, x, y, 1, lr, (seed, r, i), steps=steps)[0])
                for i, (x, y) in enumerate(data)]
        g = _unflat(p @ np.array(outs), g)
    xg = _flat(g)
    upd = [task.train(g, x, y, 1, lr, (seed, k_before + 1, i), steps=steps)[0]
           for i, (x, y) in enumerate(data)]
    D = np.array([_flat(u) - xg for u in upd])  # noqa: N806 - matrix
    return cfg, n, p, g, xg, upd, D


def exact_mse(n: np.ndarray, p: np.ndarray, D: np.ndarray,  # noqa: N803
              m: int = M_PER_ROUND) -> tuple[float, float]:
    """(FedAvg, uniform HT) exact MSE against ``T = p @ D`` over all C(N, m) subsets."""
    T = p @ D  # noqa: N806
    E = D - T  # noqa: N806 - FedAvg's error is sum_S w_i E_i (its weights sum to 1)
    G_e, G_d, dT = E @ E.T, D @ D.T, D @ T  # noqa: N806
    subsets = np.array(list(itertools.combinations(range(N), m)))
    ind = np.zeros((len(subsets), N))
    np.put_along_axis(ind, subsets, 1.0, axis=1)
    w = ind * n
    w /= w.sum(axis=1, keepdims=True)
    fedavg = np.einsum("si,ij,sj->s", w, G_e, w)
    h = ind * p * (N / m)
    ht = np.einsum("si,ij,sj->s", h, G_d, h) - 2 * h @ dT + T @ T
    return float(fedavg.mean()), float(ht.mean())


def fake_app(upd: list[ArrayRecord], n: np.ndarray) -> ClientApp:
    """Train returns the fixed ``upd[partition]``; the example's profiling handler."""
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        i = int(context.node_config["partition-id"])
        content = RecordDict({"arrays": upd[i],
                              "metrics": MetricRecord({"num-examples": int(n[i])})})
        return Message(content, reply_to=msg)

    register_profiling(app, lambda ctx: (np.bincount(task.load_data(ctx)[1], minlength=10),
                                         len(task.load_data(ctx)[1])))
    return app


def strategy_mc(seed: int, draws: int, cfg: dict[str, Any], g: ArrayRecord, xg: np.ndarray,
                T: np.ndarray, upd: list[ArrayRecord], n: np.ndarray,  # noqa: N803
                per_draw: bool = False) -> dict[str, Any]:
    app = fake_app(upd, n)
    errs: list[float] = []
    rows: list[list[Any]] = []
    designs: Counter[str] = Counter()
    pred_u, pred_f, failures = [], [], []
    for j in range(draws):
        sseed = 10_000 * seed + j
        try:
            grid = LocalGrid(NODE_IDS, client_app_handler(app, NODE_IDS, cfg))
            strat = StratifiedSelection(FedAvg(fraction_evaluate=0.0),
                                        clients_per_round=M_PER_ROUND, profiling="query",
                                        seed=sseed)
            res = strat.start(grid=grid, initial_arrays=g, num_rounds=1,
                              train_config=ConfigRecord({"lr": float(cfg["lr"])}))
            e = _flat(res.arrays) - xg - T
            rec = strat.records[0]
        except Exception:  # noqa: BLE001 - recorded, reported
            failures.append({"strategy_seed": sseed, "traceback": traceback.format_exc()})
            continue
        errs.append(float(e @ e))
        if per_draw:
            rows.append([sseed, errs[-1], [int(i) for i in rec.responders],
                         [round(float(w), 6) for w in rec.weights]])
        designs[f"{rec.design} m_h={list(rec.m_h) if rec.m_h is not None else None}"] += 1
        if rec.pred_var and rec.pred_var_uniform is not None:
            pred_u.append(rec.pred_var_uniform / rec.pred_var)
        d = rec.decision
        if d is not None and d.predicted is not None and d.predicted_fedavg is not None \
                and d.predicted.value > 0:
            pred_f.append(d.predicted_fedavg.value / d.predicted.value)
        elif d is not None and (hit := PRED_REASON.search(d.reason)) and float(hit[1]) > 0:
            pred_f.append(float(hit[2]) / float(hit[1]))  # round 1: only in the reason line
    a = np.array(errs)

    def spread(xs: list[float]) -> dict[str, float] | None:
        return None if not xs else {"median": float(np.median(xs)), "min": float(min(xs)),
                                    "max": float(max(xs)), "n": len(xs)}

    return {"mse": float(a.mean()) if len(a) else None,
            "se": float(a.std(ddof=1) / np.sqrt(len(a))) if len(a) > 1 else None,
            "draws_ok": len(a), "failures": failures,
            "designs": dict(designs.most_common()),
            "pred_ratio_uniform_over_design": spread(pred_u),
            "pred_ratio_fedavg_over_design": spread(pred_f),
            "last_reason": None if not errs or rec.decision is None else rec.decision.reason,
            **({"per_draw": rows} if per_draw else {})}


def one_case(k_before: int, seed: int, draws: int, per_draw: bool = False) -> dict[str, Any]:
    t0 = time.perf_counter()
    cfg, n, p, g, xg, upd, D = setup(seed, k_before)  # noqa: N806
    T = p @ D  # noqa: N806
    fedavg, ht = exact_mse(n, p, D)
    fedavg10 = exact_mse(n, p, D, 10)[0]
    mc = strategy_mc(seed, draws, cfg, g, xg, T, upd, n, per_draw)
    out: dict[str, Any] = {
        "K": k_before, "seed": seed, "sizes": n.astype(int).tolist(),
        "T_sq": float(T @ T), "spread_p_weighted": float(p @ ((D - T) ** 2).sum(axis=1)),
        "fedavg_mse_exact": fedavg, "uniform_ht_mse_exact": ht, "fedavg_10_mse_exact": fedavg10,
        "strategy_mse": mc.pop("mse"), "strategy_se": mc.pop("se"), **mc,
    }
    s, se = out["strategy_mse"], out["strategy_se"]
    if s and se is not None:
        out["ratio_fedavg_over_strategy"] = fedavg / s
        out["ratio_se"] = fedavg / s * se / s
        out["ratio_ht_over_strategy"] = ht / s
        out["ratio_ht_se"] = ht / s * se / s
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out


def accuracy(seeds: list[int], rounds: int = 6) -> dict[str, Any]:
    import unmodified_clientapp as uc  # sets nothing at import; BASE is changed per run below

    saved = uc.BASE["clients-per-round"]
    out: dict[str, Any] = {}
    try:
        for m in (5, 10, 20):
            uc.BASE["clients-per-round"] = m
            finals = []
            for s in seeds:
                r = uc.run_one("fedavg", s, rounds, N, "local")
                finals.append(float(r["final"]))
                print(f"accuracy m={m} seed={s} final={r['final']:.4f}", flush=True)
            out[str(m)] = {"per_seed": finals, "mean": statistics.fmean(finals),
                           "median": statistics.median(finals),
                           "sd": statistics.stdev(finals) if len(finals) > 1 else None,
                           "min": min(finals), "max": max(finals)}
    finally:
        uc.BASE["clients-per-round"] = saved
    return out


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds-before", default="1,3,5", help="K list")
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument("--draws", type=int, default=300, help="strategy Monte Carlo runs")
    ap.add_argument("--accuracy", action="store_true",
                    help="also FedAvg accuracy at 5, 10, 20 of 20 nodes a round, 6 rounds")
    ap.add_argument("--accuracy-seeds", default=",".join(map(str, range(10))))
    ap.add_argument("--per-draw", action="store_true",
                    help="keep each draw's [strategy seed, error, responders, weights]")
    ap.add_argument("--source", default="",
                    help="where fedstrat came from, e.g. 'git archive of <commit>' (recorded)")
    ap.add_argument("--out", default=str(ROOT / "experiments/results/example_app_mse.json"))
    a = ap.parse_args(argv)
    ks = [int(k) for k in a.rounds_before.split(",")]
    seeds = [int(s) for s in a.seeds.split(",")]
    counter = LogCounter()
    flwr_log = logging.getLogger("flwr")
    flwr_log.setLevel(logging.WARNING)  # the strategy's INFO lines, 300 runs per case
    for lg in (logging.getLogger(), flwr_log):
        lg.addHandler(counter)
    report: dict[str, Any] = {
        "command": "python experiments/example_app_mse.py "
                   + " ".join(sys.argv[1:] if argv is None else argv),
        "commit": _git("rev-parse", "--short", "HEAD"),
        "fedstrat_uncommitted": _git("status", "--short", "fedstrat/"),
        "source": a.source,
        "fedstrat_file": __import__("fedstrat").__file__,
        "setting": {**CFG, "nodes": N, "draws": a.draws, "rounds_before": ks, "seeds": seeds},
        "cases": [],
    }
    for k in ks:
        for s in seeds:
            r = one_case(k, s, a.draws, a.per_draw)
            report["cases"].append(r)
            print(f"K={k} seed={s} fedavg={r['fedavg_mse_exact']:.4f} "
                  f"fedavg10={r['fedavg_10_mse_exact']:.4f} "
                  f"ht={r['uniform_ht_mse_exact']:.4f} "
                  f"strategy={r['strategy_mse']:.4f}+-{r['strategy_se']:.4f} "
                  f"ratio={r.get('ratio_fedavg_over_strategy', float('nan')):.3f}"
                  f"+-{r.get('ratio_se', float('nan')):.3f} "
                  f"failures={len(r['failures'])} {r['seconds']}s", flush=True)
    if a.accuracy:
        report["accuracy_fedavg_6_rounds"] = accuracy(
            [int(s) for s in a.accuracy_seeds.split(",")])
    report["log_warnings_errors"] = dict(counter.counts.most_common())
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(report, indent=1) + "\n")
    print("wrote", a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
