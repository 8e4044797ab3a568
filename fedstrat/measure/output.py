"""Writing and rendering a :class:`~fedstrat.measure.variance.MeasureResult`."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from fedstrat.measure.variance import MeasureResult

COLUMNS: tuple[tuple[str, str], ...] = (
    ("round", "round"),
    ("selection", "selection"),
    ("n", "seeds"),
    ("measured", "measured E‖T̂−T‖² (mean)"),
    ("measured_min", "min"),
    ("measured_max", "max"),
    ("predicted", "predicted (mean)"),
    ("ratio", "uniform / this (mean)"),
    ("ratio_min", "min"),
    ("ratio_max", "max"),
    ("bias_z", "max bias / MC s.e."),
)


def _fmt(v: Any) -> str:
    from fedstrat.cli.report import fmt

    return fmt(v, 4)


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
    heads = [h for _, h in COLUMNS]
    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    for row in summary_rows(result):
        lines.append("| " + " | ".join(_cells(row)) + " |")
    return "\n".join(lines) + "\n"


def _num(v: Any) -> float:
    return math.nan if v is None else float(v)


def aggregate(result: MeasureResult, round_: int) -> list[dict[str, Any]]:
    """Per selection at ``round_``: mean / min / max of the measured MSE over seeds, mean
    predicted variance, mean uniform/this ratio, number of seeds ``n``."""
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
        out.append(
            {
                "selection": sel,
                "unbiased": bool(rs[0].get("unbiased", True)),
                "n": len(rs),
                "measured": sum(meas) / len(meas),
                "measured_min": min(meas),
                "measured_max": max(meas),
                "predicted": sum(pred) / len(pred) if pred else math.nan,
                "ratio": sum(ratio) / len(ratio),
                "ratio_min": min(ratio),
                "ratio_max": max(ratio),
                "bias_z": max(_num(r["bias_z"]) for r in rs),
            }
        )
    return out


def write_outputs(result: MeasureResult, out_dir: str | Path) -> list[Path]:
    """variance.json, variance.csv, table.md and variance.png (log bars per round) in
    ``out_dir``; every file written atomically."""
    from fedstrat.cli.report import _plt, _save, atomic_write_text, dumps_json, write_csv

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    flat = [
        {k: v for k, v in r.items() if k != "info"} | {"info": str(r.get("info", ""))}
        for r in result.rows
    ]
    atomic_write_text(out / "variance.json", dumps_json({"meta": result.meta, "rows": result.rows}))
    write_csv(out / "variance.csv", flat)
    atomic_write_text(out / "table.md", markdown_table(result))
    plt = _plt()
    rounds = sorted({r["round"] for r in result.rows})
    fig, axes = plt.subplots(1, len(rounds), figsize=(4.6 * len(rounds), 3.9), squeeze=False)
    for ax, rnd in zip(axes[0], rounds, strict=True):
        agg = aggregate(result, rnd)
        names = [a["selection"] for a in agg]
        xs = list(range(len(agg)))
        mean = [a["measured"] for a in agg]
        err = [
            [a["measured"] - a["measured_min"] for a in agg],
            [a["measured_max"] - a["measured"] for a in agg],
        ]
        ax.bar([x - 0.2 for x in xs], mean, width=0.4, yerr=err, capsize=2, label="measured (MC)")
        ax.bar(
            [x + 0.2 for x in xs],
            [a["predicted"] if not math.isnan(a["predicted"]) else 0.0 for a in agg],
            width=0.4,
            label="predicted (formula)",
            alpha=0.7,
        )
        ax.set_xticks(xs)
        ax.set_xticklabels(names, rotation=40, ha="right", fontsize=8)
        ax.set_yscale("log")
        n_seeds = agg[0]["n"] if agg else 0
        ax.set_title(f"round {rnd} (mean, min-max over {n_seeds} seed(s))", fontsize=9)
        ax.grid(alpha=0.3, axis="y")
    axes[0][0].set_ylabel("E||T_hat - T||^2")
    axes[0][0].legend(fontsize=8)
    fig.suptitle(
        f"{result.meta.get('dataset')} {result.meta.get('partition')} "
        f"N={result.meta.get('num_clients')} m={result.meta.get('clients_per_round')}",
        fontsize=10,
    )
    _save(fig, out / "variance.png")
    plt.close(fig)
    return [out / n for n in ("variance.json", "variance.csv", "table.md", "variance.png")]
