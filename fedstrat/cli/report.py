"""``fedstrat report`` and the terminal tables of ``report`` / ``compare`` / ``simulate``.

Rendering only: runs are read by :func:`fedstrat.app.rundir.load_run` (a run's numbers come
from its ``summary.json``, :class:`~fedstrat.app.rundir.RunSummary`), comparisons computed and
written by :mod:`fedstrat.app.comparedir`, plots drawn by :mod:`fedstrat.app.plots`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from fedstrat.app import comparedir
from fedstrat.app.comparedir import CompareRow, compare_table
from fedstrat.app.plots import plot_run
from fedstrat.app.rundir import (
    CONFIG_FILE,
    MIN_RATIO_ROUNDS,
    PLOTS_DIR,
    PROGRESS_FILE,
    SUMMARY_FILE,
    MetricsRow,
    RunData,
    RunDirError,
    RunSummary,
    band_columns,
    load_run,
)
from fedstrat.app.tables import fmt, fmt_band, fmt_ratio
from fedstrat.measure.output import VARIANCE_JSON, load_measured


def report_dirs(
    paths: Iterable[str | Path],
    console: Any,
    *,
    out: Path | None,
    default_out: Path,
    target: float = 0.0,
    plots: bool = True,
) -> None:
    """``fedstrat report``: print the runs in ``paths`` (run and compare directories), redraw
    each run's ``plots/`` (``plots``), and with several runs of one setting
    (:func:`~fedstrat.app.comparedir.setting_differences`) or a compare directory write a
    comparison to ``out`` (default: the compare directory's ``compare/``, else
    ``default_out``). ``target`` > 0 replaces the runs' target. Raises
    :class:`~fedstrat.app.rundir.RunDirError` for anything that is not a readable run."""
    run_paths, compares = comparedir.find_runs(paths)
    for p in run_paths:
        check_recognised(p)
    runs = [load_run(p, target or None) for p in run_paths]
    console.print(rich_run_table(runs, title="fedstrat report"))
    if plots:
        for r in runs:
            s = r.summary
            title = f"{s.selection} seed {s.seed}"
            plot_run(r.path / PLOTS_DIR, r.rows, s.metric, s.loss_metric, title=title)
    differ = comparedir.setting_differences(runs)
    if differ:  # a row pools the seeds of one selection: only within one setting
        console.print(f"no comparison written: these runs differ in {', '.join(differ)} "
                      "(report each setting's runs together)")
        return
    if len(runs) > 1 or compares:
        measured: dict[str, float] = {}
        for c in compares:
            measured.update(load_measured(c / comparedir.VARIANCE_DIR / VARIANCE_JSON))
        if out is None:
            out = compares[0] / comparedir.COMPARE_DIR if len(compares) == 1 else default_out
        rows, files = comparedir.write_comparison(runs, out, measured)
        console.print(rich_compare_table(rows, title="comparison"))
        console.print(f"wrote {len(files)} files to {out}")


def check_recognised(path: Path) -> None:
    """Raise :class:`~fedstrat.app.rundir.RunDirError` unless ``path`` is a run directory as
    fedstrat writes it: a metrics table, ``config.toml``, and ``summary.json`` or
    ``progress.jsonl``. (Any folder holding a ``metrics.csv`` is not enough: ``report`` writes
    plots into the run directories it is given.)"""
    d = Path(path)
    missing = [n for n in (CONFIG_FILE,) if not (d / n).is_file()]
    if not any((d / n).is_file() for n in (SUMMARY_FILE, PROGRESS_FILE)):
        missing.append(f"{SUMMARY_FILE} or {PROGRESS_FILE}")
    if missing:
        raise RunDirError(
            f"{d} is not a fedstrat run directory (missing {', '.join(missing)}); report reads "
            "run directories written by `fedstrat simulate`/`deploy` and compare directories"
        )


def rich_compare_table(rows: Sequence[CompareRow], title: str = "comparison") -> Any:
    """The comparison table (same cells as ``table.md``)."""
    from rich.table import Table

    heads, cells = compare_table(rows)
    table = Table(title=title)
    for i, head in enumerate(heads):
        table.add_column(head, justify="left" if i == 0 else "right")
    for row in cells:
        table.add_row(*row)
    return table


def _reached(run: RunData) -> str:
    s = run.summary
    if s.rounds_to_target is not None:
        return str(s.rounds_to_target)
    return f"not reached ({fmt(s.target)})"


#: heading of the summary's predicted ratio (:func:`ratio_text`)
RATIO_HEAD = "pred. MSE FedAvg/this (mean ± s.e. over tracked rounds)"


def ratio_text(s: RunSummary) -> str:
    """The summary's predicted MSE of FedAvg over that of the design used, with its standard
    error over the tracked rounds, or "-" and why (too few tracked rounds, not recorded)."""
    return fmt_ratio(s.pred_ratio_fedavg, s.pred_ratio_fedavg_se, s.pred_ratio_rounds,
                     MIN_RATIO_ROUNDS)


def rich_run_table(runs: Sequence[RunData], title: str = "runs") -> Any:
    """One line per run: final and best score, rounds to target, predicted MSE ratio
    FedAvg / design used (:func:`ratio_text`), wall seconds; an unfinished run is marked."""
    from rich.table import Table

    table = Table(title=title)
    heads = (
        "run dir",
        "selection",
        "seed",
        "final",
        "best",
        "rounds to target",
        RATIO_HEAD,
        "seconds",
    )
    for h in heads:
        table.add_column(h, justify="left" if h == "run dir" else "right")
    for r in runs:
        s = r.summary
        table.add_row(
            str(r.path) + ("" if r.finished else " (unfinished)"),
            s.selection,
            str(s.seed),
            f"{fmt(s.final)} {s.metric}",
            fmt(s.best),
            _reached(r),
            ratio_text(s),
            fmt(s.wall_seconds, 3),
        )
    return table


def rich_summary_table(run: RunData, title: str = "fedstrat simulate") -> Any:
    """The summary of one run, one quantity a line."""
    from rich.table import Table

    s = run.summary
    table = Table(title=title, show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_row(f"final {s.metric}", fmt(s.final))
    table.add_row(f"best {s.metric}", fmt(s.best))
    reached = s.rounds_to_target
    table.add_row(
        f"rounds to {fmt(s.target)}",
        str(reached) if reached is not None else f"not reached in {s.rounds}",
    )
    table.add_row(RATIO_HEAD, ratio_text(s))
    table.add_row("mean predicted variance", fmt(run.mean_pred_var))
    table.add_row("seconds", fmt(s.wall_seconds, 3))
    table.add_row("run dir", str(run.path))
    return table


def progress_text(row: MetricsRow, metric: str, loss_metric: str) -> str:
    """One line for a progress bar: score, loss and, from tracked evidence, the predicted MSE
    of the design used and of FedAvg with their bands (one value in a FedAvg round)."""
    parts = [
        f"{'acc' if metric == 'accuracy' else metric} {fmt(row.value(metric))}",
        f"{loss_metric} {fmt(row.value(loss_metric))}",
    ]
    chosen, fedavg = ([row.value(c) for c in band_columns(w)] for w in ("chosen", "fedavg"))
    if chosen[0] is not None and chosen == fedavg:
        parts.append(f"pred MSE FedAvg {fmt_band(*fedavg)}")
    elif chosen[0] is not None:
        parts.append(f"pred MSE {fmt_band(*chosen)}")
        if fedavg[0] is not None:
            parts.append(f"FedAvg {fmt_band(*fedavg)}")
    return "  ".join(parts)
