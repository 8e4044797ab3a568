"""Benchmark for fedstrat.sampling: timing at scale and Monte Carlo variance of every sampler.

Usage: python benchmarks/sampling.py [--rounds 10000] [--quick]
Prints rich tables and writes benchmarks/results/sampling.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

from fedstrat.sampling import (  # noqa: E402
    ClusteredSampler,
    MultinomialSampler,
    PowerOfChoiceSampler,
    StratifiedSampler,
    UniformSampler,
    choose_design,
    estimator_variance,
    multinomial_variance,
    neyman_allocation,
    proportional_allocation,
    stratify_by_histograms,
    stratum_statistics,
    uniform_variance,
)

OUT = Path(__file__).resolve().parent / "results" / "sampling.json"
console = Console(width=150)


# --------------------------------------------------------------------------- timing
def timing(sizes_n: list[int], n_strata: int = 10, classes: int = 10) -> list[dict]:
    # Warm-up (imports, first k-means call) so that the N = 1000 row is not import time.
    warm = np.random.default_rng(1).dirichlet(np.ones(classes), 200)
    stratify_by_histograms(warm, n_strata=3, seed=0)
    rows = []
    for n in sizes_n:
        rng = np.random.default_rng(0)
        props = rng.dirichlet(np.full(classes, 0.1), n)
        sizes = rng.integers(10, 1000, n)
        hist = np.round(props * sizes[:, None]) + (props == props.max(1, keepdims=True))
        m = max(10, n // 100)
        clock = time.perf_counter
        cpu = time.process_time
        t0, c0 = clock(), cpu()
        strata = stratify_by_histograms(hist, n_strata=n_strata, seed=0, fit_sample=20_000)
        t1, c1 = clock(), cpu()
        feats = hist / hist.sum(1, keepdims=True)
        st = stratum_statistics(feats, sizes, strata)
        ts, cs = clock(), cpu()
        alloc = neyman_allocation(st["masses"], st["stds"], m, capacity=strata.sizes)
        sampler = StratifiedSampler(sizes, strata, alloc, design="pps", seed=0)
        sel = sampler.sample()
        t2, c2 = clock(), cpu()
        reps = 5
        for _ in range(reps):
            sampler.sample()
        t3, c3 = clock(), cpu()
        uni = UniformSampler(sizes, m, seed=0)
        t4, c4 = clock(), cpu()
        for _ in range(reps):
            uni.sample()
        t5, c5 = clock(), cpu()
        assert len(sel.ids) == m
        rows.append(
            {
                "n_clients": n,
                "m": m,
                "n_strata": strata.n_strata,
                "stratify_s": t1 - t0,
                "stratify_cpu_s": c1 - c0,
                "stats_s": ts - t1,
                "stats_cpu_s": cs - c1,
                "allocate_build_sample_s": t2 - ts,
                "allocate_build_sample_cpu_s": c2 - cs,
                "sample_per_round_s": (t3 - t2) / reps,
                "sample_per_round_cpu_s": (c3 - c2) / reps,
                "uniform_sample_per_round_s": (t5 - t4) / reps,
                "uniform_sample_per_round_cpu_s": (c5 - c4) / reps,
            }
        )
        console.log(f"timing n={n} done")
    return rows


# --------------------------------------------------------------------------- populations
def population(
    kind: str,
    seed: int,
    n: int = 100,
    classes: int = 10,
    total: int = 5000,
    dim: int = 50,
    noise: float = 0.05,
):
    """Label-Dirichlet(0.1) split of ``total`` examples (sizes vary a lot) or an IID split.

    ``Delta_i = sum_c prop_{i,c} u_c + noise`` with random class directions ``u_c`` in R^dim.
    """
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, total)
    hist = np.zeros((n, classes))
    if kind == "dirichlet0.1":
        for c in range(classes):
            idx = np.flatnonzero(labels == c)
            share = rng.dirichlet(np.full(n, 0.1))
            owner = rng.choice(n, size=len(idx), p=share)
            np.add.at(hist, (owner, c), 1)
    elif kind == "iid":
        owner = rng.integers(0, n, total)
        np.add.at(hist, (owner, labels), 1)
    else:
        raise ValueError(kind)
    empty = hist.sum(1) == 0
    hist[empty, rng.integers(0, classes, empty.sum())] = 1  # every client holds >= 1 example
    sizes = hist.sum(1)
    props = hist / sizes[:, None]
    dirs = rng.normal(size=(classes, dim))
    updates = props @ dirs + noise * rng.normal(size=(n, dim))
    return sizes, hist, props, updates


def samplers_for(sizes, hist, props, updates, m, seed):
    """All samplers; stratification and allocation use only label histograms (the proxy)."""
    out = {}
    out["uniform"] = (UniformSampler(sizes, m, seed=seed), uniform_variance(updates, sizes, m))
    out["multinomial"] = (
        MultinomialSampler(sizes, m, seed=seed),
        multinomial_variance(updates, sizes, m),
    )
    for alg in (1, 2):
        cs = ClusteredSampler(
            sizes, m, algorithm=alg, updates=updates if alg == 2 else None, seed=seed
        )
        out[f"clustered{alg}"] = (cs, cs.variance(updates))
    p = sizes / sizes.sum()
    for k in (None, 5):
        # k=None: silhouette rule capped at m (every stratum needs >= 1 draw).
        strata = stratify_by_histograms(hist, n_strata=k, seed=seed, max_strata=m)
        tag = f"k={strata.n_strata}" + ("(auto)" if k is None else "")
        if k is None:
            s_y = np.array(
                [
                    np.sqrt(np.sum(np.var(p[mem, None] * props[mem], axis=0, ddof=1)))
                    if len(mem) > 1
                    else 0.0
                    for mem in (strata.members(h) for h in range(strata.n_strata))
                ]
            )
            a_srs = neyman_allocation(strata.sizes, s_y, m)
            out[f"strat-srswor-neyman {tag}"] = (
                StratifiedSampler(sizes, strata, a_srs, "srswor", seed=seed),
                estimator_variance(updates, sizes, strata, a_srs, "srswor"),
            )
        st = stratum_statistics(props, sizes, strata)
        a_pps = neyman_allocation(st["masses"], st["stds"], m, capacity=strata.sizes)
        out[f"strat-pps-neyman {tag}"] = (
            StratifiedSampler(sizes, strata, a_pps, "pps", seed=seed),
            estimator_variance(updates, sizes, strata, a_pps, "pps"),
        )
        a_prop = proportional_allocation(st["masses"], m, capacity=strata.sizes)
        out[f"strat-pps-proportional {tag}"] = (
            StratifiedSampler(sizes, strata, a_prop, "pps", seed=seed),
            estimator_variance(updates, sizes, strata, a_prop, "pps"),
        )
    choice = choose_design(sizes, hist, m, seed=seed)
    sampler = choice.make_sampler(sizes, m, seed=seed)
    if choice.strata is None:
        v = uniform_variance(updates, sizes, m)
    else:
        v = estimator_variance(updates, sizes, choice.strata, choice.allocation, choice.design)
    out[f"choose_design[{choice.design},k={choice.n_strata}]"] = (sampler, v)
    poc = PowerOfChoiceSampler(sizes, m, d=2 * m, seed=seed)
    target = p @ updates
    poc.set_losses(np.linalg.norm(updates - target, axis=1))  # proxy for local loss
    out["power-of-choice (BIASED)"] = (poc, float("nan"))
    return out, choice


def _ktag(row: dict) -> str:
    name = row["sampler"]
    return " k=auto" if "(auto)" in name else (" k=5" if " k=5" in name else "")


def monte_carlo(kind: str, seed: int, rounds: int, m: int = 10) -> dict:
    sizes, hist, props, updates = population(kind, seed)
    p = sizes / sizes.sum()
    target = p @ updates
    smp, choice = samplers_for(sizes, hist, props, updates, m, seed)
    rows = []
    for name, (sampler, v_formula) in smp.items():
        rng = np.random.default_rng(1000 + seed)
        est = np.empty((rounds, updates.shape[1]))
        n_distinct = 0
        for r in range(rounds):
            sel = sampler.sample(rng)
            est[r] = sel.weights @ updates[sel.ids]
            n_distinct += len(sel.ids)
        err = np.sum((est - target) ** 2, axis=1)
        mse = float(err.mean())
        bias2 = float(np.sum((est.mean(0) - target) ** 2))
        rows.append(
            {
                "sampler": name,
                "unbiased": bool(sampler.sample().unbiased),
                "mse": mse,
                "mse_se": float(err.std(ddof=1) / np.sqrt(rounds)),
                "bias_sq": bias2,
                "formula_variance": v_formula,
                "mean_distinct_clients": n_distinct / rounds,
                "allocation": (
                    sampler.allocation.tolist() if hasattr(sampler, "allocation") else None
                ),
            }
        )
    v_uni = rows[0]["mse"]
    for row in rows:
        row["ratio_to_uniform"] = row["mse"] / v_uni
    return {
        "population": kind,
        "seed": seed,
        "n_clients": len(sizes),
        "m": m,
        "rounds": rounds,
        "size_min": int(sizes.min()),
        "size_max": int(sizes.max()),
        "choose_design_reason": choice.reason,
        "rows": rows,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=10_000)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="small sizes (for smoke testing)")
    args = ap.parse_args()
    sizes_n = [1_000, 10_000] if args.quick else [1_000, 10_000, 100_000, 1_000_000]
    result: dict = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "timing": timing(sizes_n),
        "monte_carlo": [],
    }
    t = Table(
        title="stratify vs allocate+sample (pps, Neyman, 10 strata, m = max(10, N/100)); "
        "wall / CPU seconds (CPU = process time, robust on a shared machine)"
    )
    for col in (
        "N",
        "m",
        "stratify",
        "stratum stats",
        "alloc+build+1st sample",
        "sample/round",
        "uniform/round",
    ):
        t.add_column(col, justify="right")
    for r in result["timing"]:
        t.add_row(
            f"{r['n_clients']:,}",
            str(r["m"]),
            f"{r['stratify_s']:.3f} / {r['stratify_cpu_s']:.3f}",
            f"{r['stats_s']:.3f} / {r['stats_cpu_s']:.3f}",
            f"{r['allocate_build_sample_s']:.3f} / {r['allocate_build_sample_cpu_s']:.3f}",
            f"{r['sample_per_round_s']:.4f} / {r['sample_per_round_cpu_s']:.4f}",
            f"{r['uniform_sample_per_round_s']:.4f} / {r['uniform_sample_per_round_cpu_s']:.4f}",
        )
    console.print(t)
    for kind in ("dirichlet0.1", "iid"):
        for seed in range(args.seeds):
            res = monte_carlo(kind, seed, args.rounds)
            result["monte_carlo"].append(res)
            t = Table(
                title=f"{kind} seed={seed}: N=100, m=10, {args.rounds} rounds, sizes "
                f"{res['size_min']}..{res['size_max']}"
            )
            for col in (
                "sampler",
                "MSE",
                "±se",
                "MSE/uniform",
                "formula var",
                "bias^2",
                "distinct",
            ):
                t.add_column(col, justify="right")
            for r in res["rows"]:
                t.add_row(
                    r["sampler"],
                    f"{r['mse']:.4g}",
                    f"{r['mse_se']:.2g}",
                    f"{r['ratio_to_uniform']:.3f}",
                    f"{r['formula_variance']:.4g}",
                    f"{r['bias_sq']:.2g}",
                    f"{r['mean_distinct_clients']:.2f}",
                )
            console.print(t)
            console.print(f"choose_design: {res['choose_design_reason']}")
    # Summary: mean ratio to uniform over seeds.
    summary = {}
    for kind in ("dirichlet0.1", "iid"):
        runs = [r for r in result["monte_carlo"] if r["population"] == kind]
        names = [
            row["sampler"].split("[")[0].split(" k=")[0] + _ktag(row) for row in runs[0]["rows"]
        ]
        summary[kind] = {
            name: float(np.mean([run["rows"][i]["ratio_to_uniform"] for run in runs]))
            for i, name in enumerate(names)
        }
    result["summary_mean_ratio_to_uniform"] = summary
    t = Table(title=f"mean MSE / uniform MSE over {args.seeds} population seeds")
    t.add_column("sampler")
    names = list(summary["dirichlet0.1"])
    for kind in summary:
        t.add_column(kind, justify="right")
    for name in names:
        t.add_row(name, *[f"{summary[k].get(name, float('nan')):.3f}" for k in summary])
    console.print(t)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2))
    console.print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
