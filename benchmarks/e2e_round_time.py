"""End-to-end wall time of ``fedstrat simulate``: stratified vs uniform selection, and scale runs.

Cases (``--cases``):

* ``default``: the default job (mnist5k, 784-50-10 MLP, 100 clients, 10 a round, 5 local
  epochs), ``--rounds`` rounds, stratified and uniform back to back, ``--pairs`` times.
* ``steps``: the default job with the same client work in both arms (``--local-steps 10`` for
  every client instead of 5 epochs: pps draws larger clients, whose epochs cost more): the
  wrapper's own end-to-end cost.
* ``1m``: the same pairs with a model of >= 1M parameters: ``--dataset synthetic`` with 20,000
  features (MLP 20000-50-10: 1,000,560 parameters), 3,000 rows, 100 clients, 10 a round,
  1 local epoch.
* ``n1000``, ``n10000``: ``--dataset synthetic`` (200,000 rows, 32 features, 10 classes) with
  1,000 / 10,000 clients, 50 a round, 2 rounds, 1 local epoch, stratified only: where the
  time goes (SuperLink start, app start, round 1 with profiling of every node, later rounds).

Per-round time is the ``seconds`` column of ``metrics.json`` (the ServerApp's wall time of the
round: selection, training fan-out, aggregation, evaluation). Two figures are compared per pair,
stratified / uniform: the ratio of the medians over rounds 2.. of each run, and the ratio of the
means over rounds 2... Flower's grids pull replies every 0.1 s in simulation, so single rounds
came in 0.1 s steps and a median jumped by a whole step (fedstrat's ServerApp pulls with pauses
from 5 ms up to 0.1 s since 86a546b: finer steps, not none); the mean counts the rounds on each
step. How many rounds of a run land on a lower step also varies from run to run of the same arm
(machine state), so the pairs are the independent units: the geometric mean of the per-pair
ratios of means with a 95% Student-t interval over pairs (on the log ratios). Same seed and
settings in both arms.

Run: ``python benchmarks/e2e_round_time.py [--cases default 1m n1000 n10000] [--rounds 8]``.
Writes ``benchmarks/results/e2e_round_time.json`` (one entry per case, written after every run;
``"partial": true`` until the case ends, so a run cut short keeps what it measured).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

from scipy import stats  # noqa: E402

from fedstrat.app.config import RunConfig  # noqa: E402
from fedstrat.app.simulation import SimulationError, run_simulation_job  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "e2e_round_time.json"


def case_config(case: str, rounds: int) -> tuple[RunConfig, bool]:
    """``(config, paired)``: the run of ``case``; paired cases also run ``selection=uniform``."""
    if case == "default":
        return RunConfig(rounds=rounds), True
    if case == "steps":
        return RunConfig(rounds=rounds, local_steps=10), True
    if case == "1m":
        return RunConfig(dataset="synthetic", synthetic_samples=3000, synthetic_features=20000,
                         synthetic_classes=10, rounds=rounds, local_epochs=1), True
    if case in ("n1000", "n10000"):
        return RunConfig(dataset="synthetic", num_clients=int(case[1:]), clients_per_round=50,
                         rounds=2, local_epochs=1, node_wait_timeout=600.0,
                         round_timeout=1800.0), False
    raise ValueError(f"unknown case {case!r}")


def one_run(cfg: RunConfig, root: Path, name: str, timeout: float) -> dict[str, Any]:
    out = root / name
    t0 = time.perf_counter()
    res = run_simulation_job(dataclasses.replace(cfg, out=str(out)), timeout=timeout)
    wall = time.perf_counter() - t0
    rows = [r for r in res.metrics if r["round"] >= 1]
    secs = [float(r["seconds"]) for r in rows if r.get("seconds") is not None]
    summary = json.loads((out / "summary.json").read_text())
    return {
        "selection": cfg.selection,
        "wall_s": wall,
        "round_seconds": secs,
        "median_after_round1_s": statistics.median(secs[1:]) if len(secs) > 1 else None,
        "mean_after_round1_s": statistics.fmean(secs[1:]) if len(secs) > 1 else None,
        "round1_s": secs[0] if secs else None,
        "runner_timings": summary.get("runner"),
        "final_accuracy": rows[-1].get("accuracy") if rows else None,
    }


def pair_ratios(runs: list[dict[str, Any]], pairs: int, key: str) -> list[float]:
    """Per pair, stratified / uniform of the runs' figure ``key``."""
    out = []
    for p in range(pairs):
        s = next(r for r in runs if r["pair"] == p and r["selection"] == "stratified")
        u = next(r for r in runs if r["pair"] == p and r["selection"] == "uniform")
        out.append(s[key] / u[key])
    return out


def mean_ratios(ratios: list[float]) -> dict[str, Any]:
    """The per-pair ratios of mean round times, their geometric mean and, from two pairs on,
    the 95% Student-t interval of the mean log ratio (pairs independent)."""
    logs = [math.log(v) for v in ratios]
    out: dict[str, Any] = {"ratio_of_means": list(ratios),
                           "ratio_of_means_geomean": math.exp(statistics.fmean(logs))}
    if len(logs) > 1:
        half = stats.t.ppf(0.975, len(logs) - 1) * statistics.stdev(logs) / math.sqrt(len(logs))
        m = statistics.fmean(logs)
        out["ratio_of_means_ci95"] = (math.exp(m - half), math.exp(m + half))
    return out


def run_case(
    case: str,
    rounds: int,
    pairs: int,
    timeout: float,
    workdir: str = "",
    save: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """The case's runs and ratios; ``save`` gets the entry so far (``"partial": True``) after
    every run, so a run cut short (a machine's time running out) keeps what it measured."""
    cfg, paired = case_config(case, rounds)
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix=f"e2e-{case}-") as tmp:
        root = Path(workdir) / case if workdir else Path(tmp)
        for p in range(pairs if paired else 1):
            arms = ("stratified", "uniform") if paired else ("stratified",)
            for sel in arms if p % 2 == 0 else arms[::-1]:  # alternate the order
                try:
                    runs.append(one_run(dataclasses.replace(cfg, selection=sel), root,
                                        f"{sel}-{p}", timeout))
                except SimulationError as exc:  # recorded; the next case still runs
                    print(f"{case} pair {p} {sel} failed: {str(exc)[:2000]}", flush=True)
                    return {"case": case, "config": cfg.to_dict(), "runs": runs,
                            "failed": f"{sel}-{p}: {str(exc)[:4000]}"}
                runs[-1]["pair"] = p
                print(f"{case} pair {p} {sel}: median round {runs[-1]['median_after_round1_s']}"
                      f" s, round 1 {runs[-1]['round1_s']} s, wall {runs[-1]['wall_s']:.0f} s",
                      flush=True)
                if save is not None:
                    save({"case": case, "config": cfg.to_dict(), "runs": runs, "partial": True})
    entry: dict[str, Any] = {"case": case, "config": cfg.to_dict(), "runs": runs}
    if paired:
        ratios = pair_ratios(runs, pairs, "median_after_round1_s")
        entry["ratio_stratified_over_uniform"] = ratios
        entry["ratio_mean"] = statistics.fmean(ratios)
        entry["ratio_spread"] = (min(ratios), max(ratios))
        entry.update(mean_ratios(pair_ratios(runs, pairs, "mean_after_round1_s")))
        print(f"{case}: stratified / uniform per-round time {entry['ratio_mean']:.3f} "
              f"(pairs: {', '.join(f'{r:.3f}' for r in ratios)})", flush=True)
        ci = entry.get("ratio_of_means_ci95")
        print(f"{case}: ratio of mean round times, geometric mean over pairs "
              f"{entry['ratio_of_means_geomean']:.3f}"
              + (f", 95% CI {ci[0]:.3f}-{ci[1]:.3f}" if ci else " (one pair: no interval)")
              + f" (pairs: {', '.join(f'{r:.3f}' for r in entry['ratio_of_means'])})",
              flush=True)
    return entry


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", nargs="+", default=["default", "1m", "n1000", "n10000"])
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--pairs", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds per run")
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--workdir", default="", help="keep the run dirs here (default: a temp dir)")
    args = ap.parse_args()
    out = Path(args.out)
    payload: dict[str, Any] = json.loads(out.read_text()) if out.is_file() else {}
    payload.update({
        "benchmark": "e2e_round_time",
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
    })
    cases = payload.setdefault("cases", {})
    for case in args.cases:
        load0 = os.getloadavg()[0]
        command = (f"python benchmarks/e2e_round_time.py --cases {case} "
                   f"--rounds {args.rounds} --pairs {args.pairs}")

        def save(entry: dict[str, Any], case: str = case, command: str = command,
                 load0: float = load0) -> None:
            entry["command"] = command
            entry["loadavg_1m_start_end"] = (load0, os.getloadavg()[0])
            cases[case] = entry
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(payload, indent=2) + "\n")

        save(run_case(case, args.rounds, args.pairs, args.timeout, args.workdir, save))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
