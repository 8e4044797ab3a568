"""Run-directory helpers, checkpoints and the shipped Flower App config (no Flower run)."""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
import sys
from pathlib import Path

import numpy as np
import pytest

from fedstrat.app.checkpoint import find_checkpoint_dir, load_checkpoint, save_checkpoint
from fedstrat.app.config import ConfigError, RunConfig
from fedstrat.app.plots import plot_run
from fedstrat.app.rundir import (
    ADDED_COLUMNS,
    METRIC_COLUMNS,
    MIN_RATIO_ROUNDS,
    MetricsRow,
    RunDirError,
    RunSummary,
    add_runner_timings,
    append_jsonl,
    load_run,
    read_jsonl,
    round_event,
    row_from_event,
    summarize,
    write_config,
    write_json_atomic,
    write_metrics,
    write_summary,
)
from fedstrat.app.simulation import flwr_app_dir
from fedstrat.app.tomlwrite import flat_toml

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROWS = [
    MetricsRow(round=0, accuracy=0.1, loss=2.3),
    MetricsRow(
        round=1,
        accuracy=0.5,
        loss=1.5,
        pred_var=2.0,
        pred_var_uniform=6.0,
        var_ratio=3.0,
        pred_var_chosen=2.0,
        pred_var_chosen_lo=1.5,
        pred_var_chosen_hi=2.8,
        pred_var_fedavg=5.0,
        pred_var_fedavg_lo=4.0,
        pred_var_fedavg_hi=6.5,
        train_loss=1.9,
        n_selected=10,
        n_failed=0,
        n_rejected=0,
        seconds=0.25,
        elapsed=0.25,
    ),
    MetricsRow(
        round=2,
        accuracy=0.9,
        loss=0.5,
        pred_var=1.0,
        pred_var_uniform=1.0,
        var_ratio=1.0,
        pred_var_chosen=1.0,
        pred_var_chosen_lo=0.8,
        pred_var_chosen_hi=1.3,
        pred_var_fedavg=3.0,
        pred_var_fedavg_lo=2.5,
        pred_var_fedavg_hi=3.8,
        train_loss=float("nan"),
    ),
    # a FedAvg round aggregated as FedAvg: the design used is FedAvg; an
    # estimator="difference" FedAvg round's prediction of the uniform draw
    MetricsRow(round=3, accuracy=0.85, loss=0.6, pred_var_chosen=2.0, pred_var_chosen_lo=1.6,
               pred_var_chosen_hi=2.6, pred_var_fedavg=2.0, pred_var_fedavg_lo=1.6,
               pred_var_fedavg_hi=2.6, pred_var_uniform_difference=0.5,
               pred_var_uniform_difference_lo=0.4, pred_var_uniform_difference_hi=0.7),
]
#: pred_var_fedavg / pred_var_chosen of ROWS' rounds 1..3
ROW_RATIOS = [2.5, 3.0, 1.0]


def test_config_toml_roundtrip(tmp_path: Path) -> None:
    cfg = RunConfig(dataset="digits", out=str(tmp_path), lr=0.1, model='we"ird\\name')
    write_config(tmp_path, cfg)
    assert RunConfig.from_toml(tmp_path / "config.toml") == cfg
    assert flat_toml({"a": 1.0, "b": True}, "t") == "[t]\na = 1.0\nb = true\n"
    with pytest.raises(ValueError, match="non-finite"):
        flat_toml({"a": math.inf})


def test_metrics_files(tmp_path: Path) -> None:
    write_metrics(tmp_path, ROWS)
    lines = (tmp_path / "metrics.csv").read_text().splitlines()
    assert lines[0].split(",") == list(METRIC_COLUMNS)
    assert METRIC_COLUMNS[:3] == ("round", "accuracy", "loss")
    assert len(lines) == 1 + len(ROWS)
    rows = json.loads((tmp_path / "metrics.json").read_text())
    assert rows[2]["train_loss"] is None  # NaN -> null
    assert rows[1]["var_ratio"] == 3.0 and rows[0]["pred_var"] is None
    assert all(list(r) == list(METRIC_COLUMNS) for r in rows)
    assert not list(tmp_path.glob(".*.tmp"))


def _finished_run(d: Path, rows: list[MetricsRow], cfg: RunConfig) -> RunSummary:
    write_config(d, cfg)
    write_metrics(d, rows)
    summary = summarize(rows, cfg, wall_seconds=2.5, model="mlp", nodes=10)
    write_summary(d, summary)
    return summary


def test_write_then_load_round_trip(tmp_path: Path) -> None:
    cfg = RunConfig(dataset="digits", selection="uniform", seed=4, target_accuracy=0.8)
    summary = _finished_run(tmp_path, ROWS, cfg)
    run = load_run(tmp_path)
    assert run.finished and run.config == cfg and run.summary == summary
    nan_free = [dataclasses.replace(r, train_loss=None) if r.round == 2 else r for r in ROWS]
    assert list(run.rows) == nan_free
    assert run.metric == "accuracy" and run.mean_pred_var == pytest.approx(1.5)
    # the CSV alone reads back to the same rows
    (tmp_path / "metrics.json").unlink()
    assert list(load_run(tmp_path).rows) == nan_free
    # summary.json keys in file order, runner timings only when present
    data = json.loads((tmp_path / "summary.json").read_text())
    assert list(data)[:3] == ["dataset", "selection", "strategy"] and "runner" not in data
    assert add_runner_timings(tmp_path, {"total_s": 1.23456}).runner == {"total_s": 1.235}
    data = json.loads((tmp_path / "summary.json").read_text())
    assert list(data)[-1] == "runner" and load_run(tmp_path).summary.runner == {"total_s": 1.235}


def test_load_run_target_override_uses_the_summary_rule(tmp_path: Path) -> None:
    rows = [MetricsRow(round=0, accuracy=0.95), *ROWS[1:]]
    _finished_run(tmp_path, rows, RunConfig(dataset="digits", target_accuracy=0.8))
    assert load_run(tmp_path).summary.rounds_to_target == 2
    run = load_run(tmp_path, target=0.4)  # round 0 never counts
    assert (run.summary.target, run.summary.rounds_to_target) == (0.4, 1)
    assert load_run(tmp_path, target=0.99).summary.rounds_to_target is None


def test_unfinished_run_is_summarised_with_the_run_rule(tmp_path: Path) -> None:
    cfg = RunConfig(dataset="digits", target_accuracy=0.8)
    write_config(tmp_path, cfg)
    write_metrics(tmp_path, ROWS[:3])
    run = load_run(tmp_path)
    assert not run.finished
    assert (run.summary.final, run.summary.rounds_to_target, run.summary.rounds) == (0.9, 2, 2)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda rows: rows[1].update(acc=rows[1].pop("accuracy")), "unknown column 'acc'"),
        (lambda rows: rows[0].pop("auc"), "missing column 'auc'"),
        (lambda rows: rows[0].update(round="0"), "'round' must be an integer"),
    ],
)
def test_bad_metrics_column_is_a_clear_error(tmp_path: Path, edit, message: str) -> None:
    _finished_run(tmp_path, ROWS, RunConfig(dataset="digits"))
    rows = json.loads((tmp_path / "metrics.json").read_text())
    edit(rows)
    (tmp_path / "metrics.json").write_text(json.dumps(rows))
    with pytest.raises(RunDirError, match=message):
        load_run(tmp_path)


def test_bad_csv_header_and_summary_key_are_clear_errors(tmp_path: Path) -> None:
    _finished_run(tmp_path, ROWS, RunConfig(dataset="digits"))
    (tmp_path / "metrics.json").unlink()
    csv_path = tmp_path / "metrics.csv"
    csv_path.write_text(csv_path.read_text().replace("pred_var_uniform", "uniform_var", 1))
    with pytest.raises(RunDirError, match="metrics.csv header: unknown column 'uniform_var'"):
        load_run(tmp_path)
    write_metrics(tmp_path, ROWS)
    data = json.loads((tmp_path / "summary.json").read_text())
    data["final_accuracy"] = data.pop("final")
    (tmp_path / "summary.json").write_text(json.dumps(data))
    with pytest.raises(RunDirError, match="unknown key 'final_accuracy'"):
        load_run(tmp_path)


def test_not_a_run_dir(tmp_path: Path) -> None:
    with pytest.raises(RunDirError, match="not a directory"):
        load_run(tmp_path / "missing")
    with pytest.raises(RunDirError, match="not a run directory"):
        load_run(tmp_path)
    write_metrics(tmp_path, ROWS)
    with pytest.raises(RunDirError, match="no config.toml"):
        load_run(tmp_path)


def test_progress_round_event_round_trip() -> None:
    event = round_event(ROWS[1], rounds=5)
    assert (event["event"], event["rounds"], event["round"]) == ("round", 5, 1)
    assert row_from_event(event) == ROWS[1]
    assert row_from_event({"event": "round", "round": 2, "auc": 0.7}).auc == 0.7
    with pytest.raises(RunDirError, match="unknown column 'acc'"):
        row_from_event({"event": "round", "round": 2, "acc": 0.7})


def test_summary_and_plots(tmp_path: Path) -> None:
    cfg = RunConfig(dataset="digits", target_accuracy=0.8)
    s = summarize(ROWS, cfg, wall_seconds=1.0)
    assert (s.metric, s.loss_metric) == ("accuracy", "loss")
    assert (s.final, s.best, s.best_round) == (0.85, 0.9, 2)
    assert s.rounds_to_target == 2 and s.target == 0.8
    s = summarize(ROWS, dataclasses.replace(cfg, target_accuracy=0.95), 1.0)
    assert s.rounds_to_target is None
    assert summarize(ROWS, dataclasses.replace(cfg, target_accuracy=0.0), 1.0).target == 0.85
    paths = plot_run(tmp_path, ROWS, "accuracy", "loss")
    assert [p.name for p in paths] == ["accuracy.png", "variance.png"]
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in paths)


def test_ctr_run_plots_auc_only(tmp_path: Path) -> None:
    rows = [MetricsRow(round=0, auc=0.5, logloss=0.7), MetricsRow(round=1, auc=0.72, logloss=0.6)]
    s = summarize(rows, RunConfig(dataset="movielens-100k"), wall_seconds=1.0)
    assert (s.metric, s.loss_metric, s.final, s.rounds_to_target) == ("auc", "logloss", 0.72, 1)
    plot_run(tmp_path, rows, s.metric, s.loss_metric)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["auc.png", "variance.png"]


def test_jsonl(tmp_path: Path) -> None:
    p = tmp_path / "x.jsonl"
    append_jsonl(p, {"a": 1, "b": float("nan")})
    with open(p, "a") as fh:
        fh.write('{"partial": ')  # a line being written is not read
    assert read_jsonl(p) == [{"a": 1, "b": None}]
    write_json_atomic(tmp_path / "y.json", {"v": np.float32(1.5), "w": np.arange(2)})
    assert json.loads((tmp_path / "y.json").read_text()) == {"v": 1.5, "w": [0, 1]}


def test_checkpoint_roundtrip(tmp_path: Path) -> None:
    arrays = {"fc.weight": np.arange(6, dtype=np.float32).reshape(2, 3), "n": np.array([3])}
    opt = {"m_t": {"fc.weight": np.ones((2, 3))}, "v_t": {"fc.weight": np.zeros((2, 3))}}
    for rnd in (1, 2):
        save_checkpoint(
            tmp_path,
            round=rnd,
            arrays=arrays,
            strategy_state={"s": rnd},
            metrics=[r.to_dict() for r in ROWS[: rnd + 1]],
            elapsed=1.5,
            config={"seed": 0},
            server_opt=opt,
        )
    ck = load_checkpoint(tmp_path)
    assert ck.round == 2 and ck.strategy_state == {"s": 2} and len(ck.metrics) == 3
    assert list(ck.arrays) == ["fc.weight", "n"]
    np.testing.assert_array_equal(ck.arrays["fc.weight"], arrays["fc.weight"])
    assert ck.arrays["n"].dtype == arrays["n"].dtype
    np.testing.assert_array_equal(ck.server_opt["m_t"]["fc.weight"], 1.0)
    # only the files of the latest round are kept
    names = sorted(p.name for p in (tmp_path / "checkpoint").iterdir())
    assert names == ["arrays-r2.npz", "server-opt-r2.npz", "state.json"]
    assert find_checkpoint_dir(tmp_path / "checkpoint") == find_checkpoint_dir(tmp_path)
    with pytest.raises(ConfigError, match="no checkpoint"):
        find_checkpoint_dir(tmp_path / "nothing")


@pytest.mark.parametrize(
    "path",
    [flwr_app_dir() / "pyproject.toml", Path(__file__).parents[2] / "pyproject.toml"],
)
def test_flower_app_config_lists_every_option_with_its_default(path: Path) -> None:
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    flwr = data["tool"]["flwr"]["app"]
    assert flwr["components"] == {
        "serverapp": "fedstrat.app.server_app:app",
        "clientapp": "fedstrat.clients.client_app:app",
    }
    assert flwr["config"] == RunConfig().to_flower()
    assert "federations" not in data["tool"]["flwr"]  # legacy; `flwr run` would rewrite it


def test_summary_ratio_is_fedavg_over_the_design_used_with_its_standard_error() -> None:
    s = summarize(ROWS, RunConfig(dataset="digits"), wall_seconds=1.0)
    mean = sum(ROW_RATIOS) / 3
    se = math.sqrt(sum((r - mean) ** 2 for r in ROW_RATIOS) / 2 / 3)
    assert s.pred_ratio_rounds == 3
    assert s.pred_ratio_fedavg == pytest.approx(mean)
    assert s.pred_ratio_fedavg_se == pytest.approx(se)
    # the ratio against uniform HT (var_ratio) is not what the summary reports
    assert s.pred_ratio_fedavg != pytest.approx(2.0)
    assert "mean_var_ratio" not in s.to_dict()


def test_summary_error_allows_for_correlated_rounds() -> None:
    """Ratios drifting round to round (lag-1 correlation > 0) get a wider error than
    sd / sqrt(n); the mean is unchanged."""
    ratios = [1.0, 1.5, 2.0, 2.5, 3.0, 3.5]
    rows = [dataclasses.replace(ROWS[1], round=k + 1, pred_var_fedavg=r, pred_var_chosen=1.0)
            for k, r in enumerate(ratios)]
    s = summarize(rows, RunConfig(dataset="digits"), wall_seconds=1.0)
    naive = statistics.stdev(ratios) / math.sqrt(len(ratios))
    assert s.pred_ratio_fedavg == pytest.approx(2.25) and s.pred_ratio_rounds == 6
    assert s.pred_ratio_fedavg_se > 1.3 * naive


def test_summary_gives_no_ratio_from_too_few_tracked_rounds() -> None:
    cfg = RunConfig(dataset="digits")
    assert MIN_RATIO_ROUNDS == 3
    s = summarize(ROWS[:3], cfg, wall_seconds=1.0)  # rounds 1 and 2 only
    assert (s.pred_ratio_fedavg, s.pred_ratio_fedavg_se, s.pred_ratio_rounds) == (None, None, 2)
    # rounds with only the HT prediction, or only FedAvg's, are not tracked ratio rounds
    rows = [dataclasses.replace(r, pred_var_chosen=None) for r in ROWS]
    s = summarize(rows, cfg, wall_seconds=1.0)
    assert (s.pred_ratio_fedavg, s.pred_ratio_rounds) == (None, 0)
    # round 0 never counts
    rows = [dataclasses.replace(ROWS[1], round=0), *ROWS[1:3]]
    assert summarize(rows, cfg, wall_seconds=1.0).pred_ratio_rounds == 2


def test_metrics_written_before_the_band_columns_read_back(tmp_path: Path) -> None:
    """An older run directory's metrics.json / metrics.csv lack the band columns."""
    _finished_run(tmp_path, ROWS, RunConfig(dataset="digits"))
    rows = json.loads((tmp_path / "metrics.json").read_text())
    rows = [{k: v for k, v in r.items() if k not in ADDED_COLUMNS} for r in rows]
    (tmp_path / "metrics.json").write_text(json.dumps(rows))
    run = load_run(tmp_path)
    assert run.rows[1].pred_var == 2.0 and run.rows[1].pred_var_chosen is None
    (tmp_path / "metrics.json").unlink()
    csv_path = tmp_path / "metrics.csv"
    header, *lines = csv_path.read_text().splitlines()
    keep = [i for i, c in enumerate(header.split(",")) if c not in ADDED_COLUMNS]
    csv_path.write_text("\n".join(
        ",".join(line.split(",")[i] for i in keep) for line in [header, *lines]) + "\n")
    assert len(keep) < len(METRIC_COLUMNS)
    run = load_run(tmp_path)
    assert run.rows[1].pred_var == 2.0 and run.rows[1].pred_var_fedavg is None


def test_summary_written_before_the_fedavg_ratio_reads_back(tmp_path: Path) -> None:
    """An older summary.json: the retired ``mean_var_ratio``, no ``pred_ratio_*`` keys."""
    _finished_run(tmp_path, ROWS, RunConfig(dataset="digits"))
    data = json.loads((tmp_path / "summary.json").read_text())
    for key in ("pred_ratio_fedavg", "pred_ratio_fedavg_se", "pred_ratio_rounds"):
        del data[key]
    data["mean_var_ratio"] = 2.0
    (tmp_path / "summary.json").write_text(json.dumps(data))
    s = load_run(tmp_path).summary
    assert (s.pred_ratio_fedavg, s.pred_ratio_fedavg_se, s.pred_ratio_rounds) == (None, None, None)
    assert "mean_var_ratio" not in s.to_dict()
