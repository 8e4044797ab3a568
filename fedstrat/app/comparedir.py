"""The compare directory (``fedstrat compare --out DIR``): written and read here.

Layout::

    <selection>-s<seed>/   one run directory per (selection, seed)  (fedstrat.app.rundir)
    variance/              measured estimator variance (fedstrat.measure.output), optional
    compare/               compare.json  {"rows": [CompareRow...], "runs": [RunOverview...]}
                           compare.csv (rows), runs.csv (runs), table.md,
                           <metric>.png and variance.png (fedstrat.app.plots)

A :class:`CompareRow` aggregates the runs of one selection over seeds; every number in it comes
from the runs' ``summary.json`` (:class:`~fedstrat.app.rundir.RunSummary`) or metrics rows.
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedstrat.app.fileio import write_json_atomic, write_text_atomic
from fedstrat.app.plots import plot_comparison
from fedstrat.app.rundir import MIN_RATIO_ROUNDS, RunData, RunDirError, is_run_dir
from fedstrat.app.tables import fmt, fmt_pm, fmt_ratio, markdown_table, write_csv

if TYPE_CHECKING:
    from fedstrat.measure.output import MeasuredVar

COMPARE_DIR = "compare"
VARIANCE_DIR = "variance"
COMPARE_JSON = "compare.json"
COMPARE_CSV = "compare.csv"
RUNS_CSV = "runs.csv"
TABLE_MD = "table.md"

#: Row order of the comparison table (others after, by name).
_ORDER = {"stratified": 0, "uniform": 1, "multinomial": 2, "clustered1": 3, "clustered2": 4}


def run_dir_name(selection: str, seed: int) -> str:
    """Name of the run directory of (``selection``, ``seed``) inside a compare directory."""
    return f"{selection}-s{seed}"


@dataclass(frozen=True)
class RunOverview:
    """One run as the comparison lists it (``runs`` of compare.json, runs.csv).

    ``final_score``/``best_score``/``rounds_to_target``/``target``/``rounds`` come from the
    run's summary, ``seconds`` is its ``wall_seconds`` and ``pred_ratio_fedavg`` /
    ``pred_ratio_fedavg_se`` / ``pred_ratio_rounds`` its predicted MSE ratio FedAvg / design
    used (mean and standard error over its tracked rounds, and their number; see
    :class:`~fedstrat.app.rundir.RunSummary`); ``mean_pred_var`` is the mean predicted
    variance over its rounds.
    """

    run_dir: str
    selection: str
    seed: int
    dataset: str
    metric: str
    rounds: int
    final_score: float | None
    best_score: float | None
    target: float
    rounds_to_target: int | None
    mean_pred_var: float | None
    seconds: float
    pred_ratio_fedavg: float | None = None
    pred_ratio_fedavg_se: float | None = None
    pred_ratio_rounds: int | None = None

    @classmethod
    def of(cls, run: RunData) -> RunOverview:
        """The overview of a loaded run."""
        s = run.summary
        return cls(
            run_dir=str(run.path),
            selection=s.selection,
            seed=s.seed,
            dataset=s.dataset,
            metric=s.metric,
            rounds=s.rounds,
            final_score=s.final,
            best_score=s.best,
            target=s.target,
            rounds_to_target=s.rounds_to_target,
            mean_pred_var=run.mean_pred_var,
            seconds=s.wall_seconds,
            pred_ratio_fedavg=s.pred_ratio_fedavg,
            pred_ratio_fedavg_se=s.pred_ratio_fedavg_se,
            pred_ratio_rounds=s.pred_ratio_rounds,
        )


@dataclass(frozen=True)
class CompareRow:
    """One selection over its seeds. NaN = not available; ``rounds_to_target_median`` is
    +inf when fewer than half the seeds reach the target; ``speedup_vs_uniform`` = uniform's
    median rounds to target / this one's; ``measured_var`` / ``measured_var_se`` the measured
    MSE (mean over the measured rounds and seeds) and its Monte Carlo standard error;
    ``measured_ratio_uniform_over`` / ``_se`` = measured MSE of uniform / of this selection,
    the mean over the ``measured_ratio_pairs`` (round, seed) pairs measured with both and its
    standard error (:class:`~fedstrat.measure.output.MeasuredVar`; given bare means, the
    ratio of the means without error and ``measured_ratio_pairs`` None);
    ``pred_ratio_fedavg`` / ``pred_ratio_fedavg_se`` the predicted MSE ratio FedAvg / design
    used, mean over the tracked rounds of the runs that have one (each run's mean weighted
    by its rounds) and its standard error (the runs' errors combined), ``pred_ratio_rounds``
    the number of tracked rounds of all its runs
    (None when no run recorded it)."""

    selection: str
    seeds: str
    n_runs: int
    metric: str
    final_mean: float
    final_std: float
    best_mean: float
    target: float
    rounds_to_target_median: float
    rounds_to_target: list[int | None]
    reached: int
    mean_pred_var: float
    measured_var: float
    speedup_vs_uniform: float = math.nan
    measured_ratio_uniform_over: float = math.nan
    pred_ratio_fedavg: float = math.nan
    pred_ratio_fedavg_se: float = math.nan
    pred_ratio_rounds: int | None = None
    measured_var_se: float = math.nan
    #: 80% bootstrap band of ``speedup_vs_uniform`` (seeds of both resampled; +inf: unbounded)
    speedup_lo: float = math.nan
    speedup_hi: float = math.nan
    measured_ratio_uniform_over_se: float = math.nan
    measured_ratio_pairs: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """``{field: value}`` in file order."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


def _mean(values: Iterable[float | None]) -> float:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.fmean(vals) if vals else math.nan


def _pooled_ratio(runs: Sequence[RunOverview]) -> dict[str, Any]:
    """The CompareRow's ``pred_ratio_*`` fields of ``runs`` (see :class:`CompareRow`)."""
    counts = [r.pred_ratio_rounds for r in runs if r.pred_ratio_rounds is not None]
    out: dict[str, Any] = {"pred_ratio_rounds": sum(counts) if counts else None}
    have = [
        (float(r.pred_ratio_rounds), r.pred_ratio_fedavg, r.pred_ratio_fedavg_se)
        for r in runs
        if r.pred_ratio_rounds and r.pred_ratio_fedavg is not None
        and r.pred_ratio_fedavg_se is not None
    ]
    if have:
        n = sum(k for k, _, _ in have)
        out["pred_ratio_fedavg"] = sum(k * mean for k, mean, _ in have) / n
        out["pred_ratio_fedavg_se"] = math.hypot(*(k * se for k, _, se in have)) / n
    return out


def _rounds(values: Sequence[int | None]) -> list[float]:
    """Rounds to target; a run that never reaches it counts as +inf."""
    return [math.inf if v is None else float(v) for v in values]


def _median_rounds(values: Sequence[int | None]) -> float:
    """Median of rounds to target (:func:`_rounds`)."""
    if not values:
        return math.nan
    return float(statistics.median(_rounds(values)))


#: seeds each side needs before a speed-up is printed
MIN_SPEEDUP_SEEDS = 3


def speedup_band(
    base: Sequence[int | None], this: Sequence[int | None], level: float = 0.8,
    n_boot: int = 2000,
) -> tuple[float, float]:
    """Percentile bootstrap band of the speed-up ``median(base) / median(this)`` of rounds to
    target (unreached = +inf), both selections' seeds resampled independently (seeded, so the
    band is reproducible); ``(nan, nan)`` with fewer than :data:`MIN_SPEEDUP_SEEDS` seeds on
    either side. An upper end of +inf means unbounded (``this`` reaches the target in a
    resample where ``base`` does not)."""
    if min(len(base), len(this)) < MIN_SPEEDUP_SEEDS:
        return math.nan, math.nan
    import numpy as np

    b, t = np.array(_rounds(base)), np.array(_rounds(this))
    rng = np.random.default_rng(0)
    mb = np.median(rng.choice(b, size=(n_boot, len(b))), axis=1)
    mt = np.median(rng.choice(t, size=(n_boot, len(t))), axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where(np.isinf(mt), 0.0, mb / mt)  # this never reaches: no speed-up
    ratio = np.where(np.isnan(ratio), 1.0, ratio)  # neither reaches: tie
    tail = (1.0 - level) / 2.0 * 100.0
    return (float(np.percentile(ratio, tail, method="lower")),
            float(np.percentile(ratio, 100.0 - tail, method="higher")))


def _measured(value: Any) -> dict[str, Any]:
    """The CompareRow ``measured_*`` fields of one selection's measured variance: a
    :class:`~fedstrat.measure.output.MeasuredVar`, or a bare mean (no standard error)."""
    if value is None:
        return {"measured_var": math.nan}
    if isinstance(value, int | float):
        return {"measured_var": float(value)}
    return {
        "measured_var": value.mean,
        "measured_var_se": value.se,
        "measured_ratio_uniform_over": value.ratio_uniform,
        "measured_ratio_uniform_over_se": value.ratio_uniform_se,
        "measured_ratio_pairs": value.pairs,
    }


def compare_rows(
    runs: Sequence[RunOverview], measured: Mapping[str, float | MeasuredVar] | None = None
) -> list[CompareRow]:
    """One :class:`CompareRow` per selection (``measured``: selection -> measured variance,
    :func:`fedstrat.measure.output.load_measured`)."""
    groups: dict[str, list[RunOverview]] = {}
    for r in runs:
        groups.setdefault(r.selection, []).append(r)
    rows = []
    for sel, rs in groups.items():
        finals = [r.final_score for r in rs if r.final_score is not None]
        rtt = [r.rounds_to_target for r in rs]
        rows.append(
            CompareRow(
                selection=sel,
                seeds=",".join(str(r.seed) for r in sorted(rs, key=lambda r: r.seed)),
                n_runs=len(rs),
                metric=rs[0].metric,
                final_mean=_mean(finals),
                final_std=statistics.stdev(finals) if len(finals) > 1 else 0.0,
                best_mean=_mean(r.best_score for r in rs),
                target=rs[0].target,
                rounds_to_target_median=_median_rounds(rtt),
                rounds_to_target=rtt,
                reached=sum(v is not None for v in rtt),
                mean_pred_var=_mean(r.mean_pred_var for r in rs),
                **_measured((measured or {}).get(sel)),
                **_pooled_ratio(rs),
            )
        )
    rows.sort(key=lambda r: (_ORDER.get(r.selection, 9), r.selection))
    base = next((r for r in rows if r.selection == "uniform"), None)
    out = []
    for r in rows:
        speed, band = math.nan, (math.nan, math.nan)
        if base is not None:
            b, x = base.rounds_to_target_median, r.rounds_to_target_median
            if math.isfinite(b) and math.isfinite(x) and x > 0:
                speed = b / x
                band = speedup_band(base.rounds_to_target, r.rounds_to_target)
        ratio = r.measured_ratio_uniform_over
        if r.measured_ratio_pairs is None:  # bare means: their ratio, without an error
            mv, mb = r.measured_var, base.measured_var if base is not None else math.nan
            ratio = mb / mv if mv and mv > 0 else math.nan
        out.append(
            dataclasses.replace(r, speedup_vs_uniform=speed, measured_ratio_uniform_over=ratio,
                                speedup_lo=band[0], speedup_hi=band[1])
        )
    return out


#: (CompareRow field, table heading) of the comparison table; ``{metric}``/``{target}`` filled.
COMPARE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("selection", "selection"),
    ("n_runs", "runs"),
    ("final_mean", "final {metric} (mean)"),
    ("final_std", "std"),
    ("best_mean", "best (mean)"),
    ("rounds_to_target_median", "rounds to {target} (median)"),
    ("reached", "reached"),
    ("speedup_vs_uniform", "speed-up vs uniform (median rounds; 80% bootstrap over seeds)"),
    ("mean_pred_var", "mean predicted var"),
    ("pred_ratio_fedavg", "pred. MSE FedAvg/this (mean ± s.e. over tracked rounds)"),
    ("measured_var", "measured var (mean ± MC s.e.)"),
    ("measured_ratio_uniform_over", "measured uniform/this (mean ± s.e. over rounds × seeds)"),
)


def compare_table(rows: Sequence[CompareRow]) -> tuple[list[str], list[list[str]]]:
    """(headings, formatted cells) of the comparison table."""
    metric = rows[0].metric if rows else "accuracy"
    target = fmt(rows[0].target) if rows else "-"
    heads = [h.format(metric=metric, target=target) for _, h in COMPARE_COLUMNS]
    return heads, [[_cell(r, k) for k, _ in COMPARE_COLUMNS] for r in rows]


def _cell(row: CompareRow, key: str) -> str:
    """A formatted cell; the predicted and measured ratios (and the measured variance) with
    their standard errors, or "-" and why."""
    if key == "pred_ratio_fedavg":
        mean = row.pred_ratio_fedavg if math.isfinite(row.pred_ratio_fedavg) else None
        return fmt_ratio(mean, row.pred_ratio_fedavg_se, row.pred_ratio_rounds,
                         MIN_RATIO_ROUNDS)
    if key == "speedup_vs_uniform":
        return _speedup_cell(row)
    if key == "measured_var" and math.isfinite(row.measured_var_se):
        return fmt_pm(row.measured_var, row.measured_var_se)
    if key == "measured_ratio_uniform_over":
        mean, se = row.measured_ratio_uniform_over, row.measured_ratio_uniform_over_se
        if math.isfinite(mean) and math.isfinite(se):
            n = row.measured_ratio_pairs
            return f"{fmt_pm(mean, se, 3)} ({n} pair{'s' if n != 1 else ''})"
        if math.isfinite(mean):
            return "- (no s.e. recorded)"
        if math.isfinite(row.measured_var):
            return "- (no uniform measured)" if row.measured_var > 0 else "- (measured 0)"
        return "-"
    return fmt(getattr(row, key))


def _speedup_cell(row: CompareRow) -> str:
    """``1.87 [1.4, 2.5]``; "-" and why where there is no speed-up or too few seeds."""
    if row.selection == "uniform":
        return "1 (the baseline)"
    if not math.isfinite(row.speedup_vs_uniform):
        return "- (a median not reached, or no uniform runs)"
    if not math.isfinite(row.speedup_lo):
        return f"- (fewer than {MIN_SPEEDUP_SEEDS} seeds on a side)"
    hi = "unbounded" if math.isinf(row.speedup_hi) else fmt(row.speedup_hi)
    return f"{fmt(row.speedup_vs_uniform)} [{fmt(row.speedup_lo)}, {hi}]"


def compare_markdown(rows: Sequence[CompareRow]) -> str:
    """``table.md``: the comparison table as markdown."""
    if not rows:
        return "(no runs)\n"
    return markdown_table(*compare_table(rows))


def find_runs(paths: Iterable[str | Path]) -> tuple[list[Path], list[Path]]:
    """Split ``paths`` into run directories and compare directories (whose sub-folders are
    run directories); the run list includes the compare directories' runs. Anything else
    raises :class:`~fedstrat.app.rundir.RunDirError`."""
    runs: list[Path] = []
    compares: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if not p.is_dir():
            raise RunDirError(f"not a directory: {p}")
        if is_run_dir(p):
            runs.append(p)
            continue
        subs = sorted(s for s in p.iterdir() if s.is_dir() and is_run_dir(s))
        if not subs:
            raise RunDirError(f"{p} is neither a run directory nor a compare directory")
        compares.append(p)
        runs.extend(subs)
    return runs, compares


#: run options that may differ between the runs of one comparison: its rows are selections,
#: its repeats seeds; the rest (where the run went, how long it may wait) changes no result
FREE_OPTIONS = frozenset({
    "selection", "seed", "rounds", "out", "resume", "device", "data_root", "ray_address",
    "eval_every", "target_accuracy", "node_wait_timeout", "round_timeout", "profile_timeout",
})


def setting_differences(runs: Sequence[RunData]) -> list[str]:
    """The run options outside :data:`FREE_OPTIONS` whose values differ between ``runs``
    (empty: one setting, whose seeds a comparison may pool per selection)."""
    if not runs:
        return []
    base = runs[0].config.to_dict()
    return sorted({k for r in runs[1:] for k, v in r.config.to_dict().items()
                   if k not in FREE_OPTIONS and base.get(k) != v})


def write_comparison(
    runs: Sequence[RunData],
    out_dir: Path,
    measured: Mapping[str, float | MeasuredVar] | None = None,
) -> tuple[list[CompareRow], list[Path]]:
    """Write compare.json, compare.csv, runs.csv, table.md and the plots into ``out_dir``."""
    out_dir = Path(out_dir)
    overviews = [RunOverview.of(r) for r in runs]
    rows = compare_rows(overviews, measured)
    row_dicts = [r.to_dict() for r in rows]
    run_dicts = [dataclasses.asdict(o) for o in overviews]
    write_json_atomic(out_dir / COMPARE_JSON, {"rows": row_dicts, "runs": run_dicts}, keep_inf=True)
    write_csv(out_dir / COMPARE_CSV, row_dicts)
    write_csv(out_dir / RUNS_CSV, run_dicts)
    write_text_atomic(out_dir / TABLE_MD, compare_markdown(rows))
    files = [out_dir / n for n in (COMPARE_JSON, COMPARE_CSV, RUNS_CSV, TABLE_MD)]
    groups: dict[str, list[Sequence[Any]]] = {}
    for r in runs:
        groups.setdefault(r.summary.selection, []).append(r.rows)
    metric = runs[0].metric if runs else "accuracy"
    target = runs[0].summary.target if runs else None
    files += plot_comparison(groups, metric, target, out_dir)
    return rows, files


def _number(value: Any) -> float:
    """A compare.json number: null -> NaN, "inf"/"-inf" -> infinities."""
    if value is None:
        return math.nan
    return float(value)


#: compare.json keys of older comparisons, read and dropped (the mean predicted ratio
#: against uniform Horvitz-Thompson, without its uncertainty), and keys added since that an
#: older comparison lacks (read as not available)
_RETIRED_KEYS = frozenset({"mean_pred_ratio", "mean_ratio"})
_ADDED_KEYS = frozenset({
    "pred_ratio_fedavg", "pred_ratio_fedavg_se", "pred_ratio_rounds", "measured_var_se",
    "measured_ratio_uniform_over_se", "measured_ratio_pairs", "speedup_lo", "speedup_hi",
})


def load_comparison(out_dir: Path) -> tuple[list[CompareRow], list[RunOverview]]:
    """Read ``compare.json`` of ``out_dir`` (a ``compare/`` folder) back (also one written
    before the predicted ratio against FedAvg existed: its ``pred_ratio_*`` are then not
    available)."""
    path = Path(out_dir) / COMPARE_JSON
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        row_fields = {f.name: f.type for f in dataclasses.fields(CompareRow)}
        rows = []
        for r in data["rows"]:
            r = {k: v for k, v in r.items() if k not in _RETIRED_KEYS}
            if set(r) - set(row_fields) or set(row_fields) - set(r) - _ADDED_KEYS:
                raise RunDirError(f"{path}: row keys {sorted(r)} != {sorted(row_fields)}")
            vals = {k: (_number(v) if row_fields[k] == "float" else v) for k, v in r.items()}
            rows.append(CompareRow(**vals))
        runs = [RunOverview(**{k: v for k, v in r.items() if k not in _RETIRED_KEYS})
                for r in data["runs"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        if isinstance(exc, RunDirError):
            raise
        raise RunDirError(f"{path}: not a readable comparison: {exc}") from exc
    return rows, runs
