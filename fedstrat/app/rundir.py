"""The run directory: file names, atomic writers, metrics tables, plots and checkpoints.

Layout of a run directory (every file is written to ``<name>.tmp`` and renamed, so a reader
never sees a half-written file)::

    config.toml        resolved RunConfig (flat ``num-clients = 100`` keys)
    progress.jsonl     one JSON object a line: {"event": "start"|"round"|"end"|"error", ...}
    metrics.csv/json   one row per round (round 0 = the initial model), see METRIC_COLUMNS
    sampling.jsonl     the selection strategy's per-round record
    summary.json       final/best metric, rounds to target, mean variance ratio, timings
    model.pt           final global model (torch state_dict)
    plots/accuracy.png plots/variance.png
    checkpoint/        arrays.npz + state.json (round, strategy state, server-optimizer
                       state, metrics so far); rewritten after every round
    logs/              Flower logs (simulation runner only)
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from fedstrat.app.config import RunConfig
from fedstrat.app.tomlwrite import flat_toml

CONFIG_FILE = "config.toml"
PROGRESS_FILE = "progress.jsonl"
METRICS_CSV = "metrics.csv"
METRICS_JSON = "metrics.json"
SAMPLING_FILE = "sampling.jsonl"
SUMMARY_FILE = "summary.json"
MODEL_FILE = "model.pt"
PLOTS_DIR = "plots"
CHECKPOINT_DIR = "checkpoint"
LOGS_DIR = "logs"

#: Columns of metrics.csv / keys of metrics.json rows. ``accuracy``/``loss`` are filled for
#: classification, ``auc``/``logloss`` for CTR; unused or not-evaluated cells are empty (null).
METRIC_COLUMNS = (
    "round",
    "accuracy",
    "loss",
    "auc",
    "logloss",
    "train_loss",
    "pred_var",
    "pred_var_uniform",
    "var_ratio",
    "n_selected",
    "n_failed",
    "n_rejected",
    "seconds",
    "elapsed",
)

#: Target of the primary metric (accuracy; AUC for CTR) used when ``target_accuracy`` is 0.
DEFAULT_TARGETS = {
    "mnist5k": 0.80,
    "digits": 0.85,
    "mnist": 0.95,
    "fashion-mnist": 0.80,
    "cifar10": 0.50,
    "movielens-100k": 0.70,
    "movielens-1m": 0.72,
    "criteo": 0.75,
}


def default_run_dir(cfg: RunConfig, now: datetime | None = None) -> Path:
    """``runs/<UTC timestamp>-<selection>-s<seed>`` (relative to the working directory)."""
    stamp = (now or datetime.now(timezone.utc)).strftime("%Y%m%dT%H%M%S.%fZ")
    return Path("runs") / f"{stamp}-{cfg.selection}-s{cfg.seed}"


def target_for(cfg: RunConfig) -> float:
    """The target of the primary metric: ``cfg.target_accuracy`` or the dataset default."""
    return cfg.target_accuracy if cfg.target_accuracy > 0 else DEFAULT_TARGETS[cfg.dataset]


# ---------------------------------------------------------------------------- atomic writes
def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def write_text_atomic(path: Path, text: str) -> None:
    """Atomic UTF-8 text write (see :func:`write_bytes_atomic`)."""
    write_bytes_atomic(path, text.encode("utf-8"))


def _jsonable(value: Any) -> Any:
    """NaN/inf -> None, numpy scalars -> Python, recursively."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json_atomic(path: Path, obj: Any) -> None:
    """Atomic JSON write; NaN and infinities become ``null``."""
    write_text_atomic(path, json.dumps(_jsonable(obj), indent=2, allow_nan=False) + "\n")


def append_jsonl(path: Path, obj: Any) -> None:
    """Append one JSON line (a single ``write`` of a complete line, then flush + fsync)."""
    line = json.dumps(_jsonable(obj), allow_nan=False) + "\n"
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(line)
        fh.flush()
        os.fsync(fh.fileno())


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Complete lines of a JSON-lines file (a trailing partial line is ignored)."""
    if not Path(path).is_file():
        return []
    out = []
    for line in Path(path).read_text(encoding="utf-8").splitlines(keepends=True):
        if line.endswith("\n") and line.strip():
            out.append(json.loads(line))
    return out


# ---------------------------------------------------------------------------- TOML
def write_config(run_dir: Path, cfg: RunConfig) -> None:
    """``config.toml``: the resolved RunConfig, readable by ``RunConfig.from_toml``."""
    write_text_atomic(Path(run_dir) / CONFIG_FILE, flat_toml(cfg.to_flower()))


# ---------------------------------------------------------------------------- metrics
def metrics_csv_text(rows: Sequence[Mapping[str, Any]]) -> str:
    """CSV text of ``rows`` with :data:`METRIC_COLUMNS`; None/NaN cells are empty."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(METRIC_COLUMNS)
    for row in rows:
        cells = []
        for col in METRIC_COLUMNS:
            v = row.get(col)
            if v is None or (isinstance(v, float) and not math.isfinite(v)):
                cells.append("")
            elif isinstance(v, float):
                cells.append(repr(v))
            else:
                cells.append(str(v))
        writer.writerow(cells)
    return buf.getvalue()


def write_metrics(run_dir: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """``metrics.csv`` and ``metrics.json`` (a list of row objects)."""
    run_dir = Path(run_dir)
    full = [{c: row.get(c) for c in METRIC_COLUMNS} for row in rows]
    write_text_atomic(run_dir / METRICS_CSV, metrics_csv_text(full))
    write_json_atomic(run_dir / METRICS_JSON, full)


def primary_metric(task: str) -> tuple[str, str]:
    """(score column, loss column): ("accuracy", "loss") or ("auc", "logloss") for CTR."""
    return ("auc", "logloss") if task == "ctr" else ("accuracy", "loss")


def _finite(values: Iterable[Any]) -> list[float]:
    return [float(v) for v in values if isinstance(v, int | float) and math.isfinite(v)]


def summarize(
    rows: Sequence[Mapping[str, Any]], cfg: RunConfig, task: str, wall_seconds: float
) -> dict[str, Any]:
    """Summary of a finished run (``summary.json``).

    ``rounds_to_target`` is the first round whose score reaches the target (None if never);
    ``mean_var_ratio`` is the mean over rounds of predicted uniform / predicted selection
    variance (None when the strategy reported none).
    """
    score_col, loss_col = primary_metric(task)
    evaluated = [r for r in rows if isinstance(r.get(score_col), int | float)]
    evaluated = [r for r in evaluated if math.isfinite(float(r[score_col]))]
    target = target_for(cfg)
    final = evaluated[-1] if evaluated else None
    best = max(evaluated, key=lambda r: r[score_col]) if evaluated else None
    reached = [r["round"] for r in evaluated if r["round"] > 0 and r[score_col] >= target]
    ratios = _finite(r.get("var_ratio") for r in rows if r.get("round", 0) > 0)
    return {
        "dataset": cfg.dataset,
        "selection": cfg.selection,
        "strategy": cfg.strategy,
        "seed": cfg.seed,
        "rounds": max((int(r["round"]) for r in rows), default=0),
        "metric": score_col,
        "loss_metric": loss_col,
        "final": final[score_col] if final else None,
        "final_loss": final.get(loss_col) if final else None,
        "best": best[score_col] if best else None,
        "best_round": best["round"] if best else None,
        "target": target,
        "rounds_to_target": reached[0] if reached else None,
        "mean_var_ratio": float(np.mean(ratios)) if ratios else None,
        "wall_seconds": wall_seconds,
        "finished_at": datetime.now(timezone.utc).isoformat(),
    }


# ---------------------------------------------------------------------------- plots
def write_plots(run_dir: Path, rows: Sequence[Mapping[str, Any]], task: str) -> list[Path]:
    """``plots/accuracy.png`` (score and loss per round) and ``plots/variance.png``
    (predicted variance of the selection and of uniform sampling, log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    plots = Path(run_dir) / PLOTS_DIR
    plots.mkdir(parents=True, exist_ok=True)
    score_col, loss_col = primary_metric(task)

    def series(col: str) -> tuple[list[int], list[float]]:
        pts = [(int(r["round"]), r.get(col)) for r in rows]
        pts = [(x, float(y)) for x, y in pts if isinstance(y, int | float) and math.isfinite(y)]
        return [p[0] for p in pts], [p[1] for p in pts]

    out = []
    fig, ax = plt.subplots(figsize=(6, 4))
    x, y = series(score_col)
    ax.plot(x, y, marker="o", ms=3, label=score_col)
    ax.set_xlabel("round")
    ax.set_ylabel(score_col)
    ax2 = ax.twinx()
    x, y = series(loss_col)
    ax2.plot(x, y, color="tab:red", alpha=0.6, label=loss_col)
    ax2.set_ylabel(loss_col)
    ax.set_title(f"{score_col} / {loss_col} per round")
    fig.tight_layout()
    out.append(_save_fig(fig, plots / "accuracy.png"))
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    for col, label in (("pred_var", "selection"), ("pred_var_uniform", "uniform")):
        x, y = series(col)
        if x:
            ax.plot(x, y, marker="o", ms=3, label=label)
    if ax.lines and all(v > 0 for line in ax.lines for v in line.get_ydata()):
        ax.set_yscale("log")
    ax.set_xlabel("round")
    ax.set_ylabel("predicted estimator variance")
    ax.set_title("predicted variance of the aggregate")
    if ax.lines:
        ax.legend()
    fig.tight_layout()
    out.append(_save_fig(fig, plots / "variance.png"))
    plt.close(fig)
    return out


def _save_fig(fig: Any, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    write_bytes_atomic(path, buf.getvalue())
    return path
