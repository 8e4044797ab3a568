"""Issue 11, ">= Clustered Sampling Alg. 2 in every setting": Alg. 2 as the paper runs it.

``fedstrat measure-variance``'s ``clustered2`` row clusters on the EXACT updates of the measured
round (an oracle). Fraboni et al. (ICML 2021, Alg. 2) cluster on the representative gradients the
server holds: each client's LAST RECEIVED update, replaced whenever the client is sampled; the
authors' implementation starts every client's representative at zero (the difference of the
initial model with itself), so clients never sampled keep a zero representative (identical
points: one block of the dendrogram order). fedstrat's ClusteredSampler runs Ward linkage on the
representatives themselves (Euclidean); the authors' code runs it on the rows of an arc-cosine
similarity matrix of them, so the clusters can differ. This script measures, along the
trajectory measure-variance uses (round r = the model after r - 1 rounds of full-participation
FedAvg, every client's exact update computed in-process; one pass of
:func:`fedstrat.measure.measure_variance` with this script's replay as its ``on_updates``
hook, public API only; needs ``fedstrat`` of 5694f06 or later), the MSE E||T_hat - T||^2
against full participation of:

* ``clustered2-oracle``: Alg. 2 on the exact updates of the measured round (measure-variance's
  ``clustered2`` row, same seeds);
* ``clustered2-stale``: Alg. 2 on the representatives the server holds before round r's draw.
  A replay runs Alg. 2 from round 1: at each round r it builds
  :class:`fedstrat.sampling.ClusteredSampler` (algorithm 2) on the current representatives,
  draws ONE sample with ``default_rng([seed, r, 2])`` (the run's own draw), and stores the drawn
  clients' round-r updates as their new representatives (zeros before a first draw);
* ``clustered1``: Alg. 1 (clusters by sample size; needs no update), measure-variance's row;
* ``fedavg``: uniform m of N with self-normalised weights (measure-variance's ``fedavg`` row);
* ``stratified``: fedstrat's default rule with perfect evidence (measure-variance's
  ``stratified`` row) and ``strategy-run``: what the replayed strategy (the real
  ``StratifiedPolicy`` replayed by measure-variance: its ``stratified-run`` /
  ``fedavg-run`` rows) drew that round: its candidate design's measured MSE when it chose
  ``stratified``; when it chose ``fedavg``, the MSE of its own FedAvg-round draw with FedAvg's
  weights (balanced over blocks of similar clients by default; ``fedavg-run``), or FedAvg's
  row where no such draw was recorded.

Only the selection history is replayed: the model follows full participation in every column
(as in measure-variance), not the sampled aggregates of each scheme.

    nice -n 10 python experiments/clustered_stale.py \
        --config experiments/configs/mnist5k_iid.toml --seeds 0 --rounds 5,10 --samples 2000 \
        --out experiments/results/clustered_stale_mnist5k_iid.json
    python experiments/clustered_stale.py --summary experiments/results/clustered_stale_*.json \
        --out experiments/results/clustered_stale_summary.json   # mean over seeds, s.e.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from fedstrat.app.config import RunConfig
from fedstrat.measure import Population, measure_variance, monte_carlo
from fedstrat.measure.variance import ratio_and_se
from fedstrat.sampling import ClusteredSampler

ROOT = Path(__file__).resolve().parents[1]
#: measure-variance rows (``stratified`` also brings the replayed strategy's ``stratified-run`` /
#: ``fedavg-run`` rows)
MEASURED_ROWS = ("clustered1", "clustered2", "fedavg", "stratified")


class StaleAlg2:
    """Alg. 2 replay (an ``on_updates`` hook): the server's representative updates (zeros until
    a client is drawn); at each measured round the sampler built before that round's draw is
    measured on the round's exact updates (:func:`fedstrat.measure.monte_carlo`)."""

    def __init__(self, seed: int, m: int, rounds: list[int], n_samples: int) -> None:
        self.seed, self.m, self.rounds, self.n_samples = seed, m, rounds, n_samples
        self.reps: np.ndarray | None = None
        self.last_seen: np.ndarray | None = None  # round of the representative, 0 = never
        self.rows: dict[int, dict[str, Any]] = {}

    def __call__(self, r: int, updates: np.ndarray, result: dict[str, Any]) -> None:
        if r > self.rounds[-1]:
            return
        sizes = np.asarray(result["sizes"], dtype=np.float64)
        if self.reps is None:
            self.reps = np.zeros_like(updates)
            self.last_seen = np.zeros(len(sizes), dtype=np.int64)
        smp = ClusteredSampler(sizes, self.m, algorithm=2, updates=self.reps, seed=self.seed)
        if r in self.rounds:
            seen = self.last_seen > 0
            pop = Population(updates, sizes)
            st = monte_carlo(
                pop, smp, self.n_samples,
                seed=int(np.random.SeedSequence([self.seed, 2000 + r]).generate_state(1)[0]),
                name="clustered2-stale", predicted=smp.variance(pop.updates),
                info={"representative": "last received update (zeros if never drawn)",
                      "clients_seen": int(seen.sum()),
                      "mass_seen": float(sizes[seen].sum() / sizes.sum()),
                      "mean_age_of_seen": float(np.mean(r - self.last_seen[seen]))
                      if seen.any() else math.nan},
            )
            self.rows[r] = st.to_dict()
        sel = smp.sample(np.random.default_rng([self.seed, r, 2]))
        ids = np.asarray(sel.ids, dtype=np.int64)
        self.reps[ids] = updates[ids]
        self.last_seen[ids] = r


def ratio(f: tuple[float, float], t: tuple[float, float]) -> tuple[float, float]:
    """FedAvg MSE / this MSE and its s.e. (delta method, independent Monte Carlo draws)."""
    return ratio_and_se(*f, *t)


def measure(cfg: RunConfig, rounds: list[int], n_samples: int, say: Any) -> dict[str, Any]:
    stale = StaleAlg2(cfg.seed, cfg.clients_per_round, rounds, n_samples)
    t0 = time.perf_counter()
    res = measure_variance(cfg, rounds, selections=MEASURED_ROWS, n_samples=n_samples,
                           on_progress=say, on_updates=stale)
    out: dict[str, Any] = {"seed": cfg.seed, "rounds": {}, "dim": res.meta["dim"]}
    for r in sorted({row["round"] for row in res.rows}):
        found = [row for row in res.rows if row["round"] == r]
        rows = {row["selection"]: dict(row) for row in found}
        rows["clustered2-oracle"] = rows.pop("clustered2")
        rows["clustered2-stale"] = stale.rows[r]
        fed = (rows["fedavg"]["measured"], rows["fedavg"]["measured_se"])
        # the replayed strategy's choice at round r (measure-variance's stratified-run /
        # fedavg-run rows carry it in their info)
        run_info = next((rows[k]["info"] for k in ("stratified-run", "fedavg-run") if k in rows),
                        {})
        mode = run_info.get("mode", "none")
        src = ("stratified-run" if mode == "stratified" and "stratified-run" in rows
               else "fedavg-run" if "fedavg-run" in rows else "fedavg")  # the policy's own draw
        rows["strategy-run"] = {**rows[src], "selection": "strategy-run",
                                "info": {"mode": mode, "measured_as": src,
                                         "evidence": run_info.get("evidence")}}
        # a fedavg-run row is the fedavg row itself unless the policy's own FedAvg-round draw
        # (balanced) was measured
        copied = rows.get("fedavg-run", {}).get("info", {}).get("measured") == (
            "the fedavg row's Monte Carlo MSE")
        itself = {"fedavg", "fedavg-run"} if copied else {"fedavg"}
        for name, row in rows.items():
            q, q_se = ratio(fed, (row["measured"], row["measured_se"]))
            same = name in itself or row.get("info", {}).get(
                "measured_as") in itself  # the fedavg row itself: 1 exactly
            row["fedavg_over_this"], row["fedavg_over_this_se"] = (1.0, 0.0) if same else (q, q_se)
        out["rounds"][r] = {"global_score": found[0]["global_score"], "rows": rows}
        say(f"round {r}: " + ", ".join(
            f"{k} {v['fedavg_over_this']:.3f}±{v['fedavg_over_this_se']:.3f}"
            for k, v in rows.items()))
    out["seconds"] = time.perf_counter() - t0
    return out


SHOWN = ("clustered1", "clustered2-oracle", "clustered2-stale", "stratified", "strategy-run")


def summarize(paths: list[str]) -> list[dict[str, Any]]:
    """Per config and round: FedAvg / this (mean over seeds; s.e. = the Monte Carlo s.e. for
    one seed, the seed-to-seed s.e. of the mean for several) and the paired ratios
    MSE(Alg. 2 stale or oracle) / MSE(fedstrat row), seed by seed (> 1: fedstrat lower MSE)."""
    per: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for path in paths:
        rep = json.loads(Path(path).read_text())
        for sd in rep["seeds"]:
            for r, rd in sd["rounds"].items():
                per.setdefault((Path(rep["config"]).stem, int(r)), []).append(
                    {"seed": sd["seed"], "rows": rd["rows"]})
    out = []
    for (cfg, r), items in sorted(per.items()):
        row: dict[str, Any] = {"config": cfg, "round": r, "seeds": [i["seed"] for i in items]}
        for name in SHOWN:
            vals = [(i["rows"][name]["fedavg_over_this"], i["rows"][name]["fedavg_over_this_se"])
                    for i in items]
            row[name] = _mean_se(vals)
        for alg2 in ("clustered2-stale", "clustered2-oracle"):
            for name in ("stratified", "strategy-run"):
                vals = [ratio((i["rows"][alg2]["measured"], i["rows"][alg2]["measured_se"]),
                              (i["rows"][name]["measured"], i["rows"][name]["measured_se"]))
                        for i in items]
                row[f"{alg2.split('-')[1]}_over_{name}"] = _mean_se(vals)
        row["strategy_modes"] = [i["rows"]["strategy-run"]["info"]["mode"] for i in items]
        row["clients_seen_stale"] = [i["rows"]["clustered2-stale"]["info"]["clients_seen"]
                                     for i in items]
        out.append(row)
    return out


def _mean_se(vals: list[tuple[float, float]]) -> list[float]:
    xs = np.array([v for v, _ in vals])
    if len(xs) == 1:
        return [float(xs[0]), float(vals[0][1]), float(xs[0]), float(xs[0])]
    return [float(xs.mean()), float(xs.std(ddof=1) / math.sqrt(len(xs))), float(xs.min()),
            float(xs.max())]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--summary", nargs="+", metavar="JSON",
                    help="only summarize these result files (to --out) and print a table")
    ap.add_argument("--config")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--rounds", default="5,10")
    ap.add_argument("--samples", type=int, default=2000)
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    if a.summary:
        rows = summarize(a.summary)
        Path(a.out).write_text(json.dumps({"files": a.summary, "rows": rows}, indent=1) + "\n")
        for x in rows:
            print(x["config"], x["round"], x["seeds"], " ".join(
                f"{k} {x[k][0]:.3f}±{x[k][1]:.3f}" for k in (*SHOWN, "stale_over_strategy-run",
                                                            "oracle_over_strategy-run")),
                  x["strategy_modes"], x["clients_seen_stale"])
        return 0
    if not a.config:
        ap.error("--config is required (or --summary)")
    base = RunConfig.from_toml(a.config)
    rounds = sorted({int(r) for r in a.rounds.split(",")})
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    commit = commit or os.environ.get("FEDSTRAT_COMMIT", "unknown")  # e.g. a git-archive tree
    report: dict[str, Any] = {
        "command": "python experiments/clustered_stale.py "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "commit": commit, "config": a.config, "n_samples": a.samples,
        "clients_per_round": base.clients_per_round, "num_clients": base.num_clients,
        "seeds": [],
    }
    for seed in (int(s) for s in a.seeds.split(",")):
        cfg = dataclasses.replace(base, seed=seed)
        report["seeds"].append(measure(cfg, rounds, a.samples,
                                       lambda msg: print(msg, flush=True)))
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(report, indent=1, default=float) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
