"""Measured MSE of the difference (control-variate) estimator vs FedAvg, per round and seed.

    python experiments/difference_variance.py --config experiments/configs/mnist5k_dirichlet.toml \
        --seeds 0,1,2 --rounds 1,10,30 --samples 2000 --out runs/difference-mnist5k-dirichlet

Runs ``fedstrat.measure.measure_variance`` with the selections ``fedavg`` (uniform sampling,
self-normalised weights), ``uniform`` (HT), ``stratified``, ``difference`` (uniform design +
control variates) and ``stratified-difference``; the controls are replayed along the
measurement's trajectory (each client's exact update of the last round the design drew it; a
never-drawn client gets its label stratum's mean, see ``fedstrat.measure.controls``). Writes the
usual measure-variance folder (variance.json, table.md, variance.png) and ``ratios.md``:
FedAvg / this with its Monte Carlo standard error per seed, and the mean over seeds with the
standard error over seeds.

``stratified-difference-learned`` is the difference estimator as ``StratifiedSelection`` draws
it (``fedstrat.measure.strategy_replay``: the strategy's policy and control memory replayed along
the trajectory; allocation from its tracked residual sketches, residual pps size measure,
decision against FedAvg), measured by ``measure_variance``.

``stratified-difference-learned-oracle`` (replayed here only) is the same label-histogram
strata with what earlier rounds teach about stale controls
(:class:`fedstrat.sampling.difference.StaleControlModel`): controls ``c_i = b_k x_i`` with the
coefficient ``b_k`` of the control's age bucket fitted on the clients drawn before (never-drawn
clients: their stratum's mean of these), and a residual pps design whose size measure is
``p_i`` times the predicted residual norm (``rho_k ||x_i||``), Neyman-allocated on the exact
residual dispersion (the same oracle as ``stratified-difference``); its MSE is measured by
Monte Carlo on the residuals (``--samples`` draws) along the same trajectory.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import statistics
import time
from pathlib import Path

SELECTIONS = ["fedavg", "uniform", "stratified", "difference", "stratified-difference",
              "stratified-difference-learned", "stratified-difference-learned-oracle"]
#: the oracle replay of this script (exact-residual allocation); ``stratified-difference-
#: learned`` itself is the strategy's own draw, measured by ``measure_variance``
LEARNED = "stratified-difference-learned-oracle"


class LearnedReplay:
    """``on_updates`` hook: replays ``stratified-difference-learned`` along the trajectory and
    measures it (Monte Carlo) at the measured rounds."""

    def __init__(self, rounds: list[int], m: int, seed: int, n_samples: int) -> None:
        self.rounds, self.m, self.seed, self.n_samples = sorted(rounds), m, seed, n_samples
        self.rows: list[dict] = []
        self.memory = None

    def _start(self, result: dict) -> None:
        import numpy as np

        from fedstrat.measure.samplers import plan_strata_from_histograms
        from fedstrat.sampling.difference import StaleControlModel

        self.sizes = np.asarray(result["sizes"], dtype=np.float64)
        self.p = self.sizes / self.sizes.sum()
        self.labels = plan_strata_from_histograms(result["histograms"], self.sizes, self.m,
                                                  "auto", 0, self.seed, {})
        if self.labels is None:
            raise SystemExit(f"{LEARNED}: choose_design keeps FedAvg here (no strata)")
        self.last = np.zeros(len(self.sizes), dtype=np.int64)
        self.model = StaleControlModel()

    def design(self, r: int, upd):
        import numpy as np

        from fedstrat.sampling.difference import (
            ResidualPPSSampler,
            fill_controls,
            residual_pps_allocation,
            residual_pps_variance,
        )

        known = self.last > 0
        ages = np.where(known, r - self.last, 0)
        x = self.memory
        c = fill_controls(x * np.where(known, self.model.coefficients(ages), 0.0)[:, None],
                          known, self.labels, "stratum")
        z = self.p * self.model.residual_scale(ages, np.sqrt((x * x).sum(axis=1)))
        resid = upd - c
        alloc = residual_pps_allocation(resid, self.sizes, self.labels, z, self.m)
        pred = residual_pps_variance(resid, self.sizes, self.labels, alloc, z)
        return ResidualPPSSampler(self.sizes, self.labels, alloc, z), resid, ages, pred

    def __call__(self, r: int, updates, result: dict) -> None:
        import numpy as np

        if self.memory is None:
            self._start(result)
            self.memory = np.zeros(updates.shape, dtype=np.float64)
        upd = np.asarray(updates, dtype=np.float64)
        smp, resid, ages, pred = self.design(r, upd)
        if r in self.rounds:
            self.rows.append(self.measure(r, smp, resid, pred))
        ids = smp.sample(np.random.default_rng([self.seed, r])).ids
        self.model.observe(ages[ids], upd[ids], self.memory[ids], resid[ids], self.p[ids])
        self.memory[ids] = upd[ids]
        self.last[ids] = r

    def measure(self, r: int, smp, resid, pred: float) -> dict:
        import numpy as np

        g = np.random.default_rng([self.seed, 1000 + r])
        target = self.p @ resid
        err = np.empty(self.n_samples)
        for k in range(self.n_samples):
            sel = smp.sample(g)
            d = sel.weights @ resid[sel.ids] - target
            err[k] = float(d @ d)
        mse = float(err.mean())
        return {"round": r, "selection": LEARNED, "measured": mse,
                "measured_se": float(err.std(ddof=1) / math.sqrt(self.n_samples)),
                "predicted": float(pred), "clients_seen": int((self.last > 0).sum())}


def ratio_table(rows: list[dict], base: str = "fedavg") -> str:
    """Markdown: per round and selection, base/this per seed (± MC s.e.) and over seeds."""
    by = {(r["round"], r["seed"], r["selection"]): r for r in rows}
    rounds = sorted({r["round"] for r in rows})
    seeds = sorted({r["seed"] for r in rows})
    sels = [s for s in SELECTIONS if any(r["selection"] == s for r in rows)]
    lines = [
        f"| round | selection | {base} / this, per seed (± MC s.e.) | mean over seeds (± s.e.) "
        "| predicted / measured (mean) |",
        "|---|---|---|---|---|",
    ]
    for rnd in rounds:
        for s in sels:
            per, cells, cal = [], [], []
            for seed in seeds:
                a, b = by.get((rnd, seed, base)), by.get((rnd, seed, s))
                if not a or not b or b["measured"] <= 0:
                    continue
                q = a["measured"] / b["measured"]
                se = q * math.hypot(a["measured_se"] / a["measured"],
                                    b["measured_se"] / b["measured"])
                per.append(q)
                cells.append(f"{q:.2f} ± {se:.2f}")
                if math.isfinite(b["predicted"]):
                    cal.append(b["predicted"] / b["measured"])
            if not per:
                continue
            sd = statistics.stdev(per) / math.sqrt(len(per)) if len(per) > 1 else float("nan")
            c = f"{statistics.mean(cal):.2f}" if cal else "-"
            lines.append(f"| {rnd} | {s} | {', '.join(cells)} | {statistics.mean(per):.2f} ± "
                         f"{sd:.2f} | {c} |")
    return "\n".join(lines) + "\n"


def _complete(new: list[dict], rows: list[dict]) -> list[dict]:
    """The measured rows of the replayed selection with the other rows' keys (ratios to
    FedAvg / uniform of the same round when measured, else NaN)."""
    from fedstrat.measure.variance import ratio_se

    out = []
    for row in new:
        same = [r for r in rows if r["round"] == row["round"]]
        base = {k: math.nan for k in (same[0] if same else {})}
        full = {**base, **row, "bias": math.nan, "bias_z": math.nan, "unbiased": True,
                "info": {"clients_seen": row["clients_seen"]}}
        uni = next((r for r in same if r["selection"] == "uniform"), None)
        full["uniform_over_this"] = uni["measured"] / row["measured"] if uni else math.nan
        fed = next(((r["measured"], r["measured_se"]) for r in same
                    if r["selection"] == "fedavg"), None)
        full["fedavg_over_this"], full["fedavg_over_this_se"] = ratio_se(fed, row)
        for k in ("global_score", "target_norm_sq"):
            if same:
                full[k] = same[0][k]
        out.append(full)
    return out


def main() -> None:
    from fedstrat.app.config import RunConfig
    from fedstrat.measure import MeasureResult, measure_variance
    from fedstrat.measure.output import write_outputs

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--rounds", default="1,10")
    ap.add_argument("--samples", type=int, default=2000)
    ap.add_argument("--selections", default=",".join(SELECTIONS))
    ap.add_argument("--set", action="append", default=[], help="key=value RunConfig override")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    cfg = RunConfig.from_toml(a.config)
    for kv in a.set:
        k, v = kv.split("=", 1)
        k = k.replace("-", "_")
        cur = getattr(cfg, k)
        cfg = dataclasses.replace(cfg, **{k: type(cur)(v) if cur is not None else v})
    rounds = [int(x) for x in a.rounds.split(",")]
    rows, metas = [], []
    out = Path(a.out)
    sels = a.selections.split(",")
    for seed in [int(x) for x in a.seeds.split(",")]:
        scfg = dataclasses.replace(cfg, seed=seed).validate()
        t0 = time.perf_counter()
        hook = LearnedReplay(rounds, scfg.clients_per_round, seed, a.samples)
        res = measure_variance(scfg, rounds, selections=[s for s in sels if s != LEARNED],
                               n_samples=a.samples, on_progress=print,
                               on_updates=hook if LEARNED in sels else None)
        if LEARNED in sels:
            res.rows.extend(_complete(hook.rows, res.rows))
            res.meta["seconds"] = time.perf_counter() - t0
            print(hook.rows, flush=True)
        for r in res.rows:
            r["seed"] = seed
        rows.extend(res.rows)
        metas.append(res.meta)
        meta = {**metas[0], "seeds": [m["seed"] for m in metas],
                "seconds": sum(m["seconds"] for m in metas)}
        write_outputs(MeasureResult(rows=rows, meta=meta), out)
        (out / "ratios.md").write_text(ratio_table(rows))
        print(ratio_table(rows), flush=True)


if __name__ == "__main__":
    main()
