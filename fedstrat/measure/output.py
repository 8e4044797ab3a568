"""The measured-variance folder, written and read here: ``fedstrat measure-variance --out DIR``
and ``<compare dir>/variance``.

Files: ``variance.json`` ``{"meta": {...}, "rows": [...]}`` (one row per round, selection and
seed), ``variance.csv`` (the rows), ``table.md`` and ``variance.png`` (aggregated over seeds,
drawn by :func:`fedstrat.app.plots.plot_measured_variance`).
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedstrat.app import tables
from fedstrat.app.fileio import write_json_atomic, write_text_atomic
from fedstrat.app.plots import VarianceBar, plot_measured_variance
from fedstrat.measure.variance import MeasureResult, ratio_and_se

VARIANCE_JSON = "variance.json"
VARIANCE_CSV = "variance.csv"
TABLE_MD = "table.md"
VARIANCE_PNG = "variance.png"

COLUMNS: tuple[tuple[str, str], ...] = (
    ("round", "round"),
    ("selection", "selection"),
    ("n", "seeds"),
    ("measured", "measured E‖T̂−T‖² (mean ± MC s.e.)"),
    ("measured_min", "min"),
    ("measured_max", "max"),
    ("predicted", "predicted (mean)"),
    ("in_band", "measured in predicted 80% band"),
    ("pred_over_meas", "predicted / measured (mean ± s.e.)"),
    ("ratio", "uniform / this (mean ± s.e.)"),
    ("fedavg_ratio", "FedAvg / this (mean ± s.e.)"),
    ("fedavg_ratio_min", "min"),
    ("fedavg_ratio_max", "max"),
    ("bias_z", "max bias / MC s.e."),
)
#: the ratio columns: their standard error is in ``<key>_se``, the reason for "-" in
#: ``<key>_why``
RATIO_KEYS: tuple[str, ...] = ("pred_over_meas", "ratio", "fedavg_ratio")


def _fmt(v: Any) -> str:
    return tables.fmt(v, 4)


def summary_rows(result: MeasureResult) -> list[dict[str, Any]]:
    """:func:`aggregate` for every measured round, with the round number."""
    rows = []
    for rnd in sorted({r["round"] for r in result.rows}):
        for a in aggregate(result, rnd):
            rows.append({"round": rnd, **a})
    return rows


def _cell(row: dict[str, Any], key: str) -> str:
    if key in RATIO_KEYS:
        mean, se = row[key], row[f"{key}_se"]
        if math.isfinite(mean) and math.isfinite(se):
            return tables.fmt_pm(mean, se)
        return f"- ({row[f'{key}_why']})" if row.get(f"{key}_why") else "-"
    if key == "measured" and math.isfinite(row.get("measured_se", math.nan)):
        return tables.fmt_pm(row[key], row["measured_se"])
    return _fmt(row[key])


def _cells(row: dict[str, Any]) -> list[str]:
    cells = [_cell(row, k) for k, _ in COLUMNS]
    if not row.get("unbiased", True):
        cells[1] += " (biased)"
    return cells


def rich_table(result: MeasureResult, title: str = "measured estimator variance") -> Any:
    """A rich Table, one row per (round, selection), aggregated over seeds."""
    from rich.table import Table

    table = Table(title=title)
    for i, (_, head) in enumerate(COLUMNS):
        table.add_column(head, justify="left" if i < 2 else "right")
    for row in summary_rows(result):
        table.add_row(*_cells(row))
    return table


def markdown_table(result: MeasureResult) -> str:
    """The same table as markdown."""
    return tables.markdown_table(
        [h for _, h in COLUMNS], [_cells(row) for row in summary_rows(result)]
    )


def _num(v: Any) -> float:
    try:
        return math.nan if v is None or isinstance(v, bool) else float(v)
    except (TypeError, ValueError):
        return math.nan


def mean_se(values: Sequence[float], ses: Sequence[float]) -> tuple[float, float]:
    """Mean of ``values`` (one per round or seed) and its standard error: the Monte Carlo
    errors ``ses`` combined, ``sqrt(sum se^2) / n``, or, with 2 or more values, the spread
    ``sd / sqrt(n)`` when larger. NaN without values or when an error is not finite."""
    n = len(values)
    if n == 0 or not all(math.isfinite(x) for x in (*values, *ses)):
        return math.nan, math.nan
    mean = statistics.fmean(values)
    se = math.sqrt(sum(x * x for x in ses)) / n
    if n > 1:
        se = max(se, statistics.stdev(values) / math.sqrt(n))
    return mean, se


def _why(rs: list[dict[str, Any]], vals: list[float], ses: list[float], no_base: str) -> str:
    """Why a ratio of ``rs`` is not printed."""
    if any(not math.isfinite(v) for v in vals):
        if any(not _num(r.get("measured")) > 0 for r in rs):
            return "measured 0"
        return no_base
    return "no s.e. recorded"


def _band_hits(rs: list[dict[str, Any]]) -> str:
    """``"k/n"``: seeds whose measured MSE lies in the in-run prediction's 80% band ("-"
    when no row has a band: only ``stratified-run`` and ``fedavg-run`` rows do)."""
    bands = [(r, (r.get("info") or {}).get("band")) for r in rs]
    bands = [(r, b) for r, b in bands if isinstance(b, list | tuple) and len(b) == 3]
    if not bands:
        return "-"
    hits = sum(_num(b[1]) <= _num(r["measured"]) <= _num(b[2]) for r, b in bands)
    return f"{hits}/{len(bands)}"


def _paired(rows: Sequence[dict[str, Any]], base: str) -> dict[int, tuple[float, float]]:
    """``{id(row): (measured of base / measured of row, its s.e.)}`` pairing every row
    with ``base``'s row of the same round and seed (ratio 1 ± 0 for ``base`` itself)."""
    found = {(r["round"], r.get("seed"), r["selection"]): r for r in rows}
    out = {}
    for r in rows:
        b = found.get((r["round"], r.get("seed"), base))
        if b is r:
            out[id(r)] = (1.0, 0.0) if _num(r["measured"]) > 0 else (math.nan, math.nan)
        elif b is not None:
            out[id(r)] = ratio_and_se(_num(b["measured"]), _num(b.get("measured_se")),
                                      _num(r["measured"]), _num(r.get("measured_se")))
    return out


def aggregate(result: MeasureResult, round_: int) -> list[dict[str, Any]]:
    """Per selection at ``round_``, over its seeds (``n``): mean / min / max of the measured
    MSE and the mean's Monte Carlo s.e. (``measured_se``), mean predicted variance,
    ``in_band`` (seeds whose measured MSE lies in the in-run 80% band), and the ratios
    predicted / measured, uniform / this and FedAvg / this, each as the mean over seeds of
    the per-seed ratio with its standard error (``<key>_se``, :func:`mean_se` of the per-seed
    delta-method errors, :func:`ratio_and_se`) or NaN with the reason in ``<key>_why``
    (measured 0, no uniform / FedAvg row, no prediction, or a file without ``measured_se``).
    FedAvg / this also has its ``min`` / ``max`` over seeds."""
    here = [r for r in result.rows if r["round"] == round_]
    uni = _paired(here, "uniform")
    order: list[str] = []
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in here:
        if r["selection"] not in groups:
            order.append(r["selection"])
        groups.setdefault(r["selection"], []).append(r)
    out = []
    for sel in order:
        rs = groups[sel]
        meas = [_num(r["measured"]) for r in rs]
        meas_se = [_num(r.get("measured_se")) for r in rs]
        pred = [_num(r["predicted"]) for r in rs if not math.isnan(_num(r["predicted"]))]
        po = [ratio_and_se(_num(r["predicted"]), 0.0, _num(r["measured"]),
                           _num(r.get("measured_se"))) for r in rs]
        un = [uni.get(id(r), (math.nan, math.nan)) for r in rs]
        fed = [(_num(r.get("fedavg_over_this")), _num(r.get("fedavg_over_this_se")))
               for r in rs]
        agg: dict[str, Any] = {
            "selection": sel,
            "unbiased": bool(rs[0].get("unbiased", True)),
            "n": len(rs),
            "measured": sum(meas) / len(meas),
            "measured_se": math.sqrt(sum(x * x for x in meas_se)) / len(meas_se),
            "measured_min": min(meas),
            "measured_max": max(meas),
            "predicted": sum(pred) / len(pred) if pred else math.nan,
            "in_band": _band_hits(rs),
            "fedavg_ratio_min": min(v for v, _ in fed),
            "fedavg_ratio_max": max(v for v, _ in fed),
            "bias_z": max((_num(r["bias_z"]) for r in rs), default=math.nan),
        }
        for key, pairs, no_base in (
            ("pred_over_meas", po, "no prediction"),
            ("ratio", un, "no uniform row"),
            ("fedavg_ratio", fed, "no FedAvg row"),
        ):
            vals, ses = [v for v, _ in pairs], [e for _, e in pairs]
            agg[key], agg[f"{key}_se"] = mean_se(vals, ses)
            agg[f"{key}_why"] = "" if math.isfinite(agg[f"{key}_se"]) else _why(
                rs, vals, ses, no_base)
        out.append(agg)
    return out


def ratio_line(result: MeasureResult, over: str | None = None) -> str:
    """The line ``measure-variance`` prints under its table: measured MSE of uniform and of
    FedAvg over that of ``over`` (default: ``stratified`` if measured, else the first
    selection other than uniform and FedAvg), each the mean over the measured rounds and
    seeds of the per-(round, seed) ratio with its standard error (:func:`mean_se`), or "-"
    and why."""
    names = list(dict.fromkeys(r["selection"] for r in result.rows))
    if over is None:
        rest = [s for s in names if s not in ("uniform", "fedavg", "fedavg-run")]
        over = "stratified" if "stratified" in names else (rest or ["stratified"])[0]
    parts = []
    for base, name in (("uniform", "uniform"), ("fedavg", "FedAvg")):
        rows = [r for r in result.rows if r["selection"] in (base, over)]
        pairs = _paired(rows, base)
        mine = [pairs.get(id(r), (math.nan, math.nan)) for r in rows if r["selection"] == over]
        vals, ses = [v for v, _ in mine], [e for _, e in mine]
        mean, se = mean_se(vals, ses)
        if math.isfinite(se):
            cell = tables.fmt_pm(mean, se, 3)
        elif not vals or not any(r["selection"] == base for r in rows):
            cell = f"- (no {base if vals else over} row)"
        else:
            cell = f"- ({_why([r for r in rows if r['selection'] == over], vals, ses, '')})"
        parts.append(f"{name}/{over} {cell}")
    n_r = len({r["round"] for r in result.rows})
    n_s = len({r.get("seed") for r in result.rows})
    return (f"measured MSE {', '.join(parts)} (mean ± s.e. over {n_r} round"
            f"{'s' if n_r != 1 else ''} x {n_s} seed{'s' if n_s != 1 else ''})")


def write_outputs(result: MeasureResult, out_dir: str | Path) -> list[Path]:
    """variance.json, variance.csv, table.md and variance.png (log bars per round) in
    ``out_dir``; every file written atomically."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    flat = [
        {k: v for k, v in r.items() if k != "info"} | {"info": str(r.get("info", ""))}
        for r in result.rows
    ]
    write_json_atomic(
        out / VARIANCE_JSON, {"meta": result.meta, "rows": result.rows}, keep_inf=True
    )
    tables.write_csv(out / VARIANCE_CSV, flat)
    write_text_atomic(out / TABLE_MD, markdown_table(result))
    panels = {
        rnd: [
            VarianceBar(
                a["selection"],
                a["n"],
                a["measured"],
                a["measured_min"],
                a["measured_max"],
                a["predicted"],
            )
            for a in aggregate(result, rnd)
        ]
        for rnd in sorted({r["round"] for r in result.rows})
    }
    meta = result.meta
    title = (
        f"{meta.get('dataset')} {meta.get('partition')} "
        f"N={meta.get('num_clients')} m={meta.get('clients_per_round')}"
    )
    plot_measured_variance(panels, title, out / VARIANCE_PNG)
    return [out / n for n in (VARIANCE_JSON, VARIANCE_CSV, TABLE_MD, VARIANCE_PNG)]


@dataclass(frozen=True)
class MeasuredVar:
    """A selection's measured MSE in a ``variance.json``: ``mean`` over its rounds and seeds
    with its Monte Carlo standard error ``se``; ``ratio_uniform`` = uniform's measured MSE
    over this one, the mean over the (round, seed) pairs measured with both (``pairs``) of the
    per-pair ratio, with ``ratio_uniform_se`` (:func:`mean_se` of the delta-method errors).
    NaN where not available: no uniform row, measured 0, or a file without ``measured_se``
    (then ``se`` and ``ratio_uniform_se`` are NaN and ``ratio_uniform`` is still the mean)."""

    mean: float
    se: float = math.nan
    ratio_uniform: float = math.nan
    ratio_uniform_se: float = math.nan
    pairs: int = 0


def load_measured(path: str | Path) -> dict[str, MeasuredVar]:
    """``{selection: MeasuredVar}`` from a ``variance.json`` (means over its measured rounds
    and seeds); ``{}`` for a missing or unreadable file. A file written before the standard
    errors existed reads with them NaN."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    rows = [
        r for r in (data.get("rows", []) if isinstance(data, dict) else [])
        if isinstance(r, dict) and not math.isnan(_num(r.get("measured")))
        and "round" in r and "selection" in r
    ]
    pairs = _paired(rows, "uniform")
    out: dict[str, MeasuredVar] = {}
    for sel in dict.fromkeys(str(r["selection"]) for r in rows):
        rs = [r for r in rows if str(r["selection"]) == sel]
        meas = [_num(r["measured"]) for r in rs]
        ses = [_num(r.get("measured_se")) for r in rs]
        got = [pairs[id(r)] for r in rs if id(r) in pairs]
        vals = [v for v, _ in got]
        ratio, ratio_se = mean_se(vals, [e for _, e in got])
        if math.isnan(ratio) and vals and all(math.isfinite(v) for v in vals):
            ratio = statistics.fmean(vals)  # no standard errors in the file
        out[sel] = MeasuredVar(
            mean=statistics.fmean(meas),
            se=math.sqrt(sum(x * x for x in ses)) / len(ses),
            ratio_uniform=ratio,
            ratio_uniform_se=ratio_se,
            pairs=len(got),
        )
    return out
