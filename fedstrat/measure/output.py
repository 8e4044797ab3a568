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
from pathlib import Path
from typing import Any

from fedstrat.app import tables
from fedstrat.app.fileio import write_json_atomic, write_text_atomic
from fedstrat.app.plots import VarianceBar, plot_measured_variance
from fedstrat.measure.variance import MeasureResult

VARIANCE_JSON = "variance.json"
VARIANCE_CSV = "variance.csv"
TABLE_MD = "table.md"
VARIANCE_PNG = "variance.png"

COLUMNS: tuple[tuple[str, str], ...] = (
    ("round", "round"),
    ("selection", "selection"),
    ("n", "seeds"),
    ("measured", "measured E‖T̂−T‖² (mean)"),
    ("measured_min", "min"),
    ("measured_max", "max"),
    ("predicted", "predicted (mean)"),
    ("pred_over_meas", "predicted / measured"),
    ("ratio", "uniform / this (mean)"),
    ("fedavg_ratio", "FedAvg / this (mean)"),
    ("fedavg_ratio_se", "± s.e."),
    ("fedavg_ratio_min", "min"),
    ("fedavg_ratio_max", "max"),
    ("bias_z", "max bias / MC s.e."),
)


def _fmt(v: Any) -> str:
    return tables.fmt(v, 4)


def summary_rows(result: MeasureResult) -> list[dict[str, Any]]:
    """:func:`aggregate` for every measured round, with the round number."""
    rows = []
    for rnd in sorted({r["round"] for r in result.rows}):
        for a in aggregate(result, rnd):
            rows.append({"round": rnd, **a})
    return rows


def _cells(row: dict[str, Any]) -> list[str]:
    cells = [_fmt(row[k]) for k, _ in COLUMNS]
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
    return math.nan if v is None else float(v)


def aggregate(result: MeasureResult, round_: int) -> list[dict[str, Any]]:
    """Per selection at ``round_``: mean / min / max of the measured MSE over seeds, mean
    predicted variance and predicted / measured, mean uniform/this ratio, FedAvg/this ratio
    (mean, standard error, min, max over seeds), number of seeds ``n``. The ratio's standard
    error combines each seed's Monte Carlo error, ``sqrt(sum se_s^2) / n``, and, with 2 or
    more seeds, the spread over seeds (the larger of the two)."""
    order: list[str] = []
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in result.rows:
        if r["round"] != round_:
            continue
        if r["selection"] not in groups:
            order.append(r["selection"])
        groups.setdefault(r["selection"], []).append(r)
    out = []
    for sel in order:
        rs = groups[sel]
        meas = [_num(r["measured"]) for r in rs]
        pred = [_num(r["predicted"]) for r in rs if not math.isnan(_num(r["predicted"]))]
        ratio = [_num(r["uniform_over_this"]) for r in rs]
        fed = [_num(r.get("fedavg_over_this")) for r in rs]
        fed_se = [_num(r.get("fedavg_over_this_se")) for r in rs]
        mean_pred = sum(pred) / len(pred) if pred else math.nan
        mean_meas = sum(meas) / len(meas)
        se = math.sqrt(sum(x * x for x in fed_se)) / len(fed_se)
        if len(fed) > 1 and all(math.isfinite(x) for x in fed):
            se = max(se, statistics.stdev(fed) / math.sqrt(len(fed)))
        out.append(
            {
                "selection": sel,
                "unbiased": bool(rs[0].get("unbiased", True)),
                "n": len(rs),
                "measured": sum(meas) / len(meas),
                "measured_min": min(meas),
                "measured_max": max(meas),
                "predicted": mean_pred,
                "pred_over_meas": mean_pred / mean_meas if mean_meas > 0 else math.nan,
                "ratio": sum(ratio) / len(ratio),
                "fedavg_ratio": sum(fed) / len(fed),
                "fedavg_ratio_se": se,
                "fedavg_ratio_min": min(fed),
                "fedavg_ratio_max": max(fed),
                "ratio_min": min(ratio),
                "ratio_max": max(ratio),
                "bias_z": max((_num(r["bias_z"]) for r in rs), default=math.nan),
            }
        )
    return out


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


def load_measured(path: str | Path) -> dict[str, float]:
    """``{selection: measured E||T_hat - T||^2}`` from a ``variance.json`` (the mean over its
    measured rounds and seeds); ``{}`` for a missing or unreadable file."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    acc: dict[str, list[float]] = {}
    for row in data.get("rows", []) if isinstance(data, dict) else []:
        v = _num(row.get("measured"))
        if not math.isnan(v):
            acc.setdefault(str(row.get("selection")), []).append(v)
    return {k: statistics.fmean(v) for k, v in acc.items()}
