"""Read run directories, summarise them, and render tables and plots (``fedstrat report``).

A run directory (written by :func:`fedstrat.app.simulation.run_simulation_job`) holds
``config.toml``, ``metrics.json`` / ``metrics.csv`` (one row per round), ``summary.json`` and
``plots/``. A compare directory (written by ``fedstrat compare``) holds one run directory per
(selection, seed), ``compare/`` (table, CSV, JSON, plots) and optionally ``variance/`` (the
measured estimator variance).
"""

from __future__ import annotations

import csv
import json
import math
import os
import statistics
import sys
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from fedstrat.app.rundir import DEFAULT_TARGETS  # report and summary.json agree

_ALIASES: dict[str, tuple[str, ...]] = {
    "round": ("round", "server_round", "server-round"),
    "accuracy": ("accuracy", "acc", "eval_acc", "eval-acc", "test_accuracy"),
    "auc": ("auc", "eval_auc", "eval-auc", "test_auc"),
    "loss": ("loss", "eval_loss", "eval-loss", "test_loss"),
    "logloss": ("logloss", "eval_logloss", "eval-logloss", "test_logloss"),
    "train_loss": ("train_loss", "train-loss"),
    "pred_var": (
        "pred_var",
        "predicted_variance",
        "fedstrat-pred-var",
        "pred-var",
        "predicted_var",
    ),
    "pred_var_uniform": (
        "pred_var_uniform",
        "predicted_variance_uniform",
        "fedstrat-pred-var-uniform",
        "pred-var-uniform",
        "uniform_predicted_variance",
        "uniform_pred_var",
    ),
    "seconds": ("seconds", "round_seconds", "time", "elapsed"),
}


class ReportError(ValueError):
    """A directory is not a readable run or compare directory."""


def _num(value: Any) -> float:
    """Float or NaN (None, '', unparsable -> NaN)."""
    if value is None or isinstance(value, bool):
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def pick(row: Mapping[str, Any], key: str) -> float:
    """Value of a canonical metric ``key`` in ``row`` under any of its known spellings."""
    for name in _ALIASES.get(key, (key,)):
        for variant in (name, name.replace("_", "-"), name.replace("-", "_")):
            if variant in row:
                v = _num(row[variant])
                if not math.isnan(v):
                    return v
    return math.nan


def normalise_row(row: Mapping[str, Any], is_ctr: bool | None = None) -> dict[str, float]:
    """Canonical per-round record: round, score (accuracy or AUC), loss (or logloss),
    train_loss, pred_var, pred_var_uniform, ratio = pred_var_uniform / pred_var, seconds."""
    acc, auc = pick(row, "accuracy"), pick(row, "auc")
    if is_ctr is None:
        is_ctr = math.isnan(acc) and not math.isnan(auc)
    score = auc if is_ctr else acc
    loss = pick(row, "logloss") if is_ctr else pick(row, "loss")
    if is_ctr and math.isnan(loss):
        loss = pick(row, "loss")
    pv, pu = pick(row, "pred_var"), pick(row, "pred_var_uniform")
    ratio = pu / pv if pv > 0 and not math.isnan(pu) else math.nan
    return {
        "round": pick(row, "round"),
        "score": score,
        "loss": loss,
        "train_loss": pick(row, "train_loss"),
        "pred_var": pv,
        "pred_var_uniform": pu,
        "ratio": ratio,
        "seconds": pick(row, "seconds"),
    }


@dataclass
class RunSummary:
    """What ``report`` and ``compare`` show about one run."""

    run_dir: str
    selection: str
    seed: int
    dataset: str
    metric: str  # "accuracy" or "auc"
    rounds: int
    final_score: float
    best_score: float
    target: float
    rounds_to_target: int | None
    mean_pred_var: float
    mean_ratio: float
    seconds: float
    curve: list[dict[str, float]] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k != "curve"}
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in d.items()}


def is_run_dir(path: Path) -> bool:
    return (path / "metrics.json").is_file() or (path / "metrics.csv").is_file()


def _read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    mj = run_dir / "metrics.json"
    if mj.is_file():
        try:
            data = json.loads(mj.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ReportError(f"{mj} is not valid JSON: {exc}") from exc
        if isinstance(data, dict):
            for key in ("rounds", "metrics", "history"):
                if isinstance(data.get(key), list):
                    data = data[key]
                    break
        if not isinstance(data, list):
            raise ReportError(f"{mj}: expected a list of per-round records")
        return [r for r in data if isinstance(r, dict)]
    mc = run_dir / "metrics.csv"
    if mc.is_file():
        with mc.open(newline="", encoding="utf-8") as fh:
            return list(csv.DictReader(fh))
    raise ReportError(f"{run_dir} is not a run directory (no metrics.json or metrics.csv)")


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return {}
    return data if isinstance(data, dict) else {}


def _read_config(run_dir: Path) -> dict[str, Any]:
    p = run_dir / "config.toml"
    if not p.is_file():
        return {}
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError:
        return {}
    if isinstance(data.get("fedstrat"), dict):
        data = data["fedstrat"]
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def rounds_to_target(curve: Sequence[Mapping[str, float]], target: float) -> int | None:
    """First round whose score reaches ``target`` (None if never)."""
    for row in curve:
        if not math.isnan(row["score"]) and row["score"] >= target:
            return int(row["round"])
    return None


def load_run(run_dir: str | Path, target: float | None = None) -> RunSummary:
    """Summarise a run directory. ``target`` overrides the run's target accuracy."""
    d = Path(run_dir)
    rows = _read_metrics(d)
    cfg = _read_config(d)
    summ = _read_json(d / "summary.json")
    dataset = str(cfg.get("dataset", summ.get("dataset", "")))
    is_ctr = dataset.startswith("movielens") or dataset == "criteo" or None
    curve = [normalise_row(r, is_ctr) for r in rows]
    if is_ctr is None and curve:
        is_ctr = any(not math.isnan(pick(r, "auc")) for r in rows) and all(
            math.isnan(pick(r, "accuracy")) for r in rows
        )
    for i, row in enumerate(curve):
        if math.isnan(row["round"]):
            row["round"] = float(i + 1)
    curve.sort(key=lambda r: r["round"])
    scored = [r for r in curve if not math.isnan(r["score"])]
    if target is None or target <= 0:
        target = _num(summ.get("target_accuracy", summ.get("target")))
        if math.isnan(target) or target <= 0:
            target = _num(cfg.get("target_accuracy"))
        if math.isnan(target) or target <= 0:
            target = DEFAULT_TARGETS.get(dataset, 0.8)
    pvs = [r["pred_var"] for r in curve if not math.isnan(r["pred_var"])]
    ratios = [r["ratio"] for r in curve if not math.isnan(r["ratio"])]
    secs = [r["seconds"] for r in curve if not math.isnan(r["seconds"])]
    total_seconds = _num(summ.get("seconds", summ.get("wall_seconds")))
    if math.isnan(total_seconds):
        total_seconds = float(sum(secs)) if secs else math.nan
    return RunSummary(
        run_dir=str(d),
        selection=str(cfg.get("selection", summ.get("selection", "?"))),
        seed=int(_num(cfg.get("seed", summ.get("seed", 0))) or 0),
        dataset=dataset,
        metric="auc" if is_ctr else "accuracy",
        rounds=int(max((r["round"] for r in curve), default=0)),
        final_score=scored[-1]["score"] if scored else math.nan,
        best_score=max((r["score"] for r in scored), default=math.nan),
        target=float(target),
        rounds_to_target=rounds_to_target(curve, float(target)),
        mean_pred_var=statistics.fmean(pvs) if pvs else math.nan,
        mean_ratio=statistics.fmean(ratios) if ratios else math.nan,
        seconds=total_seconds,
        curve=curve,
    )


def find_runs(paths: Iterable[str | Path]) -> tuple[list[Path], list[Path]]:
    """Split arguments into run directories and compare directories (whose sub-folders are
    run directories). Raises :class:`ReportError` for anything else."""
    runs: list[Path] = []
    compares: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if not p.is_dir():
            raise ReportError(f"not a directory: {p}")
        if is_run_dir(p):
            runs.append(p)
            continue
        subs = sorted(s for s in p.iterdir() if s.is_dir() and is_run_dir(s))
        if not subs:
            raise ReportError(f"{p} is neither a run directory nor a compare directory")
        compares.append(p)
        runs.extend(subs)
    return runs, compares


# ---------------------------------------------------------------------------------- comparison
def _median_rounds(values: Sequence[int | None]) -> float:
    """Median of rounds-to-target; runs that never reach it count as +inf."""
    if not values:
        return math.nan
    return float(statistics.median([math.inf if v is None else v for v in values]))


def _finite(values: Iterable[float]) -> list[float]:
    return [v for v in values if not math.isnan(v)]


def compare_rows(
    runs: Sequence[RunSummary], measured: Mapping[str, float] | None = None
) -> list[dict[str, Any]]:
    """One row per selection: means over seeds, median rounds to target, measured variance."""
    groups: dict[str, list[RunSummary]] = {}
    for r in runs:
        groups.setdefault(r.selection, []).append(r)
    rows = []
    for sel, rs in groups.items():
        finals = _finite(r.final_score for r in rs)
        bests = _finite(r.best_score for r in rs)
        pvs = _finite(r.mean_pred_var for r in rs)
        ratios = _finite(r.mean_ratio for r in rs)
        rtt = [r.rounds_to_target for r in rs]
        rows.append(
            {
                "selection": sel,
                "seeds": ",".join(str(r.seed) for r in sorted(rs, key=lambda r: r.seed)),
                "n_runs": len(rs),
                "metric": rs[0].metric,
                "final_mean": statistics.fmean(finals) if finals else math.nan,
                "final_std": statistics.stdev(finals) if len(finals) > 1 else 0.0,
                "best_mean": statistics.fmean(bests) if bests else math.nan,
                "target": rs[0].target,
                "rounds_to_target_median": _median_rounds(rtt),
                "rounds_to_target": [v for v in rtt],
                "reached": sum(v is not None for v in rtt),
                "mean_pred_var": statistics.fmean(pvs) if pvs else math.nan,
                "mean_pred_ratio": statistics.fmean(ratios) if ratios else math.nan,
                "measured_var": (measured or {}).get(sel, math.nan),
            }
        )
    order = {"stratified": 0, "uniform": 1, "multinomial": 2, "clustered1": 3, "clustered2": 4}
    rows.sort(key=lambda r: (order.get(r["selection"], 9), r["selection"]))
    base = next((r for r in rows if r["selection"] == "uniform"), None)
    for r in rows:
        speed = math.nan
        if base is not None:
            b, x = base["rounds_to_target_median"], r["rounds_to_target_median"]
            if math.isfinite(b) and math.isfinite(x) and x > 0:
                speed = b / x
        r["speedup_vs_uniform"] = speed
        mv, mb = r["measured_var"], (base or {}).get("measured_var", math.nan)
        r["measured_ratio_uniform_over"] = mb / mv if mv and mv > 0 else math.nan
    return rows


def fmt(value: Any, digits: int = 4) -> str:
    """Compact human formatting: NaN -> '-', inf -> 'not reached'."""
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        if math.isinf(value):
            return "not reached"
        if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
            return f"{value:.3e}"
        return f"{value:.{digits}g}"
    return str(value)


COMPARE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("selection", "selection"),
    ("n_runs", "runs"),
    ("final_mean", "final {metric} (mean)"),
    ("final_std", "std"),
    ("best_mean", "best (mean)"),
    ("rounds_to_target_median", "rounds to {target} (median)"),
    ("reached", "reached"),
    ("speedup_vs_uniform", "speed-up vs uniform"),
    ("mean_pred_var", "mean predicted var"),
    ("mean_pred_ratio", "pred. ratio uniform/this"),
    ("measured_var", "measured var"),
    ("measured_ratio_uniform_over", "measured uniform/this"),
)


def compare_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    """Markdown table of :func:`compare_rows`."""
    if not rows:
        return "(no runs)\n"
    metric, target = rows[0]["metric"], fmt(rows[0]["target"])
    heads = [h.format(metric=metric, target=target) for _, h in COMPARE_COLUMNS]
    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    for r in rows:
        lines.append("| " + " | ".join(fmt(r[k]) for k, _ in COMPARE_COLUMNS) + " |")
    return "\n".join(lines) + "\n"


def rich_compare_table(rows: Sequence[Mapping[str, Any]], title: str = "comparison") -> Any:
    from rich.table import Table

    metric = rows[0]["metric"] if rows else "accuracy"
    target = fmt(rows[0]["target"]) if rows else "-"
    table = Table(title=title)
    for i, (_, h) in enumerate(COMPARE_COLUMNS):
        head = h.format(metric=metric, target=target)
        table.add_column(head, justify="left" if i == 0 else "right")
    for r in rows:
        table.add_row(*(fmt(r[k]) for k, _ in COMPARE_COLUMNS))
    return table


def rich_run_table(runs: Sequence[RunSummary], title: str = "runs") -> Any:
    from rich.table import Table

    table = Table(title=title)
    for h in (
        "run dir",
        "selection",
        "seed",
        "final",
        "best",
        "rounds to target",
        "mean var ratio (uniform/this)",
        "seconds",
    ):
        table.add_column(h, justify="left" if h == "run dir" else "right")
    for r in runs:
        rtt = f"{r.rounds_to_target}" if r.rounds_to_target else f"not reached ({fmt(r.target)})"
        table.add_row(
            r.run_dir,
            r.selection,
            str(r.seed),
            f"{fmt(r.final_score)} {r.metric}",
            fmt(r.best_score),
            rtt,
            fmt(r.mean_ratio),
            fmt(r.seconds, 3),
        )
    return table


# ---------------------------------------------------------------------------------- writing
def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temporary file + rename, so readers never see a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    return obj


def dumps_json(obj: Any) -> str:
    return json.dumps(_json_safe(obj), indent=2, allow_nan=False) + "\n"


def write_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """CSV with the union of keys (lists joined by ';')."""
    keys: list[str] = []
    for r in rows:
        keys.extend(k for k in r if k not in keys)
    import io

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    for r in rows:
        w.writerow(
            {
                k: ";".join("" if x is None else str(x) for x in v) if isinstance(v, list) else v
                for k, v in r.items()
            }
        )
    atomic_write_text(path, buf.getvalue())


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    fig.savefig(tmp, dpi=90, bbox_inches="tight")
    os.replace(tmp, path)


def _band(
    curves: Sequence[Sequence[Mapping[str, float]]], key: str
) -> tuple[list, list, list, list]:
    """Per round: x, mean, min, max of ``key`` across runs (rounds present in any run)."""
    by_round: dict[float, list[float]] = {}
    for c in curves:
        for r in c:
            v = r[key]
            if not math.isnan(v):
                by_round.setdefault(r["round"], []).append(v)
    xs = sorted(by_round)
    return (
        xs,
        [statistics.fmean(by_round[x]) for x in xs],
        [min(by_round[x]) for x in xs],
        [max(by_round[x]) for x in xs],
    )


def plot_comparison(runs: Sequence[RunSummary], out_dir: Path) -> list[Path]:
    """Accuracy (or AUC) and predicted variance per round: mean line and min-max band across
    seeds, one colour per selection. Returns the written files."""
    plt = _plt()
    groups: dict[str, list[RunSummary]] = {}
    for r in runs:
        groups.setdefault(r.selection, []).append(r)
    written = []
    metric = runs[0].metric if runs else "accuracy"
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for sel, rs in groups.items():
        xs, mean, lo, hi = _band([r.curve for r in rs], "score")
        if xs:
            (line,) = ax.plot(xs, mean, label=f"{sel} (n={len(rs)})")
            ax.fill_between(xs, lo, hi, alpha=0.2, color=line.get_color())
    if runs:
        ax.axhline(runs[0].target, color="grey", lw=0.8, ls="--", label="target")
    ax.set_xlabel("round")
    ax.set_ylabel(f"test {metric}")
    ax.set_title(f"test {metric}: mean and min-max over seeds")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    _save(fig, out_dir / f"{metric}.png")
    written.append(out_dir / f"{metric}.png")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    drew = False
    for sel, rs in groups.items():
        xs, mean, lo, hi = _band([r.curve for r in rs], "pred_var")
        if xs and all(v > 0 for v in lo):
            (line,) = ax.plot(xs, mean, label=sel)
            ax.fill_between(xs, lo, hi, alpha=0.2, color=line.get_color())
            drew = True
    if drew:
        ax.set_yscale("log")
    ax.set_xlabel("round")
    ax.set_ylabel("predicted variance of the aggregate")
    ax.set_title("predicted estimator variance: mean and min-max over seeds")
    if drew:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    _save(fig, out_dir / "variance.png")
    written.append(out_dir / "variance.png")
    plt.close(fig)
    return written


def plot_run(run: RunSummary, out_dir: Path) -> list[Path]:
    """Score/loss and predicted variance of one run."""
    plt = _plt()
    xs = [r["round"] for r in run.curve]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ax.plot(xs, [r["score"] for r in run.curve], label=run.metric)
    ax.set_xlabel("round")
    ax.set_ylabel(f"test {run.metric}")
    ax2 = ax.twinx()
    ax2.plot(xs, [r["loss"] for r in run.curve], color="tab:red", alpha=0.6, label="loss")
    ax2.set_ylabel("test loss")
    ax.set_title(f"{run.selection} seed {run.seed}")
    ax.grid(alpha=0.3)
    _save(fig, out_dir / f"{run.metric}.png")
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    pv = [r["pred_var"] for r in run.curve]
    pu = [r["pred_var_uniform"] for r in run.curve]
    ax.plot(xs, pv, label=f"{run.selection} (predicted)")
    ax.plot(xs, pu, label="uniform (predicted)")
    if any(v > 0 for v in pv + pu if not math.isnan(v)):
        ax.set_yscale("log")
    ax.set_xlabel("round")
    ax.set_ylabel("predicted variance")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    _save(fig, out_dir / "variance.png")
    plt.close(fig)
    return [out_dir / f"{run.metric}.png", out_dir / "variance.png"]


def load_measured(path: Path) -> dict[str, float]:
    """``{selection: measured E||T_hat - T||^2}`` from a ``variance.json`` written by
    ``fedstrat measure-variance`` (mean over the measured rounds and seeds)."""
    data = _read_json(path)
    acc: dict[str, list[float]] = {}
    for row in data.get("rows", []):
        v = _num(row.get("measured"))
        if not math.isnan(v):
            acc.setdefault(str(row.get("selection")), []).append(v)
    return {k: statistics.fmean(v) for k, v in acc.items()}


def write_comparison(
    runs: Sequence[RunSummary], out_dir: Path, measured: Mapping[str, float] | None = None
) -> tuple[list[dict[str, Any]], list[Path]]:
    """Write compare.json, compare.csv, runs.csv, table.md and plots into ``out_dir``."""
    rows = compare_rows(runs, measured)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(
        out_dir / "compare.json",
        dumps_json({"rows": rows, "runs": [r.to_dict() for r in runs]}),
    )
    write_csv(out_dir / "compare.csv", rows)
    write_csv(out_dir / "runs.csv", [r.to_dict() for r in runs])
    atomic_write_text(out_dir / "table.md", compare_markdown(rows))
    files = [out_dir / n for n in ("compare.json", "compare.csv", "runs.csv", "table.md")]
    files += plot_comparison(runs, out_dir)
    return rows, files
