"""Writing and rendering a :class:`~fedstrat.measure.variance.MeasureResult`."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from fedstrat.measure.variance import MeasureResult

COLUMNS: tuple[tuple[str, str], ...] = (
    ("round", "round"),
    ("selection", "selection"),
    ("measured", "measured E||T^-T||^2"),
    ("measured_se", "s.e."),
    ("predicted", "predicted"),
    ("uniform_over_this", "uniform / this"),
    ("bias_z", "bias / MC s.e."),
    ("mean_selected", "clients"),
)


def _fmt(v: Any) -> str:
    from fedstrat.cli.report import fmt

    return fmt(v, 4)


def rich_table(result: MeasureResult, title: str = "measured estimator variance") -> Any:
    """A rich Table with one row per (round, selection)."""
    from rich.table import Table

    table = Table(title=title)
    for i, (_, head) in enumerate(COLUMNS):
        table.add_column(head, justify="left" if i < 2 else "right")
    for row in result.rows:
        cells = [_fmt(row[k]) for k, _ in COLUMNS]
        if not row.get("unbiased", True):
            cells[1] += " (biased)"
        table.add_row(*cells)
    return table


def markdown_table(result: MeasureResult) -> str:
    heads = [h for _, h in COLUMNS]
    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    for row in result.rows:
        cells = [_fmt(row[k]) for k, _ in COLUMNS]
        if not row.get("unbiased", True):
            cells[1] += " (biased)"
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


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
    fig, axes = plt.subplots(1, len(rounds), figsize=(4.2 * len(rounds), 3.8), squeeze=False)
    for ax, rnd in zip(axes[0], rounds, strict=True):
        rows = [r for r in result.rows if r["round"] == rnd]
        names = [r["selection"] for r in rows]
        meas = [r["measured"] for r in rows]
        pred = [r["predicted"] for r in rows]
        xs = range(len(rows))
        ax.bar([x - 0.2 for x in xs], meas, width=0.4, label="measured (MC)")
        ax.bar(
            [x + 0.2 for x in xs],
            [p if not math.isnan(p) else 0.0 for p in pred],
            width=0.4,
            label="predicted (formula)",
            alpha=0.7,
        )
        ax.set_xticks(list(xs))
        ax.set_xticklabels(names, rotation=40, ha="right", fontsize=8)
        ax.set_yscale("log")
        ax.set_title(f"round {rnd}")
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
