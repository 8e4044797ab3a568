"""Sketch of one update: Gaussian projection vs count sketch, timed next to a weighted average.

Timing (``benchmarks/results/sketch.json``): for d in {40k, 1M, 10M} one float32 update ``v``
is sketched to k = 64 dims by ``fedstrat.sampling.sketch_update(v, 64, method=...)`` for
``method`` in {"gaussian" (the default), "countsketch"}, and ``acc += w * v`` (one pass of a
weighted average over the same update, float32) is timed in the same loop, interleaved, single
BLAS thread (as the strategy runs it). Ratio = median sketch time / median weighted-average time
(target: countsketch <= 2x at d = 10M). The count sketch's first call (building its map) and the
memory its map keeps are reported too; float64 input is timed against a float64 pass.

``f32_slots_rel_diff``: the float32 sketch (float32 slot sums, as the strategy's per-reply pass
computes it for float32 models) against the float64 sketch of the same values.

Quality (``benchmarks/results/sketch_quality.json``): every client's update at round 1 of the
default job (mnist5k, 100 clients, Dirichlet(0.1), 784-50-10 MLP, 5 local epochs) from
``fedstrat.measure.compute_client_updates``; then for each method and sketch seed the
``stratified-sketch`` selection of ``measure_population`` (``sketch_update`` is patched in this
script only, to pass the method and seed), with the measured MSE of the aggregate and its
standard error, the k-means strata's agreement (adjusted Rand index) across methods and seeds,
and how well sketches estimate the per-stratum dispersion S_h (``--sh-strata`` = 4 k-means strata
of the label histograms, pps design: relative error of sigma_h from sketches, and the exact
variance of the Neyman allocation they lead to over that of the oracle allocation). Finally, over
``--wcss-seeds`` seeds, k-means with 10 strata on each method's sketches scored by the
within-stratum sum of squares of the true updates (the quantity stratification lowers), and
(``float32_slots``) the count sketches of the updates rounded to float32 and summed in float32
(the strategy's pass) against the float64 ones: difference, k-means strata ARI, S_h.

Run: ``python benchmarks/sketch.py [--sizes 40000 1000000 10000000] [--seeds 10]
[--samples 500] [--sh-strata 4] [--model NAME] [--skip-quality] [--skip-timing]``.
About 2-3 minutes on a 2-core machine; peak memory < 1 GB.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import time
import tracemalloc
from pathlib import Path
from typing import Any

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

import numpy as np  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

import fedstrat.sampling as S  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
DIM = 64
METHODS = ("gaussian", "countsketch")
console = Console(width=160)


def _machine() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "loadavg_1m": os.getloadavg()[0],
        "numpy": np.__version__,
    }


# ---------------------------------------------------------------------------------- timing
def _clock(fn: Any) -> tuple[float, float]:
    """(wall ms, CPU ms) of one call."""
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    return (time.perf_counter() - w0) * 1e3, (time.process_time() - c0) * 1e3


def _interleaved(fns: dict[str, Any], reps: dict[str, int]) -> dict[str, dict[str, float]]:
    """Median wall / CPU ms of each function, calls interleaved so load hits all alike."""
    wall: dict[str, list[float]] = {k: [] for k in fns}
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    for i in range(max(reps.values())):
        for name, fn in fns.items():
            if i < reps[name]:
                w, c = _clock(fn)
                wall[name].append(w)
                cpu[name].append(c)
    return {
        k: {
            "wall_ms": statistics.median(wall[k]),
            "cpu_ms": statistics.median(cpu[k]),
            "n": reps[k],
        }
        for k in fns
    }


def time_one(d: int, reps: int) -> dict[str, Any]:
    rng = np.random.default_rng(d)
    v32 = rng.standard_normal(d, dtype=np.float32)
    acc32 = np.zeros(d, dtype=np.float32)
    w32 = np.float32(0.1)
    row: dict[str, Any] = {"d": d, "k": DIM, "update_mb": v32.nbytes / 2**20}

    # First call: the count sketch builds its map (seed not used before); memory it keeps.
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    w, c = _clock(lambda: S.sketch_update(v32, DIM, 12345, method="countsketch"))
    kept = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    row["countsketch_first_call_ms"] = w
    row["countsketch_map_bytes"] = int(kept)
    tracemalloc.start()
    S.sketch_update(v32, DIM, 12345, method="countsketch")
    row["countsketch_work_peak_bytes"] = int(tracemalloc.get_traced_memory()[1])
    tracemalloc.stop()

    # Gaussian: cached matrix when d * k <= 8M (warm it), else regenerated on every call.
    g_reps = reps if d * DIM <= 1 << 23 else (2 if d <= 2_000_000 else 1)
    if d * DIM <= 1 << 23:
        S.sketch_update(v32, DIM, 0)
    fns = {
        "wavg": lambda: np.add(acc32, w32 * v32, out=acc32),
        "countsketch": lambda: S.sketch_update(v32, DIM, 0, method="countsketch"),
        "gaussian": lambda: S.sketch_update(v32, DIM, 0, method="gaussian"),
    }
    fns["countsketch"]()
    res = _interleaved(fns, {"wavg": reps, "countsketch": reps, "gaussian": g_reps})
    for name, r in res.items():
        row[f"{name}_ms"] = r["wall_ms"]
        row[f"{name}_cpu_ms"] = r["cpu_ms"]
        row[f"{name}_n"] = r["n"]
    for m in METHODS:
        row[f"{m}_over_wavg"] = row[f"{m}_ms"] / row["wavg_ms"]
        row[f"{m}_over_wavg_cpu"] = row[f"{m}_cpu_ms"] / max(row["wavg_cpu_ms"], 1e-9)
    row["gaussian_over_countsketch"] = row["gaussian_ms"] / row["countsketch_ms"]

    # float64 input (sketched in place, no float32 round trip) vs a float64 pass.
    v64 = v32.astype(np.float64)
    acc64 = np.zeros(d)
    S.sketch_update(v64, DIM, 0, method="countsketch")
    res = _interleaved(
        {
            "wavg": lambda: np.add(acc64, 0.1 * v64, out=acc64),
            "cs": lambda: S.sketch_update(v64, DIM, 0, method="countsketch"),
        },
        {"wavg": reps, "cs": reps},
    )
    # The strategy sums float32 updates in float32 slots (the count sketch's float32 path);
    # the same values summed in float64: largest difference relative to the largest bucket.
    a, b = S.count_sketch(v32, DIM, 0), S.count_sketch(v64, DIM, 0)
    row["f32_slots_rel_diff"] = float(np.abs(a - b).max() / np.abs(b).max())
    row["f64_wavg_ms"] = res["wavg"]["wall_ms"]
    row["f64_countsketch_ms"] = res["cs"]["wall_ms"]
    row["f64_countsketch_over_wavg"] = res["cs"]["wall_ms"] / res["wavg"]["wall_ms"]
    return row


def timing(sizes: list[int], reps: int) -> list[dict[str, Any]]:
    rows = []
    with threadpool_limits(limits=1):
        for d in sizes:
            console.print(f"timing d = {d:,} ...")
            rows.append(time_one(d, reps))
    table = Table(title=f"Sketch of one float32 update to k = {DIM} vs one `acc += w * v` pass")
    cols = (
        "d",
        "acc += w*v ms",
        "gaussian ms",
        "countsketch ms",
        "gaussian / pass",
        "countsketch / pass",
        "cs first call ms",
        "cs map KB",
        "f64: cs / pass",
        "f32 slots rel. diff",
    )
    for col in cols:
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(
            f"{r['d']:,}",
            f"{r['wavg_ms']:.3f}",
            f"{r['gaussian_ms']:.1f}",
            f"{r['countsketch_ms']:.3f}",
            f"{r['gaussian_over_wavg']:.0f}x",
            f"{r['countsketch_over_wavg']:.2f}x",
            f"{r['countsketch_first_call_ms']:.1f}",
            f"{r['countsketch_map_bytes'] / 1024:.0f}",
            f"{r['f64_countsketch_over_wavg']:.2f}x",
            f"{r['f32_slots_rel_diff']:.1e}",
        )
    console.print(table)
    return rows


# ---------------------------------------------------------------------------------- quality
def _ari(a: np.ndarray, b: np.ndarray) -> float:
    from sklearn.metrics import adjusted_rand_score

    return float(adjusted_rand_score(a, b))


def _dispersion(feats: np.ndarray, p: np.ndarray, labels: np.ndarray, design: str) -> np.ndarray:
    """Per-stratum dispersion as measure_population's oracle computes it from exact updates
    (srswor: S_{y,h} of y_i = p_i x_i; pps: sigma_h, q_i = p_i / P_h), here from any features."""
    out = np.zeros(int(labels.max()) + 1)
    for h in range(len(out)):
        idx = np.flatnonzero(labels == h)
        x = feats[idx]
        if design == "srswor":
            if len(idx) > 1:
                y = p[idx, None] * x
                out[h] = np.sqrt(((y - y.mean(axis=0)) ** 2).sum() / (len(idx) - 1))
        else:
            q = p[idx] / p[idx].sum()
            out[h] = np.sqrt(q @ ((x - q @ x) ** 2).sum(axis=1))
    return out


def _wcss(x: np.ndarray, labels: np.ndarray) -> float:
    """Within-stratum sum of squares sum_h sum_{i in h} ||x_i - xbar_h||^2."""
    return float(
        sum(((x[labels == h] - x[labels == h].mean(axis=0)) ** 2).sum() for h in np.unique(labels))
    )


def kmeans_wcss(upd: np.ndarray, n_strata: int, seeds: int) -> dict[str, Any]:
    """k-means strata (``stratify_by_sketches``, fixed ``n_strata``) on the sketches of each
    method and seed, scored by the within-stratum sum of squares of the TRUE updates (what
    stratification lowers); baseline: the same k-means on the full updates."""
    out: dict[str, Any] = {
        "n_strata": n_strata,
        "seeds": seeds,
        "full_updates": _wcss(upd, S.stratify_by_sketches(upd, n_strata=n_strata).labels),
    }
    for meth in METHODS:
        vals = np.array(
            [
                _wcss(
                    upd,
                    S.stratify_by_sketches(
                        S.sketch_update(upd, DIM, s, method=meth), n_strata=n_strata
                    ).labels,
                )
                for s in range(seeds)
            ]
        )
        out[meth] = {
            "mean": float(vals.mean()),
            "se": float(vals.std(ddof=1) / np.sqrt(len(vals))),
            "sd": float(vals.std(ddof=1)),
            "max": float(vals.max()),
        }
    return out


def float32_slots(upd: np.ndarray, n_strata: int, seeds: int, p: np.ndarray, hlab: np.ndarray,
                  design: str) -> dict[str, Any]:
    """The strategy's pass works in the replies' precision: ``Delta`` rounded to float32 and
    summed in float32 slots (``count_sketch`` of float32 rows), where it used to sketch the
    float64 difference in float64. Per sketch seed: largest difference of the two sketches
    relative to the largest bucket, agreement (ARI) of the k-means strata built on each, and
    relative difference of the S_h estimated from each."""
    rel, ari, s_h = [], [], []
    u32 = upd.astype(np.float32)
    for s in range(seeds):
        a, b = S.count_sketch(u32, DIM, s), S.count_sketch(upd, DIM, s)
        rel.append(float(np.abs(a - b).max() / np.abs(b).max()))
        la = S.stratify_by_sketches(a, n_strata=n_strata).labels
        lb = S.stratify_by_sketches(b, n_strata=n_strata).labels
        ari.append(_ari(np.asarray(la), np.asarray(lb)))
        da, db = _dispersion(a, p, hlab, design), _dispersion(b, p, hlab, design)
        s_h.append(float(np.nanmax(np.abs(da / np.where(db > 0, db, np.nan) - 1))))
    return {"seeds": seeds, "n_strata": n_strata, "sketch_rel_diff_max": max(rel),
            "kmeans_ari_min": min(ari), "kmeans_ari_mean": float(np.mean(ari)),
            "S_h_rel_diff_max": max(s_h)}


def _neyman(design: str, nh: np.ndarray, ph: np.ndarray, disp: np.ndarray, m: int) -> np.ndarray:
    if design == "pps":
        return np.asarray(S.neyman_allocation(ph, disp, m, capacity=nh), dtype=np.int64)
    return np.asarray(S.neyman_allocation(nh, disp, m), dtype=np.int64)


def quality(
    seeds: int, n_samples: int, model: str, sh_strata: int, wcss_seeds: int
) -> dict[str, Any]:
    from fedstrat.app.config import RunConfig
    from fedstrat.measure import Population, compute_client_updates, measure_population

    cfg = RunConfig()
    if model:
        cfg.model = model
    m = cfg.clients_per_round
    t0 = time.perf_counter()
    data = compute_client_updates(cfg, [1], on_progress=console.print)
    upd = data["rounds"][1]["updates"]
    sizes = data["sizes"]
    hist = data["histograms"]
    int_sizes = np.rint(sizes).astype(np.int64)
    pop = Population(upd, sizes)
    mp_kw: dict[str, Any] = {
        "n_samples": n_samples,
        "seed": cfg.seed,
        "design": cfg.design,
        "n_strata": cfg.n_strata,
    }
    ref = measure_population(pop, m, hist, selections=["uniform", "stratified"], **mp_kw)
    reference = {s.selection: {"mse": s.measured, "se": s.measured_se} for s in ref}

    # S_h: label-histogram strata (the system's default features) with a fixed, small number of
    # strata so that the Neyman allocation is not one client per stratum, pps design; the exact
    # dispersion of the updates is the oracle the sketches estimate.
    hstrata = S.stratify_by_histograms(hist, n_strata=sh_strata, seed=cfg.seed)
    hlab = np.asarray(hstrata.labels)
    hdesign = "pps"
    nh = np.bincount(hlab).astype(np.int64)
    ph = np.bincount(hlab, weights=pop.p)
    disp_exact = _dispersion(upd, pop.p, hlab, hdesign)
    alloc_oracle = _neyman(hdesign, nh, ph, disp_exact, m)
    var_oracle = float(S.estimator_variance(upd, int_sizes, hstrata, alloc_oracle, hdesign))

    original = S.sketch_update
    calls = [0]
    per: dict[str, list[dict[str, Any]]] = {meth: [] for meth in METHODS}
    labels: dict[str, list[np.ndarray]] = {meth: [] for meth in METHODS}
    try:
        for meth in METHODS:
            for sk_seed in range(seeds):

                def patched(v: Any, dim: int = 64, seed: int = 0, *, _m=meth, _s=sk_seed) -> Any:
                    calls[0] += 1  # measure's own seed is replaced by the sketch seed
                    return original(v, dim, _s, method=_m)

                S.sketch_update = patched
                before = calls[0]
                t1 = time.perf_counter()
                (st,) = measure_population(pop, m, hist, selections=["stratified-sketch"], **mp_kw)
                if calls[0] == before:
                    raise RuntimeError("measure_population no longer calls sampling.sketch_update")
                sk = original(upd, DIM, sk_seed, method=meth)
                choice = S.choose_design(int_sizes, sk, m, seed=cfg.seed, normalize=False)
                lab = (
                    np.asarray(choice.strata.labels)
                    if choice.strata is not None
                    else np.zeros(len(sizes), dtype=np.int64)
                )
                labels[meth].append(lab)
                rec: dict[str, Any] = {
                    "seed": sk_seed,
                    "mse": st.measured,
                    "se": st.measured_se,
                    "design": st.info.get("design", "uniform"),
                    "n_strata": st.info.get("n_strata", 1),
                    "seconds": time.perf_counter() - t1,
                }
                est = _dispersion(sk, pop.p, hlab, hdesign)
                rel = est / np.where(disp_exact > 0, disp_exact, np.nan) - 1
                alloc = _neyman(hdesign, nh, ph, est, m)
                var = float(S.estimator_variance(upd, int_sizes, hstrata, alloc, hdesign))
                rec["S_h_rel_err_mean_abs"] = float(np.nanmean(np.abs(rel)))
                rec["S_h_rel_err_max_abs"] = float(np.nanmax(np.abs(rel)))
                rec["neyman_from_sketch_var_over_oracle"] = var / var_oracle
                rec["allocation"] = alloc.tolist()
                per[meth].append(rec)
    finally:
        S.sketch_update = original

    def pair_ari(a: list[np.ndarray], b: list[np.ndarray], same: bool) -> dict[str, float]:
        vals = [
            _ari(x, y) for i, x in enumerate(a) for j, y in enumerate(b) if not (same and j <= i)
        ]
        return {"mean": float(np.mean(vals)), "min": float(np.min(vals)), "pairs": len(vals)}

    def summary(rs: list[dict[str, Any]]) -> dict[str, Any]:
        mse = np.array([r["mse"] for r in rs])
        se = np.array([r["se"] for r in rs])
        out = {
            "mse_mean_over_seeds": float(mse.mean()),
            # SE of that mean: Monte Carlo error of each seed plus the spread across sketch seeds.
            "mse_mean_se": float(np.sqrt(mse.var(ddof=1) / len(mse) + np.mean(se**2) / len(mse)))
            if len(mse) > 1
            else float(se[0]),
            "mse_sd_across_seeds": float(mse.std(ddof=1)) if len(mse) > 1 else 0.0,
            "uniform_over_mse": reference["uniform"]["mse"] / float(mse.mean()),
        }
        if "S_h_rel_err_mean_abs" in rs[0]:
            out["S_h_rel_err_mean_abs"] = float(np.mean([r["S_h_rel_err_mean_abs"] for r in rs]))
            out["neyman_from_sketch_var_over_oracle_mean"] = float(
                np.mean([r["neyman_from_sketch_var_over_oracle"] for r in rs])
            )
        return out

    res = {
        "population": {
            "dataset": cfg.dataset,
            "model": data["model"],
            "dim": data["dim"],
            "num_clients": cfg.num_clients,
            "clients_per_round": m,
            "round": 1,
            "local_epochs": cfg.local_epochs,
            "seed": cfg.seed,
        },
        "n_samples": n_samples,
        "sketch_dim": DIM,
        "sketch_seeds": seeds,
        "reference": reference,
        "histogram_strata": {
            "design": hdesign,
            "n_strata": len(nh),
            "N_h": nh.tolist(),
            "S_h_exact": disp_exact.tolist(),
            "oracle_allocation": alloc_oracle.tolist(),
            "oracle_variance": var_oracle,
        },
        "per_seed": per,
        "summary": {meth: summary(per[meth]) for meth in METHODS},
        "strata_ari": {
            "gaussian_vs_countsketch": pair_ari(labels["gaussian"], labels["countsketch"], False),
            "gaussian_vs_gaussian": pair_ari(labels["gaussian"], labels["gaussian"], True),
            "countsketch_vs_countsketch": pair_ari(
                labels["countsketch"], labels["countsketch"], True
            ),
        },
        "kmeans_wcss": kmeans_wcss(upd, 10, wcss_seeds),
        "float32_slots": float32_slots(upd, 10, seeds, pop.p, hlab, hdesign),
        "seconds": time.perf_counter() - t0,
    }
    table = Table(title=f"stratified-sketch on {data['dim']:,}-dim updates, {seeds} sketch seeds")
    for col in (
        "method",
        "MSE (mean over seeds)",
        "± SE",
        "uniform / MSE",
        "S_h rel. err",
        "Neyman var / oracle",
    ):
        table.add_column(col, justify="right")
    for meth in METHODS:
        s = res["summary"][meth]
        table.add_row(
            meth,
            f"{s['mse_mean_over_seeds']:.4e}",
            f"{s['mse_mean_se']:.1e}",
            f"{s['uniform_over_mse']:.2f}",
            f"{s.get('S_h_rel_err_mean_abs', float('nan')):.3f}",
            f"{s.get('neyman_from_sketch_var_over_oracle_mean', float('nan')):.3f}",
        )
    for name in ("uniform", "stratified"):
        table.add_row(
            f"[dim]{name} (reference)[/dim]",
            f"{reference[name]['mse']:.4e}",
            f"{reference[name]['se']:.1e}",
            f"{reference['uniform']['mse'] / reference[name]['mse']:.2f}",
            "",
            "",
        )
    console.print(table)
    ari = res["strata_ari"]
    console.print(
        "strata agreement (ARI, mean over seed pairs): gaussian vs countsketch "
        f"{ari['gaussian_vs_countsketch']['mean']:.3f}; gaussian vs gaussian "
        f"{ari['gaussian_vs_gaussian']['mean']:.3f}; countsketch vs countsketch "
        f"{ari['countsketch_vs_countsketch']['mean']:.3f}"
    )
    kw = res["kmeans_wcss"]
    console.print(
        f"k-means ({kw['n_strata']} strata) on sketches, {kw['seeds']} seeds: within-stratum SS of "
        f"the true updates, gaussian {kw['gaussian']['mean']:.3f} ± {kw['gaussian']['se']:.3f}, "
        f"countsketch {kw['countsketch']['mean']:.3f} ± {kw['countsketch']['se']:.3f} "
        f"(k-means on the full updates: {kw['full_updates']:.3f})"
    )
    f32 = res["float32_slots"]
    console.print(
        f"float32 pass (the strategy's) vs float64 count sketches, {f32['seeds']} seeds: "
        f"largest sketch difference {f32['sketch_rel_diff_max']:.1e} of the largest bucket, "
        f"k-means strata ARI min {f32['kmeans_ari_min']:.3f}, S_h relative difference max "
        f"{f32['S_h_rel_diff_max']:.1e}"
    )
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[40_000, 1_000_000, 10_000_000])
    ap.add_argument("--reps", type=int, default=11, help="timed calls per size (gaussian: fewer)")
    ap.add_argument("--seeds", type=int, default=10, help="sketch seeds in the quality check")
    ap.add_argument("--samples", type=int, default=500, help="Monte Carlo samples per seed")
    ap.add_argument("--model", default="", help="model of the quality population ('' = default)")
    ap.add_argument("--sh-strata", type=int, default=4, help="histogram strata for the S_h check")
    ap.add_argument("--wcss-seeds", type=int, default=30, help="sketch seeds, k-means check")
    ap.add_argument("--skip-timing", action="store_true")
    ap.add_argument("--skip-quality", action="store_true")
    args = ap.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    command = (
        f"python benchmarks/sketch.py --sizes {' '.join(map(str, args.sizes))} "
        f"--reps {args.reps} --seeds {args.seeds} --samples {args.samples}"
        + (f" --model {args.model}" if args.model else "")
    )
    if not args.skip_timing:
        rows = timing(args.sizes, args.reps)
        top = max(rows, key=lambda r: r["d"])
        payload = {
            "benchmark": "sketch",
            "command": command,
            "machine": _machine(),
            "what": "median ms of one sketch of a float32 update to k=64 vs one acc += w*v pass "
            "(float32, same update), interleaved, single BLAS thread",
            "target": {
                "d": top["d"],
                "countsketch_over_wavg": top["countsketch_over_wavg"],
                "limit": 2.0,
                "met": top["countsketch_over_wavg"] <= 2.0,
            },
            "rows": rows,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        }
        (RESULTS / "sketch.json").write_text(json.dumps(payload, indent=2) + "\n")
        console.print(f"wrote {RESULTS / 'sketch.json'}")
    if not args.skip_quality:
        res = quality(args.seeds, args.samples, args.model, args.sh_strata, args.wcss_seeds)
        res = {"benchmark": "sketch_quality", "command": command, "machine": _machine(), **res}
        name = f"sketch_quality_{args.model}.json" if args.model else "sketch_quality.json"
        (RESULTS / name).write_text(json.dumps(res, indent=2) + "\n")
        console.print(f"wrote {RESULTS / name}")


if __name__ == "__main__":
    main()
