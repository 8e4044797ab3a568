"""Every PNG fedstrat writes: one run, a comparison of runs, the measured variance.

File names follow the metric, so the same metric always gives the same file:
``<metric>.png`` (``accuracy.png``, or ``auc.png`` for CTR) and ``variance.png``.
Used by the ServerApp (``<run dir>/plots/``), ``fedstrat report`` / ``compare``
(``<compare dir>/compare/``) and ``fedstrat measure-variance``. matplotlib is imported on
first use (Agg backend); every file is written atomically.
"""

from __future__ import annotations

import io
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedstrat.app.fileio import write_bytes_atomic
from fedstrat.app.rundir import MetricsRow, band_columns

VARIANCE_PNG = "variance.png"


def metric_png(metric: str) -> str:
    """File name of the plot of ``metric`` ("accuracy" -> ``accuracy.png``)."""
    return f"{metric}.png"


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    return plt


def save_figure(fig: Any, path: Path) -> Path:
    """Write ``fig`` as a PNG to ``path`` atomically, close it and return ``path``."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    write_bytes_atomic(path, buf.getvalue())
    _pyplot().close(fig)
    return path


def _series(rows: Sequence[MetricsRow], column: str) -> tuple[list[int], list[float]]:
    pts = [(r.round, r.value(column)) for r in rows]
    return [x for x, y in pts if y is not None], [y for _, y in pts if y is not None]


def _band_series(rows: Sequence[MetricsRow], what: str) -> tuple[list[Any], ...]:
    """Rounds, values, lower and upper ends of the predicted MSE ``what`` with its band
    (:func:`~fedstrat.app.rundir.band_columns`), over the rounds that have all three."""
    pts = [(r.round, *(r.value(c) for c in band_columns(what))) for r in rows]
    pts = [p for p in pts if None not in p]
    return tuple(list(col) for col in zip(*pts, strict=True)) if pts else ([], [], [], [])


#: (band columns, legend) of the run plot's predicted MSEs with band
_RUN_BANDS = (
    ("chosen", "design used"),
    ("fedavg", "FedAvg"),
    ("uniform_difference", "uniform + difference estimator"),
)


# ---------------------------------------------------------------------------- one run
def plot_run(
    out_dir: Path, rows: Sequence[MetricsRow], metric: str, loss_metric: str, title: str = ""
) -> list[Path]:
    """``<metric>.png`` (score and loss per round) and ``variance.png``: per round, the
    predicted MSE with its 80% band (tracked evidence) of the design used, of FedAvg and of
    the difference estimator on a FedAvg round's uniform draw, and the predicted variance of
    uniform sampling with HT weights (and, for a run directory without the bands, of the
    selection); log scale when all positive."""
    plt = _pyplot()
    out_dir = Path(out_dir)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ax.plot(*_series(rows, metric), marker="o", ms=3, label=metric)
    ax.set_xlabel("round")
    ax.set_ylabel(f"test {metric}")
    ax2 = ax.twinx()
    ax2.plot(*_series(rows, loss_metric), color="tab:red", alpha=0.6, label=loss_metric)
    ax2.set_ylabel(f"test {loss_metric}")
    ax.set_title(title or f"{metric} / {loss_metric} per round")
    ax.grid(alpha=0.3)
    written = [save_figure(fig, out_dir / metric_png(metric))]

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    lows: list[float] = []
    for what, label in _RUN_BANDS:
        xs, mid, lo, hi = _band_series(rows, what)
        if xs:
            style = {"ls": ":", "marker": "x"} if what == "uniform_difference" else {}
            (line,) = ax.plot(xs, mid, ms=3, label=f"{label} (predicted, band)",
                              **({"marker": "o"} | style))
            ax.fill_between(xs, lo, hi, alpha=0.15, color=line.get_color())
            lows += lo
    old = [] if lows else [("pred_var", "selection")]
    for col, label in (*old, ("pred_var_uniform", "uniform, HT weights")):
        xs, ys = _series(rows, col)
        if xs:
            ax.plot(xs, ys, marker="o", ms=3, ls="--", label=f"{label} (predicted)")
    if ax.lines and all(v > 0 for line in ax.lines for v in line.get_ydata()) and all(
        v > 0 for v in lows
    ):
        ax.set_yscale("log")
    if not ax.lines:
        ax.text(0.5, 0.5, "no round with a prediction from tracked updates",
                ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("round")
    ax.set_ylabel("predicted MSE of the aggregate")
    ax.set_title("predicted MSE per round (band: 80%, tracked evidence)")
    if ax.lines:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    written.append(save_figure(fig, out_dir / VARIANCE_PNG))
    return written


# ---------------------------------------------------------------------------- comparison
def _band(curves: Sequence[Sequence[MetricsRow]], column: str) -> tuple[list, list, list, list]:
    """Per round: x, mean, min, max of ``column`` across runs (rounds present in any run)."""
    by_round: dict[int, list[float]] = {}
    for rows in curves:
        for x, y in zip(*_series(rows, column), strict=True):
            by_round.setdefault(x, []).append(y)
    xs = sorted(by_round)
    return (
        xs,
        [statistics.fmean(by_round[x]) for x in xs],
        [min(by_round[x]) for x in xs],
        [max(by_round[x]) for x in xs],
    )


def plot_comparison(
    groups: Mapping[str, Sequence[Sequence[MetricsRow]]],
    metric: str,
    target: float | None,
    out_dir: Path,
) -> list[Path]:
    """``<metric>.png`` and ``variance.png``: per selection (``groups``: selection -> the
    metrics rows of its runs) the mean over seeds and the min-max band, per round; in
    ``variance.png`` the predicted MSE of the design used (``pred_var`` for runs without it)
    and, dashed, of FedAvg (their mean over seeds)."""
    plt = _pyplot()
    out_dir = Path(out_dir)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for sel, curves in groups.items():
        xs, mean, lo, hi = _band(curves, metric)
        if xs:
            (line,) = ax.plot(xs, mean, label=f"{sel} (n={len(curves)})")
            ax.fill_between(xs, lo, hi, alpha=0.2, color=line.get_color())
    if target is not None:
        ax.axhline(target, color="grey", lw=0.8, ls="--", label="target")
    ax.set_xlabel("round")
    ax.set_ylabel(f"test {metric}")
    ax.set_title(f"test {metric}: mean and min-max over seeds")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    written = [save_figure(fig, out_dir / metric_png(metric))]

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    drew = False
    chosen, fedavg = band_columns("chosen")[0], band_columns("fedavg")[0]
    for sel, curves in groups.items():
        col = chosen if _band(curves, chosen)[0] else "pred_var"
        xs, mean, lo, hi = _band(curves, col)
        if xs and all(v > 0 for v in lo):
            (line,) = ax.plot(xs, mean, marker="o", ms=3,  # a marker: one round is a point
                              label=sel if col == "pred_var" else f"{sel}: design used")
            ax.fill_between(xs, lo, hi, alpha=0.2, color=line.get_color())
            drew = True
            fx, fmean, _, _ = _band(curves, fedavg)
            if fx and all(v > 0 for v in fmean):
                ax.plot(fx, fmean, ls="--", marker="x", ms=3, color=line.get_color(),
                        label=f"{sel}: FedAvg")
    if drew:
        ax.set_yscale("log")
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no round with a prediction from tracked updates",
                ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("round")
    ax.set_ylabel("predicted MSE of the aggregate")
    ax.set_title("predicted MSE (tracked): mean and min-max over seeds; FedAvg dashed")
    ax.grid(alpha=0.3)
    written.append(save_figure(fig, out_dir / VARIANCE_PNG))
    return written


# ---------------------------------------------------------------------------- measured variance
@dataclass(frozen=True)
class VarianceBar:
    """One selection at one round: measured E||T_hat - T||^2 (mean, min, max over seeds) and
    the predicted variance (None or NaN for a biased scheme); ``n`` seeds."""

    selection: str
    n: int
    measured: float
    measured_min: float
    measured_max: float
    predicted: float | None


def plot_measured_variance(
    panels: Mapping[int, Sequence[VarianceBar]], title: str, path: Path
) -> Path:
    """One panel per round (``panels``: round -> bars): measured (with min-max error bars)
    next to predicted variance per selection, log scale. For ``*-run`` bars the prediction
    is the strategy's own in-run one (tracked sketches), else the formula on the exact
    updates."""
    plt = _pyplot()
    rounds = sorted(panels)
    fig, axes = plt.subplots(1, len(rounds), figsize=(4.6 * len(rounds), 3.9), squeeze=False)
    for ax, rnd in zip(axes[0], rounds, strict=True):
        bars = panels[rnd]
        xs = list(range(len(bars)))
        err = [
            [b.measured - b.measured_min for b in bars],
            [b.measured_max - b.measured for b in bars],
        ]
        ax.bar(
            [x - 0.2 for x in xs],
            [b.measured for b in bars],
            width=0.4,
            yerr=err,
            capsize=2,
            label="measured (MC)",
        )
        pred = [
            b.predicted if b.predicted is not None and not math.isnan(b.predicted) else 0.0
            for b in bars
        ]
        ax.bar([x + 0.2 for x in xs], pred, width=0.4, alpha=0.7,
               label="predicted (formula; *-run: in-run tracker)")
        ax.set_xticks(xs)
        ax.set_xticklabels([b.selection for b in bars], rotation=40, ha="right", fontsize=8)
        ax.set_yscale("log")
        n_seeds = bars[0].n if bars else 0
        ax.set_title(f"round {rnd} (mean, min-max over {n_seeds} seed(s))", fontsize=9)
        ax.grid(alpha=0.3, axis="y")
    axes[0][0].set_ylabel("E||T_hat - T||^2")
    axes[0][0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    return save_figure(fig, Path(path))
