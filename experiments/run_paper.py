"""Reproduce the Shen et al. (2022) setting with the fedstrat CLI, on offline data.

Steps (each one ``fedstrat`` command; outputs under experiments/runs/, which git ignores):

1. measured estimator variance (no Flower) for every setting in configs/;
2. ``fedstrat compare`` (Flower simulations) stratified vs uniform vs Clustered Sampling over
   seeds, MNIST-5k Dirichlet(0.1) first;
3. ``--summarize``: markdown tables from the JSON outputs, small PNGs copied to figures/.

    python experiments/run_paper.py                 # everything, full length
    python experiments/run_paper.py --quick         # the CPU-shortened plan used for README.md
    python experiments/run_paper.py --only variance # one group of steps
    python experiments/run_paper.py --summarize     # tables + figures from what exists

A step whose output directory already holds its result is skipped (delete it to redo).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CONFIGS = HERE / "configs"
RUNS = HERE / "runs"
FIGURES = HERE / "figures"

#: (name, config, seeds full, seeds quick, measure rounds full, measure rounds quick)
VARIANCE = [
    ("mnist5k-dirichlet", "mnist5k_dirichlet.toml", "0,1,2,3,4", "0,1,2,3,4", "1,10", "1,10"),
    ("mnist5k-shard", "mnist5k_shard.toml", "0,1,2,3,4", "0,1", "1,10", "1,10"),
    ("mnist5k-iid", "mnist5k_iid.toml", "0,1,2,3,4", "0,1", "1,10", "1,10"),
    ("mnist5k-cnn-dirichlet", "mnist5k_cnn_dirichlet.toml", "0,1,2,3,4", "0,1", "1,10", "1,10"),
    ("movielens100k-users", "movielens100k_users.toml", "0,1,2,3,4", "0,1", "1,10", "1,4"),
    # fewer strata than clients per round: here the allocation matters (Neyman vs proportional)
    ("mnist5k-dirichlet-4strata", "mnist5k_dirichlet.toml", "0,1,2,3,4", "0,1", "1,10", "1,10"),
]
#: extra measure-variance options per setting
VARIANCE_EXTRA = {
    "mnist5k-dirichlet-4strata": ["--n-strata", "4", "--design", "pps"]
    + ["--selections", "uniform,stratified,stratified-prop"],
}

#: (name, config, selections, seeds full, seeds quick, rounds quick)
COMPARE = [
    (
        "mnist5k-dirichlet",
        "mnist5k_dirichlet.toml",
        "stratified,uniform,clustered1",
        "0,1,2,3,4",
        "0,1,2,3,4",
        30,
    ),
    ("mnist5k-shard", "mnist5k_shard.toml", "stratified,uniform", "0,1,2,3,4", "0", 30),
    ("movielens100k-users", "movielens100k_users.toml", "stratified,uniform", "0,1,2", "0", 20),
]


def _fedstrat() -> list[str]:
    exe = shutil.which("fedstrat")
    return [exe] if exe else [sys.executable, "-m", "fedstrat.cli.main"]


def _run(cmd: list[str], log: Path) -> int:
    print("$", " ".join(cmd), flush=True)
    t0 = time.time()
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as fh:
        rc = subprocess.call(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=HERE)
    print(f"  -> rc={rc} in {time.time() - t0:.0f} s (log {log.relative_to(HERE)})", flush=True)
    return rc


def variance_steps(quick: bool) -> None:
    for name, config, seeds_full, seeds_quick, rounds_full, rounds_quick in VARIANCE:
        out = RUNS / f"variance-{name}"
        if (out / "variance.json").is_file():
            print(f"skip {out.name}: exists")
            continue
        shutil.rmtree(out, ignore_errors=True)
        cmd = _fedstrat() + ["measure-variance", "--config", f"configs/{config}"]
        cmd += ["--seeds", seeds_quick if quick else seeds_full]
        cmd += ["--measure-rounds", rounds_quick if quick else rounds_full]
        cmd += ["--samples", "2000", "--out", str(out.relative_to(HERE))]
        cmd += VARIANCE_EXTRA.get(name, [])
        _run(cmd, RUNS / f"variance-{name}.log")


def compare_steps(quick: bool) -> None:
    for name, config, sels, seeds_full, seeds_quick, rounds_quick in COMPARE:
        out = RUNS / f"compare-{name}"
        if (out / "compare" / "compare.json").is_file():
            print(f"skip {out.name}: exists")
            continue
        cmd = _fedstrat() + ["compare", "--config", f"configs/{config}", "--selections", sels]
        cmd += [
            "--seeds",
            seeds_quick if quick else seeds_full,
            "--out",
            str(out.relative_to(HERE)),
        ]
        cmd += ["--skip-existing"]
        if quick:
            cmd += ["--rounds", str(rounds_quick)]
        _run(cmd, RUNS / f"compare-{name}.log")


def summarize() -> None:
    """Markdown tables (stdout) and small figures in figures/."""
    from fedstrat.measure import MeasureResult
    from fedstrat.measure.output import write_outputs

    FIGURES.mkdir(exist_ok=True)
    for name, *_ in VARIANCE:
        vj = RUNS / f"variance-{name}" / "variance.json"
        if not vj.is_file():
            continue
        data = json.loads(vj.read_text())
        # re-render table.md / variance.png with the current code (aggregated over seeds)
        write_outputs(MeasureResult(rows=data["rows"], meta=data["meta"]), vj.parent)
        meta = data["meta"]
        print(
            f"\n### measured variance: {name} (model {meta['model']}, D={meta['dim']}, "
            f"seeds {meta.get('seeds')}, {meta['n_samples']} samples)\n"
        )
        print((vj.parent / "table.md").read_text())
        png = vj.parent / "variance.png"
        if png.is_file():
            shutil.copy(png, FIGURES / f"variance-{name}.png")
    for name, *_ in COMPARE:
        cj = RUNS / f"compare-{name}" / "compare" / "compare.json"
        if not cj.is_file():
            continue
        measured = RUNS / f"variance-{name}"
        if (measured / "variance.json").is_file():
            # the same seeds' measured variance joins the comparison table
            shutil.copytree(measured, cj.parent.parent / "variance", dirs_exist_ok=True)
            report = ["report", str(cj.parent.parent), "--no-plots"]
            subprocess.call(_fedstrat() + report, stdout=subprocess.DEVNULL, cwd=HERE)
        data = json.loads(cj.read_text())
        print(f"\n### compare: {name}\n")
        print((cj.parent / "table.md").read_text())
        for r in data["rows"]:
            print(f"- {r['selection']}: rounds to target per seed {r['rounds_to_target']}")
        for png in ("accuracy.png", "auc.png", "variance.png"):
            if (cj.parent / png).is_file():
                shutil.copy(cj.parent / png, FIGURES / f"compare-{name}-{png}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="CPU-shortened plan (see README.md)")
    ap.add_argument("--only", choices=["variance", "compare"], default=None)
    ap.add_argument("--summarize", action="store_true", help="only tables + figures")
    args = ap.parse_args()
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    if not args.summarize:
        if args.only in (None, "variance"):
            variance_steps(args.quick)
        if args.only in (None, "compare"):
            compare_steps(args.quick)
    summarize()


if __name__ == "__main__":
    main()
