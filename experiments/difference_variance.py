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
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import statistics
from pathlib import Path

SELECTIONS = ["fedavg", "uniform", "stratified", "difference", "stratified-difference"]


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
    for seed in [int(x) for x in a.seeds.split(",")]:
        res = measure_variance(
            dataclasses.replace(cfg, seed=seed).validate(), rounds,
            selections=a.selections.split(","), n_samples=a.samples, on_progress=print,
        )
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
