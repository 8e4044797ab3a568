"""The run directory: the one module that writes it and reads it back.

Layout (every file is written to a temporary file and renamed, so a reader never sees a
half-written file)::

    config.toml        resolved RunConfig (flat ``num-clients = 100`` keys)
    progress.jsonl     one JSON object a line: {"event": "start"|"round"|"end"|"error", ...};
                       a "round" event carries every column of its :class:`MetricsRow`
    metrics.csv/json   one :class:`MetricsRow` per round (round 0 = the initial model)
    sampling.jsonl     the selection strategy's per-round record
    summary.json       :class:`RunSummary`: final/best metric, rounds to target, timings
    model.pt           final global model (torch state_dict)
    plots/<metric>.png plots/variance.png   (``fedstrat.app.plots``; metric accuracy or auc)
    checkpoint/        arrays + state.json (``fedstrat.app.checkpoint``)
    logs/              Flower logs

Writers: :func:`write_config`, :func:`write_metrics`, :func:`write_summary`; the ServerApp
builds rows and the summary with :class:`MetricsRow` and :func:`summarize`. Reader:
:func:`load_run` returns a typed :class:`RunData`; a directory that is not a run directory, a
metrics row with an unknown or missing column, or a summary with an unknown or missing key
raises :class:`RunDirError` naming the file and the key.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from fedstrat.app.config import ConfigError, RunConfig

# The run directory's writers; importable from here for the modules that write run files.
from fedstrat.app.fileio import (  # noqa: F401
    append_jsonl,
    read_jsonl,
    write_bytes_atomic,
    write_json_atomic,
    write_text_atomic,
)
from fedstrat.app.stats import series_mean_se
from fedstrat.app.tomlwrite import flat_toml
from fedstrat.data.info import dataset_info

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
#: written by the runner when it stops a run before its end (SIGTERM, Ctrl-C, an error): the
#: ServerApp then records no further round (a round cut short by the shutdown is not one)
STOP_FILE = "stopping"


class RunDirError(ValueError):
    """A directory is not a readable run directory, or one of its files breaks the format."""


# ---------------------------------------------------------------------------- typed records
@dataclass(frozen=True)
class MetricsRow:
    """One round of ``metrics.csv`` / ``metrics.json``; the field names are the columns.

    ``accuracy``/``loss`` are filled for classification, ``auc``/``logloss`` for CTR; a cell
    that was not measured (round 0's selection columns, rounds without evaluation) is None.
    ``var_ratio`` = ``pred_var_uniform / pred_var`` (predicted variance of uniform sampling
    with Horvitz-Thompson weights over that of the selection); ``pred_var_<what>`` with
    ``_lo`` / ``_hi`` (:func:`band_columns`): the stratified policy's predicted MSE, from
    tracked evidence, of the design used this round (``chosen``), of FedAvg (``fedavg``) and,
    in an ``estimator="difference"`` FedAvg round, of the difference estimator on the uniform
    draw (``uniform_difference``), each with its 80% band (empty without tracked evidence);
    ``seconds`` = the round's wall time, ``elapsed`` = since the first round (across resumes).
    """

    round: int
    accuracy: float | None = None
    loss: float | None = None
    auc: float | None = None
    logloss: float | None = None
    train_loss: float | None = None
    pred_var: float | None = None
    pred_var_uniform: float | None = None
    var_ratio: float | None = None
    pred_var_chosen: float | None = None
    pred_var_chosen_lo: float | None = None
    pred_var_chosen_hi: float | None = None
    pred_var_fedavg: float | None = None
    pred_var_fedavg_lo: float | None = None
    pred_var_fedavg_hi: float | None = None
    pred_var_uniform_difference: float | None = None
    pred_var_uniform_difference_lo: float | None = None
    pred_var_uniform_difference_hi: float | None = None
    n_selected: int | None = None
    n_failed: int | None = None
    n_rejected: int | None = None
    seconds: float | None = None
    elapsed: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """``{column: value}`` in :data:`METRIC_COLUMNS` order."""
        return {col: getattr(self, col) for col in METRIC_COLUMNS}

    def value(self, column: str) -> float | None:
        """The finite number in ``column``, else None."""
        v = getattr(self, column)
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            return None
        return float(v)

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], *, where: str = "row", partial: bool = False
    ) -> MetricsRow:
        """A row from ``{column: value}``. An unknown column, or (unless ``partial``) a missing
        one, raises :class:`RunDirError` naming ``where``."""
        check_columns(data, where=where, partial=partial)
        if not isinstance(data.get("round"), int) or isinstance(data.get("round"), bool):
            raise RunDirError(f"{where}: 'round' must be an integer, got {data.get('round')!r}")
        return cls(**{k: data[k] for k in METRIC_COLUMNS if k in data})


#: Columns of metrics.csv / keys of metrics.json rows, in file order.
METRIC_COLUMNS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(MetricsRow))

#: The predicted MSEs that metrics.csv holds with their band (:func:`band_columns`).
BAND_COLUMNS = ("chosen", "fedavg", "uniform_difference")


def band_columns(what: str) -> tuple[str, str, str]:
    """(value, lower, upper) columns of the predicted MSE ``what`` (:data:`BAND_COLUMNS`)."""
    return f"pred_var_{what}", f"pred_var_{what}_lo", f"pred_var_{what}_hi"


#: Columns added after the first run directories were written: a file without them is read
#: with them empty (the older files stay readable).
ADDED_COLUMNS = frozenset(c for what in BAND_COLUMNS for c in band_columns(what))


def check_columns(names: Iterable[str], *, where: str, partial: bool = False) -> None:
    """:class:`RunDirError` naming ``where`` if ``names`` has a column not in
    :data:`METRIC_COLUMNS` or (unless ``partial``) lacks one (other than
    :data:`ADDED_COLUMNS`)."""
    names = list(names)
    unknown = [k for k in names if k not in METRIC_COLUMNS]
    if unknown:
        raise RunDirError(
            f"{where}: unknown column {unknown[0]!r} (columns: {', '.join(METRIC_COLUMNS)})"
        )
    missing = [c for c in METRIC_COLUMNS if c not in names and c not in ADDED_COLUMNS]
    if missing and not partial:
        raise RunDirError(f"{where}: missing column {missing[0]!r}")


_INT_COLUMNS = frozenset({"round", "n_selected", "n_failed", "n_rejected"})


@dataclass(frozen=True)
class RunSummary:
    """``summary.json``; the field names are its keys, in file order.

    ``metric``/``loss_metric`` are ("accuracy", "loss") or ("auc", "logloss") for CTR;
    ``final``/``final_loss`` come from the last evaluated round, ``best`` from the best one;
    ``rounds_to_target`` is the first round r >= 1 whose score reaches ``target`` (None if
    never). ``pred_ratio_fedavg`` is the predicted MSE of FedAvg over that of the design used,
    ``pred_var_fedavg / pred_var_chosen``, averaged over the rounds r >= 1 that have both
    (tracked evidence only; their number is ``pred_ratio_rounds``), with
    ``pred_ratio_fedavg_se`` the standard error of that mean over the rounds; both None with
    fewer than :data:`MIN_RATIO_ROUNDS` such rounds (``pred_ratio_rounds`` None: a summary
    written before these keys existed). ``runner`` holds the simulation runner's timings
    (absent when not simulated).
    """

    dataset: str
    selection: str
    strategy: str
    seed: int
    rounds: int
    metric: str
    loss_metric: str
    final: float | None
    final_loss: float | None
    best: float | None
    best_round: int | None
    target: float
    rounds_to_target: int | None
    wall_seconds: float
    finished_at: str
    model: str | None = None
    resumed_from: int | None = None
    unstable_nodes: int | None = None
    nodes: int | None = None
    pred_ratio_fedavg: float | None = None
    pred_ratio_fedavg_se: float | None = None
    pred_ratio_rounds: int | None = None
    runner: dict[str, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        """``{key: value}`` in file order (``runner`` only when set)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        if self.runner is None:
            del out["runner"]
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, where: str = SUMMARY_FILE) -> RunSummary:
        """The summary in ``data``; an unknown or missing key raises :class:`RunDirError`
        (keys of older summaries, :data:`RETIRED_SUMMARY_KEYS`, are dropped; keys added
        since, :data:`ADDED_SUMMARY_KEYS`, may be missing)."""
        keys = [f.name for f in dataclasses.fields(cls)]
        data = {k: v for k, v in data.items() if k not in RETIRED_SUMMARY_KEYS}
        unknown = [k for k in data if k not in keys]
        if unknown:
            raise RunDirError(f"{where}: unknown key {unknown[0]!r} (keys: {', '.join(keys)})")
        missing = [k for k in keys if k not in ADDED_SUMMARY_KEYS and k not in data]
        if missing:
            raise RunDirError(f"{where}: missing key {missing[0]!r}")
        return cls(**data)


#: summary.json keys that a run directory may lack (``runner``: not simulated; the others
#: were added after the first run directories were written).
ADDED_SUMMARY_KEYS = frozenset(
    {"runner", "pred_ratio_fedavg", "pred_ratio_fedavg_se", "pred_ratio_rounds"}
)
#: summary.json keys of older run directories, read and dropped: ``mean_var_ratio`` (the mean
#: predicted ratio against uniform Horvitz-Thompson, without its uncertainty).
RETIRED_SUMMARY_KEYS = frozenset({"mean_var_ratio"})
#: fewest rounds with a tracked predicted ratio for the summary to give one
MIN_RATIO_ROUNDS = 3


def primary_metric(task: str) -> tuple[str, str]:
    """(score column, loss column): ("accuracy", "loss"), or ("auc", "logloss") for CTR."""
    return ("auc", "logloss") if task == "ctr" else ("accuracy", "loss")


def target_for(cfg: RunConfig) -> float:
    """The target of the primary metric: ``cfg.target_accuracy``, or the dataset's default
    (:func:`fedstrat.data.info.dataset_info`) when it is 0."""
    if cfg.target_accuracy > 0:
        return cfg.target_accuracy
    return dataset_info(cfg.dataset).default_target


def default_run_dir(cfg: RunConfig, now: datetime | None = None) -> Path:
    """``runs/<UTC timestamp>-<selection>-s<seed>`` (relative to the working directory)."""
    stamp = (now or datetime.now(timezone.utc)).strftime("%Y%m%dT%H%M%S.%fZ")
    return Path("runs") / f"{stamp}-{cfg.selection}-s{cfg.seed}"


# ---------------------------------------------------------------------------- writers
def write_config(run_dir: Path, cfg: RunConfig) -> None:
    """``config.toml``: the resolved RunConfig, readable by ``RunConfig.from_toml``."""
    write_text_atomic(Path(run_dir) / CONFIG_FILE, flat_toml(cfg.to_flower()))


def metrics_csv_text(rows: Sequence[MetricsRow]) -> str:
    """CSV text of ``rows`` with :data:`METRIC_COLUMNS`; None/NaN cells are empty, floats
    written with ``repr`` (exact round trip)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(METRIC_COLUMNS)
    for row in rows:
        cells = []
        for v in row.to_dict().values():
            if v is None or (isinstance(v, float) and not math.isfinite(v)):
                cells.append("")
            elif isinstance(v, float):
                cells.append(repr(v))
            else:
                cells.append(str(v))
        writer.writerow(cells)
    return buf.getvalue()


def write_metrics(run_dir: Path, rows: Sequence[MetricsRow]) -> None:
    """``metrics.csv`` and ``metrics.json`` (a list of row objects, every column in each)."""
    run_dir = Path(run_dir)
    write_text_atomic(run_dir / METRICS_CSV, metrics_csv_text(rows))
    write_json_atomic(run_dir / METRICS_JSON, [row.to_dict() for row in rows])


def write_summary(run_dir: Path, summary: RunSummary) -> None:
    """``summary.json``."""
    write_json_atomic(Path(run_dir) / SUMMARY_FILE, summary.to_dict())


def add_runner_timings(run_dir: Path, timings: Mapping[str, float]) -> RunSummary:
    """Set ``summary.json``'s ``runner`` to ``timings`` (seconds, rounded to ms); returns the
    updated summary. :class:`RunDirError` if the run has no readable summary."""
    summary = read_summary(run_dir)
    if summary is None:
        raise RunDirError(f"{run_dir}: no {SUMMARY_FILE}")
    summary = dataclasses.replace(summary, runner={k: round(v, 3) for k, v in timings.items()})
    write_summary(run_dir, summary)
    return summary


def round_event(row: MetricsRow, rounds: int) -> dict[str, Any]:
    """The ``progress.jsonl`` record of a finished round: ``{"event": "round", "rounds": R,
    <every column of row>}``."""
    return {"event": "round", "rounds": rounds, **row.to_dict()}


def row_from_event(event: Mapping[str, Any]) -> MetricsRow:
    """The :class:`MetricsRow` of a ``progress.jsonl`` "round" event (columns it lacks are
    None; an unknown key raises :class:`RunDirError`)."""
    cols = {k: v for k, v in event.items() if k not in ("event", "rounds")}
    return MetricsRow.from_dict(cols, where=f"{PROGRESS_FILE} round event", partial=True)


# ---------------------------------------------------------------------------- summary
def rounds_to_target(rows: Sequence[MetricsRow], metric: str, target: float) -> int | None:
    """First round r >= 1 whose ``metric`` reaches ``target`` (None if never)."""
    for r in rows:
        score = r.value(metric)
        if r.round > 0 and score is not None and score >= target:
            return r.round
    return None


def summarize(
    rows: Sequence[MetricsRow], cfg: RunConfig, wall_seconds: float, **extra: Any
) -> RunSummary:
    """The :class:`RunSummary` of ``rows`` (the metric follows ``cfg.dataset``'s task, the
    target :func:`target_for`); ``extra`` sets the ServerApp's fields (``model``, ...)."""
    score_col, loss_col = primary_metric(dataset_info(cfg.dataset).task)
    evaluated = [r for r in rows if r.value(score_col) is not None]
    target = target_for(cfg)
    final = evaluated[-1] if evaluated else None
    best = max(evaluated, key=lambda r: getattr(r, score_col)) if evaluated else None
    ratio, ratio_se, n_ratio = predicted_ratio_fedavg(rows)
    return RunSummary(
        dataset=cfg.dataset,
        selection=cfg.selection,
        strategy=cfg.strategy,
        seed=cfg.seed,
        rounds=max((int(r.round) for r in rows), default=0),
        metric=score_col,
        loss_metric=loss_col,
        final=getattr(final, score_col) if final else None,
        final_loss=getattr(final, loss_col) if final else None,
        best=getattr(best, score_col) if best else None,
        best_round=best.round if best else None,
        target=target,
        rounds_to_target=rounds_to_target(evaluated, score_col, target),
        wall_seconds=wall_seconds,
        finished_at=datetime.now(timezone.utc).isoformat(),
        pred_ratio_fedavg=ratio,
        pred_ratio_fedavg_se=ratio_se,
        pred_ratio_rounds=n_ratio,
        **extra,
    )


def predicted_ratio_fedavg(rows: Sequence[MetricsRow]) -> tuple[float | None, float | None, int]:
    """(mean, standard error of the mean, number of rounds) of ``pred_var_fedavg /
    pred_var_chosen`` over the rounds r >= 1 that have both (> 0); mean and error None with
    fewer than :data:`MIN_RATIO_ROUNDS` rounds. Successive rounds' predictions share tracked
    evidence, so the error allows for their correlation
    (:func:`fedstrat.app.stats.series_mean_se`)."""
    ratios = []
    for r in rows:
        fedavg, chosen = r.value("pred_var_fedavg"), r.value("pred_var_chosen")
        if r.round > 0 and fedavg is not None and chosen is not None and chosen > 0:
            ratios.append(fedavg / chosen)
    if len(ratios) < MIN_RATIO_ROUNDS:
        return None, None, len(ratios)
    return (*series_mean_se(ratios), len(ratios))


# ---------------------------------------------------------------------------- reading
@dataclass(frozen=True)
class RunData:
    """A run directory read back: its configuration, metrics rows and summary.

    ``finished`` is False for a run without ``summary.json`` (still running or failed); its
    ``summary`` is then :func:`summarize` of the rows so far.
    """

    path: Path
    config: RunConfig
    rows: tuple[MetricsRow, ...]
    summary: RunSummary
    finished: bool

    @property
    def metric(self) -> str:
        """The score column: "accuracy" or "auc"."""
        return self.summary.metric

    @property
    def mean_pred_var(self) -> float | None:
        """Mean predicted variance of the selection over the rounds that have one."""
        pvs = [v for v in (r.value("pred_var") for r in self.rows) if v is not None]
        return statistics.fmean(pvs) if pvs else None


def is_run_dir(path: Path) -> bool:
    """True if ``path`` holds a metrics table (``metrics.json`` or ``metrics.csv``)."""
    return (Path(path) / METRICS_JSON).is_file() or (Path(path) / METRICS_CSV).is_file()


def is_finished(path: Path) -> bool:
    """True if ``path`` is a run directory whose run wrote its ``summary.json``."""
    return is_run_dir(path) and (Path(path) / SUMMARY_FILE).is_file()


def _cell(text: str, column: str, where: str) -> int | float | None:
    if text == "":
        return None
    try:
        return int(text) if column in _INT_COLUMNS else float(text)
    except ValueError:
        raise RunDirError(f"{where}: column {column!r}: not a number: {text!r}") from None


def read_metrics(run_dir: Path) -> list[MetricsRow]:
    """The rows of ``metrics.json`` (or, without it, ``metrics.csv``)."""
    run_dir = Path(run_dir)
    mj, mc = run_dir / METRICS_JSON, run_dir / METRICS_CSV
    if mj.is_file():
        try:
            data = json.loads(mj.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise RunDirError(f"{mj} is not valid JSON: {exc}") from exc
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise RunDirError(f"{mj}: expected a list of per-round objects")
        return [MetricsRow.from_dict(r, where=f"{mj} row {i}") for i, r in enumerate(data)]
    if mc.is_file():
        with mc.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            check_columns(reader.fieldnames or [], where=f"{mc} header")
            return [
                MetricsRow.from_dict(
                    {k: _cell(v, k, f"{mc} line {i + 2}") for k, v in row.items()},
                    where=f"{mc} line {i + 2}",
                )
                for i, row in enumerate(reader)
            ]
    raise RunDirError(f"{run_dir} is not a run directory (no {METRICS_JSON} or {METRICS_CSV})")


def read_summary(run_dir: Path) -> RunSummary | None:
    """``summary.json`` of ``run_dir`` (None if the run has not written it)."""
    path = Path(run_dir) / SUMMARY_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise RunDirError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise RunDirError(f"{path}: expected a JSON object")
    return RunSummary.from_dict(data, where=str(path))


def read_config(run_dir: Path) -> RunConfig:
    """``config.toml`` of ``run_dir`` as a RunConfig."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise RunDirError(f"{run_dir} is not a run directory (no {CONFIG_FILE})")
    try:
        return RunConfig.from_toml(path)
    except ConfigError as exc:
        raise RunDirError(f"{path}: {exc}") from exc


def load_run(run_dir: str | Path, target: float | None = None) -> RunData:
    """Read ``run_dir``. ``target`` (if > 0) replaces the summary's target and its rounds to
    target (:func:`rounds_to_target`, the rule the run used)."""
    d = Path(run_dir)
    if not d.is_dir():
        raise RunDirError(f"not a directory: {d}")
    rows = read_metrics(d)
    cfg = read_config(d)
    summary = read_summary(d)
    finished = summary is not None
    if summary is None:
        last = rows[-1].elapsed if rows and rows[-1].elapsed is not None else 0.0
        summary = summarize(rows, cfg, wall_seconds=last)
    if target is not None and target > 0:
        reached = rounds_to_target(rows, summary.metric, target)
        summary = dataclasses.replace(summary, target=target, rounds_to_target=reached)
    return RunData(path=d, config=cfg, rows=tuple(rows), summary=summary, finished=finished)
