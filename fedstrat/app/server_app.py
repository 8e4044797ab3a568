"""The fedstrat ServerApp: ``fedstrat.app.server_app:app``.

One job = one :class:`~fedstrat.app.config.RunConfig` (read from ``context.run_config``).
The server builds the initial model (seeded), a Flower base strategy (FedAvg, FedProx, FedAdam
or FedYogi, ``fraction_evaluate=0``: evaluation is centralised on the dataset's test split)
wrapped in :class:`fedstrat.strategies.StratifiedSelection`, and runs the rounds itself.

Why its own round loop instead of ``Strategy.start``: ``start`` always counts rounds from 1
and offers no per-round hook besides ``evaluate_fn``. A resumed run must continue at round
r + 1 (client training and selection are seeded by the round number) and every round must
write metrics, progress and a checkpoint. :func:`run_rounds` performs exactly the calls of
``Strategy.start`` for each round (configure_train -> send_and_receive -> aggregate_train ->
configure_evaluate -> send_and_receive -> aggregate_evaluate -> centralised evaluation) and
then calls a hook.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import math
import time
import traceback
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAdam, FedAvg, FedProx, FedYogi, Strategy

from fedstrat.app.checkpoint import input_digests, load_checkpoint, save_checkpoint
from fedstrat.app.config import RunConfig
from fedstrat.app.grid import StableNodeGrid
from fedstrat.app.plots import plot_run
from fedstrat.app.rundir import (
    BAND_COLUMNS,
    LOGS_DIR,
    MODEL_FILE,
    PLOTS_DIR,
    PROGRESS_FILE,
    SAMPLING_FILE,
    MetricsRow,
    RunSummary,
    append_jsonl,
    band_columns,
    default_run_dir,
    primary_metric,
    read_jsonl,
    round_event,
    summarize,
    write_bytes_atomic,
    write_config,
    write_metrics,
    write_summary,
)
from fedstrat.app.stopping import stop_requested
from fedstrat.strategies.record import PRED_VAR_METRICS, band_metric_names

log = logging.getLogger("fedstrat.app")

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Flower entry point: run the job described by ``context.run_config``."""
    cfg = RunConfig.from_mapping(dict(context.run_config)).validate()
    run_server(grid, cfg)


# ---------------------------------------------------------------------------- building blocks
def build_base_strategy(cfg: RunConfig) -> Strategy:
    """The Flower strategy whose aggregation rule / server optimiser is kept.

    ``fraction_evaluate=0`` (no federated evaluation); minimum node counts are 1 because the
    selection wrapper decides how many nodes take part.
    """
    common: dict[str, Any] = {
        "fraction_train": 1.0,
        "fraction_evaluate": 0.0,
        "min_train_nodes": 1,
        "min_evaluate_nodes": 0,
        "min_available_nodes": 1,
    }
    if cfg.strategy == "fedavg":
        return FedAvg(**common)
    if cfg.strategy == "fedprox":
        return FedProx(proximal_mu=cfg.proximal_mu, **common)
    if cfg.strategy == "fedadam":
        return FedAdam(eta=cfg.server_lr, **common)
    if cfg.strategy == "fedyogi":
        return FedYogi(eta=cfg.server_lr, **common)
    raise ValueError(f"unknown strategy {cfg.strategy!r}")


def build_strategy(cfg: RunConfig, base: Strategy, record_path: Path | None) -> Strategy:
    """``StratifiedSelection(base, ...)`` configured from ``cfg``; each round's record is
    appended to ``record_path`` (``sampling.jsonl``) by the app's ``on_record`` callback."""
    from fedstrat.strategies import SelectionOptions, StratifiedSelection
    from fedstrat.strategies.record import jsonl_appender

    options = SelectionOptions(
        clients_per_round=cfg.clients_per_round,
        selection=cfg.selection,
        allocation=cfg.allocation,
        design=cfg.design,
        estimator=cfg.estimator,
        cv_decay=cfg.cv_decay,
        cv_budget_bytes=cfg.cv_budget_bytes,
        cv_fill=cfg.cv_fill,
        n_strata=cfg.n_strata or None,
        stratify_by=cfg.stratify_by,
        restratify_every=cfg.restratify_every,
        profile_epsilon=cfg.profile_epsilon,
        size_cap=cfg.size_cap,
        poc_d=cfg.poc_d or None,
        max_strata=cfg.max_strata or None,
        warmup_rounds=cfg.warmup_rounds,
        min_per_stratum=cfg.min_per_stratum,
        size_strata=cfg.size_strata,
        balanced_fedavg=cfg.balanced_fedavg,
        sketch_dim=cfg.sketch_dim,
        sketch_seed=cfg.sketch_seed,
        sketch_method=cfg.sketch_method,
        prior_std=cfg.prior_std or None,
        variance_ema=cfg.variance_ema or None,
        cost_key=cfg.cost_key,
        node_wait_timeout=cfg.node_wait_timeout,
        profile_timeout=cfg.profile_timeout or cfg.round_timeout,
        seed=cfg.seed,
        profiling="query",  # the fedstrat ClientApp answers the profile query
    )
    on_record = None if record_path is None else jsonl_appender(record_path)
    return StratifiedSelection(base, options=options, on_record=on_record)


def train_config(cfg: RunConfig) -> ConfigRecord:
    """The train ConfigRecord of docs/design.md (the strategy adds ``server-round``;
    FedProx sets its own ``proximal-mu``)."""
    return ConfigRecord(
        {
            "local-epochs": cfg.local_epochs,
            "local-steps": cfg.local_steps,
            "lr": cfg.lr,
            "batch-size": cfg.batch_size,
            "optimizer": cfg.optimizer,
            "proximal-mu": cfg.proximal_mu if cfg.strategy == "fedprox" else 0.0,
            "clip-norm": cfg.clip_norm,
            "seed": cfg.seed,
        }
    )


class RunStopped(RuntimeError):
    """The runner is stopping this run (:func:`~fedstrat.app.stopping.stop_requested`): the round
    that just ended is not recorded (its replies may have failed in the shutdown)."""


class CentralEvaluator:
    """``evaluate_fn(round, arrays)`` on the test split: accuracy/loss or AUC/logloss."""

    def __init__(self, cfg: RunConfig) -> None:
        from fedstrat.data import load_dataset
        from fedstrat.data.registry import run_options
        from fedstrat.models import build_model, default_model_for, get_device

        self.dataset = load_dataset(
            cfg.dataset, root=cfg.data_root or None, seed=cfg.seed,
            data=cfg.data, schema=cfg.schema, split=cfg.split,
            **run_options(cfg.dataset, cfg.to_dict()),
        )
        self.task = self.dataset.task
        self.model_name = cfg.model or default_model_for(self.dataset)
        torch.manual_seed(cfg.seed)
        self.model = build_model(self.model_name, self.dataset)
        self.device = get_device(cfg.device)

    def initial_arrays(self) -> ArrayRecord:
        """The seeded initial model as an ArrayRecord (state_dict keys)."""
        return ArrayRecord(self.model.state_dict())

    def load(self, arrays: ArrayRecord) -> torch.nn.Module:
        """Load ``arrays`` into the server's model copy and return it."""
        self.model.load_state_dict(arrays.to_torch_state_dict(), strict=True)
        return self.model

    def __call__(self, server_round: int, arrays: ArrayRecord) -> MetricRecord:
        from fedstrat.models import evaluate

        res = evaluate(
            self.load(arrays),
            self.dataset.x_test,
            self.dataset.y_test,
            self.task,
            device=self.device,
        )
        score, loss = primary_metric(self.task)
        src_loss = "logloss" if self.task == "ctr" else "loss"
        return MetricRecord({score: float(res[score]), loss: float(res[src_loss])})


def _server_opt_state(base: Strategy) -> dict[str, dict[str, np.ndarray]]:
    """FedAdam/FedYogi moments (``m_t``, ``v_t``) if they exist yet."""
    out = {}
    for name in ("m_t", "v_t"):
        moments = getattr(base, name, None)
        if isinstance(moments, dict) and moments:
            out[name] = {k: np.asarray(v) for k, v in moments.items()}
    return out


def _restore_server_opt(base: Strategy, state: dict[str, dict[str, np.ndarray]]) -> None:
    for name, moments in state.items():
        setattr(base, name, {k: np.array(v) for k, v in moments.items()})


#: MetricsRow column <- key of the MetricRecord that ``aggregate_train`` returns: ``train-loss``
#: is Flower's weighted mean of the clients' reply metric, the others come from
#: StratifiedSelection's record of the round.
TRAIN_METRIC_KEYS: dict[str, str] = {
    "train_loss": "train-loss",
    "pred_var": "fedstrat-pred-var",
    "pred_var_uniform": "fedstrat-pred-var-uniform",
    "var_ratio": "fedstrat-var-ratio",
    "n_selected": "fedstrat-n-selected",
    "n_failed": "fedstrat-n-failed",
    "n_rejected": "fedstrat-n-rejected",
    **{  # predicted MSEs with their band: record.PRED_VAR_METRICS -> rundir.band_columns
        col: key
        for what in BAND_COLUMNS
        for col, key in zip(band_columns(what), band_metric_names(PRED_VAR_METRICS[what]),
                            strict=True)
    },
}
#: Columns the CentralEvaluator's MetricRecord fills (its keys are the column names).
EVAL_COLUMNS = ("accuracy", "loss", "auc", "logloss")
_COUNT_COLUMNS = ("n_selected", "n_failed", "n_rejected")


def _num(value: Any) -> float | None:
    """A finite number as float, else None (lists, strings, NaN, inf)."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.number):
        return None
    v = float(value)
    return v if math.isfinite(v) else None


def round_row(
    rnd: int,
    train_metrics: MetricRecord | None,
    eval_metrics: MetricRecord | None,
    seconds: float,
    elapsed: float,
) -> MetricsRow:
    """The metrics row of round ``rnd`` from the aggregated train metrics
    (:data:`TRAIN_METRIC_KEYS`) and the centralised evaluation (:data:`EVAL_COLUMNS`); a key
    that is absent or not a finite number leaves its cell empty. ``var_ratio`` falls back to
    ``pred_var_uniform / pred_var`` when the strategy reports both but no ratio."""
    cells: dict[str, Any] = {}
    if eval_metrics is not None:
        cells |= {k: _num(eval_metrics[k]) for k in EVAL_COLUMNS if k in eval_metrics}
    if train_metrics is not None:
        for col, key in TRAIN_METRIC_KEYS.items():
            cells[col] = _num(train_metrics[key]) if key in train_metrics else None
    for col in _COUNT_COLUMNS:
        if cells.get(col) is not None:
            cells[col] = int(cells[col])
    pv, pvu = cells.get("pred_var"), cells.get("pred_var_uniform")
    if cells.get("var_ratio") is None and pv and pvu is not None:
        cells["var_ratio"] = pvu / pv
    return MetricsRow(round=rnd, seconds=seconds, elapsed=elapsed, **cells)


RoundHook = Callable[[int, ArrayRecord, MetricRecord | None, MetricRecord | None], None]


def run_rounds(
    strategy: Strategy,
    grid: Grid,
    arrays: ArrayRecord,
    *,
    first_round: int,
    last_round: int,
    train_cfg: ConfigRecord,
    timeout: float,
    evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None,
    on_round: RoundHook,
) -> ArrayRecord:
    """Rounds ``first_round..last_round`` with the calls of ``Strategy.start``; after each,
    ``on_round(round, arrays, train_metrics, eval_metrics)``. Returns the final arrays."""
    for rnd in range(first_round, last_round + 1):
        log.info("[ROUND %s/%s]", rnd, last_round)
        replies = grid.send_and_receive(
            messages=strategy.configure_train(rnd, arrays, ConfigRecord(dict(train_cfg)), grid),
            timeout=timeout,
        )
        new_arrays, train_metrics = strategy.aggregate_train(rnd, replies)
        if new_arrays is not None:
            arrays = new_arrays
        else:
            log.warning("round %d: no aggregate (every reply failed); model unchanged", rnd)
        eval_msgs = list(strategy.configure_evaluate(rnd, arrays, ConfigRecord(), grid))
        if eval_msgs:
            strategy.aggregate_evaluate(rnd, grid.send_and_receive(eval_msgs, timeout=timeout))
        eval_metrics = evaluate_fn(rnd, arrays) if evaluate_fn is not None else None
        on_round(rnd, arrays, train_metrics, eval_metrics)
    return arrays


def _attach_log_file(run_dir: Path) -> logging.Handler:
    (run_dir / LOGS_DIR).mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(run_dir / LOGS_DIR / "server.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for name in ("flwr", "fedstrat"):
        logging.getLogger(name).addHandler(handler)
    logging.getLogger("fedstrat").setLevel(logging.INFO)
    return handler


def _truncate_jsonl(path: Path, keep: Callable[[dict[str, Any]], bool]) -> None:
    if path.is_file():
        kept = [r for r in read_jsonl(path) if keep(r)]
        import json

        write_bytes_atomic(path, "".join(json.dumps(r) + "\n" for r in kept).encode())


# ---------------------------------------------------------------------------- the job
def run_server(grid: Grid, cfg: RunConfig) -> RunSummary:
    """Run the whole job on ``grid``; writes the run directory and returns the summary."""
    t0 = time.perf_counter()
    run_dir = Path(cfg.out) if cfg.out else default_run_dir(cfg)
    run_dir = run_dir.expanduser().resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg = dataclasses.replace(cfg, out=str(run_dir))
    handler = _attach_log_file(run_dir)
    progress = run_dir / PROGRESS_FILE
    try:
        return _run(grid, cfg, run_dir, progress, t0)
    except BaseException as exc:
        append_jsonl(
            progress,
            {
                "event": "error",
                "message": f"{type(exc).__name__}: {exc}",
                "traceback": traceback.format_exc(),
                "time": datetime.now(timezone.utc).isoformat(),
            },
        )
        raise
    finally:
        for name in ("flwr", "fedstrat"):
            logging.getLogger(name).removeHandler(handler)
        handler.close()


def _run(grid: Grid, cfg: RunConfig, run_dir: Path, progress: Path, t0: float) -> RunSummary:
    resuming = bool(cfg.resume)
    ckpt = load_checkpoint(cfg.resume) if resuming else None
    append_jsonl(
        progress,
        {
            "event": "start",
            "rounds": cfg.rounds,
            "first_round": (ckpt.round + 1) if ckpt else 1,
            "resumed_from": ckpt.round if ckpt else None,
            "time": datetime.now(timezone.utc).isoformat(),
        },
    )
    write_config(run_dir, cfg)
    evaluator = CentralEvaluator(cfg)
    base = build_base_strategy(cfg)
    sampling_path = run_dir / SAMPLING_FILE
    strategy = build_strategy(cfg, base, sampling_path)
    inputs = input_digests(cfg)  # with every checkpoint: a resume must read the same files
    stable_grid = StableNodeGrid(
        grid, epsilon=cfg.profile_epsilon, seed=cfg.seed, timeout=cfg.round_timeout
    )
    rows: list[MetricsRow]
    if ckpt is not None:
        arrays = ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in ckpt.arrays.items()})
        strategy.load_state_dict(ckpt.strategy_state)
        _restore_server_opt(base, ckpt.server_opt)
        rows = [MetricsRow.from_dict(r, where="checkpoint", partial=True) for r in ckpt.metrics]
        elapsed0 = ckpt.elapsed
        first = ckpt.round + 1
        done = ckpt.round
        _truncate_jsonl(sampling_path, lambda r: int(r.get("round", 0)) <= done)
    else:
        if sampling_path.exists():
            sampling_path.unlink()
        arrays = evaluator.initial_arrays()
        init = evaluator(0, arrays)
        rows = [round_row(0, None, init, 0.0, 0.0)]
        elapsed0 = 0.0
        first = 1
    t_loop = time.perf_counter()
    t_round = [time.perf_counter()]

    def on_round(
        rnd: int, arrs: ArrayRecord, train_m: MetricRecord | None, eval_m: MetricRecord | None
    ) -> None:
        if stop_requested(run_dir):  # a round cut short by the shutdown (fedstrat.app.stopping)
            raise RunStopped(f"round {rnd} not recorded: the run is being stopped")
        now = time.perf_counter()
        elapsed = elapsed0 + (now - t_loop)
        row = round_row(rnd, train_m, eval_m, now - t_round[0], elapsed)
        rows.append(row)
        write_metrics(run_dir, rows)
        save_checkpoint(
            run_dir,
            round=rnd,
            arrays={k: v.numpy() for k, v in arrs.items()},
            strategy_state=strategy.state_dict(),
            server_opt=_server_opt_state(base),
            metrics=[r.to_dict() for r in rows],
            elapsed=elapsed,
            config=cfg.to_dict(),
            inputs=inputs,
        )
        append_jsonl(progress, round_event(row, cfg.rounds))
        t_round[0] = time.perf_counter()

    def evaluate_fn(rnd: int, arrs: ArrayRecord) -> MetricRecord | None:
        if rnd % cfg.eval_every == 0 or rnd == cfg.rounds:
            return evaluator(rnd, arrs)
        return None

    arrays = run_rounds(
        strategy,
        stable_grid,
        arrays,
        first_round=first,
        last_round=cfg.rounds,
        train_cfg=train_config(cfg),
        timeout=cfg.round_timeout,
        evaluate_fn=evaluate_fn,
        on_round=on_round,
    )
    write_metrics(run_dir, rows)
    model = evaluator.load(arrays)
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    write_bytes_atomic(run_dir / MODEL_FILE, buf.getvalue())
    plot_run(run_dir / PLOTS_DIR, rows, *primary_metric(evaluator.task))
    summary = summarize(
        rows,
        cfg,
        wall_seconds=elapsed0 + time.perf_counter() - t0,  # resumed: + the earlier rounds
        model=evaluator.model_name,
        resumed_from=ckpt.round if ckpt else None,
        unstable_nodes=len(stable_grid.unstable),
        nodes=len(stable_grid.mapping),
    )
    write_summary(run_dir, summary)
    append_jsonl(
        progress,
        {
            "event": "end",
            "summary": summary.to_dict(),
            "time": datetime.now(timezone.utc).isoformat(),
        },
    )
    return summary
