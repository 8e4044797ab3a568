"""report / compare on run directories, without Flower: a fake runner writes run dirs in the
documented layout (docs/design.md, fedstrat.app)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from fedstrat.app.comparedir import RunOverview, compare_rows
from fedstrat.app.config import RunConfig
from fedstrat.app.rundir import (
    MetricsRow,
    load_run,
    summarize,
    write_config,
    write_metrics,
    write_summary,
)
from fedstrat.cli import main as cli_main
from fedstrat.cli.main import app
from fedstrat.cli.report import progress_text

runner = CliRunner()


def _write_run(d: Path, selection: str, seed: int, accs: list[float], pv: float) -> None:
    """A run dir as the app writes it: round 0 = initial model, then one row per round."""
    rows = [
        MetricsRow(
            round=r,
            accuracy=acc,
            loss=2.0 - acc,
            pred_var=None if r == 0 else pv,
            pred_var_uniform=None if r == 0 else 0.04,
            var_ratio=None if r == 0 else 0.04 / pv,
            pred_var_chosen=None if r == 0 else pv,
            pred_var_chosen_lo=None if r == 0 else pv / 2,
            pred_var_chosen_hi=None if r == 0 else 2 * pv,
            pred_var_fedavg=None if r == 0 else 0.04,
            pred_var_fedavg_lo=None if r == 0 else 0.03,
            pred_var_fedavg_hi=None if r == 0 else 0.05,
            seconds=0.5,
        )
        for r, acc in enumerate(accs)
    ]
    cfg = RunConfig(
        dataset="digits",
        selection=selection,
        seed=seed,
        rounds=len(accs) - 1,
        target_accuracy=0.5,
    )
    write_config(d, cfg)
    write_metrics(d, rows)
    write_summary(d, summarize(rows, cfg, wall_seconds=3.0))


def test_load_run_and_rounds_to_target(tmp_path: Path) -> None:
    _write_run(tmp_path / "a", "stratified", 0, [0.1, 0.3, 0.55, 0.6], 0.01)
    s = load_run(tmp_path / "a").summary
    assert (s.selection, s.seed, s.metric) == ("stratified", 0, "accuracy")
    assert s.final == 0.6 and s.best == 0.6
    assert s.rounds_to_target == 2  # target 0.5 from summary.json
    assert s.pred_ratio_fedavg == pytest.approx(4.0) and s.pred_ratio_rounds == 3
    assert load_run(tmp_path / "a", target=0.99).summary.rounds_to_target is None
    assert load_run(tmp_path / "a", target=0.2).summary.rounds_to_target == 1


def test_compare_rows_median_and_speedup(tmp_path: Path) -> None:
    runs = []
    # stratified reaches 0.5 at rounds 2, 2, 3; uniform at 4, 6 and never
    for seed, accs in enumerate([[0, 0.3, 0.5, 0.6], [0, 0.2, 0.6, 0.7], [0, 0.1, 0.4, 0.5]]):
        _write_run(tmp_path / f"s{seed}", "stratified", seed, accs + [0.7] * 4, 0.01)
        runs.append(RunOverview.of(load_run(tmp_path / f"s{seed}")))
    for seed, accs in enumerate(
        [[0, 0.1, 0.2, 0.3, 0.5, 0.5, 0.5, 0.5], [0, 0.1] + [0.2] * 4 + [0.5, 0.5], [0.1] * 8]
    ):
        _write_run(tmp_path / f"u{seed}", "uniform", seed, accs, 0.04)
        runs.append(RunOverview.of(load_run(tmp_path / f"u{seed}")))
    rows = {r.selection: r for r in compare_rows(runs, {"uniform": 2.0, "stratified": 0.5})}
    assert rows["stratified"].rounds_to_target_median == 2
    assert rows["uniform"].rounds_to_target_median == 6  # median of 4, 6, never
    assert rows["uniform"].reached == 2
    assert rows["stratified"].speedup_vs_uniform == pytest.approx(3.0)
    assert rows["stratified"].measured_ratio_uniform_over == pytest.approx(4.0)


def test_report_command_on_runs_and_compare_dir(tmp_path: Path) -> None:
    root = tmp_path / "cmp"
    _write_run(root / "stratified-s0", "stratified", 0, [0.1, 0.6], 0.01)
    _write_run(root / "uniform-s0", "uniform", 0, [0.1, 0.4], 0.04)
    res = runner.invoke(app, ["report", str(root)], env={"COLUMNS": "250"})
    assert res.exit_code == 0, res.output
    assert "stratified" in res.stdout and "uniform" in res.stdout
    for name in ("compare.csv", "compare.json", "table.md", "accuracy.png", "variance.png"):
        assert (root / "compare" / name).is_file(), name
    assert (root / "stratified-s0" / "plots" / "accuracy.png").is_file()
    out = tmp_path / "rep"
    res = runner.invoke(
        app, ["report", str(root / "stratified-s0"), str(root / "uniform-s0"), "--out", str(out)]
    )
    assert res.exit_code == 0, res.output
    data = json.loads((out / "compare.json").read_text())
    assert {r["selection"] for r in data["rows"]} == {"stratified", "uniform"}


def test_report_pools_seeds_only_within_one_setting(tmp_path: Path) -> None:
    # two "stratified" runs of other settings (here the learning rate and the estimator) are
    # not two seeds of one row: report prints them, writes no comparison, says why
    a, b = tmp_path / "a", tmp_path / "b"
    _write_run(a, "stratified", 0, [0.1, 0.6], 0.01)
    _write_run(b, "stratified", 1, [0.1, 0.4], 0.01)
    write_config(b, RunConfig(dataset="digits", selection="stratified", seed=1, rounds=1,
                              target_accuracy=0.5, lr=0.3, estimator="difference"))
    out = tmp_path / "rep"
    res = runner.invoke(app, ["report", str(a), str(b), "--out", str(out)],
                        env={"COLUMNS": "250"})
    assert res.exit_code == 0, res.output
    assert "no comparison written: these runs differ in estimator, lr" in res.stdout
    assert not (out / "compare.json").exists()
    write_config(b, RunConfig(dataset="digits", selection="stratified", seed=1, rounds=1,
                              target_accuracy=0.5))  # the same setting, another seed: pooled
    res = runner.invoke(app, ["report", str(a), str(b), "--out", str(out)])
    rows = json.loads((out / "compare.json").read_text())["rows"]
    assert res.exit_code == 0 and [r["n_runs"] for r in rows] == [2]


def test_report_errors(tmp_path: Path) -> None:
    res = runner.invoke(app, ["report", str(tmp_path / "missing")])
    assert res.exit_code == 2 and "not a directory" in res.stderr
    (tmp_path / "empty").mkdir()
    res = runner.invoke(app, ["report", str(tmp_path / "empty")])
    assert res.exit_code == 2 and "neither a run directory" in res.stderr


def test_compare_runs_every_selection_with_the_same_seeds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []

    def fake_run(cfg, on_round=None, quiet=True):
        calls.append((cfg.selection, cfg.seed, cfg.alpha, cfg.num_clients))
        acc = 0.6 if cfg.selection == "stratified" else 0.4
        _write_run(Path(cfg.out), cfg.selection, cfg.seed, [0.1, acc, acc + 0.1], 0.02)
        if on_round is not None:
            on_round({"event": "round", "round": 1, "accuracy": acc, "loss": 1.0})
        return SimpleNamespace(run_dir=Path(cfg.out), metrics=[], summary={})

    monkeypatch.setattr(cli_main, "simulation_runner", lambda: fake_run)
    out = tmp_path / "cmp"
    args = ["compare", "--dataset", "digits", "--num-clients", "10", "--clients-per-round", "3"]
    args += ["--alpha", "0.3", "--selections", "stratified,uniform", "--seeds", "3,4"]
    res = runner.invoke(app, [*args, "--out", str(out)], terminal_width=200)
    assert res.exit_code == 0, res.output
    assert sorted(calls) == [
        ("stratified", 3, 0.3, 10),
        ("stratified", 4, 0.3, 10),
        ("uniform", 3, 0.3, 10),
        ("uniform", 4, 0.3, 10),
    ]
    rows = json.loads((out / "compare" / "compare.json").read_text())["rows"]
    assert [r["selection"] for r in rows] == ["stratified", "uniform"]
    assert (out / "compare" / "compare.csv").is_file()
    # a second compare into the same dir is refused, --skip-existing reuses the finished runs
    res = runner.invoke(app, [*args, "--out", str(out)])
    assert res.exit_code == 2 and "already exists" in res.stderr
    calls.clear()
    res = runner.invoke(app, [*args, "--out", str(out), "--skip-existing"])
    assert res.exit_code == 0 and calls == []


def test_compare_keeps_going_when_a_run_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class SimulationError(RuntimeError):
        pass

    def fake_run(cfg, on_round=None, quiet=True):
        if cfg.selection == "uniform":
            raise SimulationError("boom (see logs)")
        _write_run(Path(cfg.out), cfg.selection, cfg.seed, [0.1, 0.6], 0.02)
        return SimpleNamespace(run_dir=Path(cfg.out), metrics=[], summary={})

    monkeypatch.setattr(cli_main, "simulation_runner", lambda: fake_run)
    out = tmp_path / "cmp"
    res = runner.invoke(
        app,
        ["compare", "--dataset", "digits", "--num-clients", "10", "--clients-per-round", "3"]
        + ["--selections", "stratified,uniform", "--seeds", "0", "--out", str(out)],
    )
    assert res.exit_code == 1
    assert "uniform-s0: boom" in res.stderr
    rows = json.loads((out / "compare" / "compare.json").read_text())["rows"]
    assert [r["selection"] for r in rows] == ["stratified"]


def test_report_ctr_run_plots_auc_only(tmp_path: Path) -> None:
    d = tmp_path / "ctr"
    rows = [MetricsRow(round=0, auc=0.5, logloss=0.7), MetricsRow(round=1, auc=0.71, logloss=0.6)]
    cfg = RunConfig(dataset="movielens-100k", rounds=1)
    write_config(d, cfg)
    write_metrics(d, rows)
    write_summary(d, summarize(rows, cfg, wall_seconds=1.0))
    res = runner.invoke(app, ["report", str(d)], env={"COLUMNS": "250"})
    assert res.exit_code == 0, res.output
    assert "0.71 auc" in res.stdout
    assert sorted(p.name for p in (d / "plots").iterdir()) == ["auc.png", "variance.png"]


def test_report_names_an_unknown_column(tmp_path: Path) -> None:
    d = tmp_path / "run"
    _write_run(d, "uniform", 0, [0.1, 0.4], 0.04)
    rows = json.loads((d / "metrics.json").read_text())
    rows[1]["eval_acc"] = rows[1].pop("accuracy")
    (d / "metrics.json").write_text(json.dumps(rows))
    res = runner.invoke(app, ["report", str(d)])
    assert res.exit_code == 2
    assert "unknown column 'eval_acc'" in res.stderr and "metrics.json row 1" in res.stderr


def test_report_prints_the_fedavg_ratio_with_its_error_or_why_not(tmp_path: Path) -> None:
    _write_run(tmp_path / "long", "stratified", 0, [0.1, 0.3, 0.55, 0.6], 0.01)
    _write_run(tmp_path / "short", "stratified", 1, [0.1, 0.3], 0.01)
    res = runner.invoke(app, ["report", str(tmp_path / "long"), "--no-plots"],
                        env={"COLUMNS": "400"})
    assert res.exit_code == 0, res.output
    assert "FedAvg/this (mean ± s.e. over tracked rounds)" in res.stdout
    assert "4 ± 0 (3 rounds)" in res.stdout
    assert "uniform/this" not in res.stdout and "inf" not in res.stdout
    res = runner.invoke(app, ["report", str(tmp_path / "short"), "--no-plots"],
                        env={"COLUMNS": "400"})
    assert res.exit_code == 0, res.output
    assert "- (1 tracked round, 3 needed)" in res.stdout
    assert not re.search(r"\d ± ", res.stdout)  # no number with an error: no ratio


def test_report_on_a_run_dir_written_before_the_fedavg_ratio(tmp_path: Path) -> None:
    """metrics without the band columns, summary.json with mean_var_ratio: readable, the
    ratio is "not recorded" (the retired ratio against uniform HT is not printed)."""
    d = tmp_path / "old"
    _write_run(d, "stratified", 0, [0.1, 0.3, 0.55, 0.6], 0.01)
    rows = json.loads((d / "metrics.json").read_text())
    rows = [{k: v for k, v in r.items() if not k.startswith(("pred_var_chosen",
             "pred_var_fedavg", "pred_var_uniform_difference"))} for r in rows]
    (d / "metrics.json").write_text(json.dumps(rows))
    summary = json.loads((d / "summary.json").read_text())
    summary = {k: v for k, v in summary.items() if not k.startswith("pred_ratio")}
    (d / "summary.json").write_text(json.dumps({**summary, "mean_var_ratio": 4.0}))
    res = runner.invoke(app, ["report", str(d)], env={"COLUMNS": "400"})
    assert res.exit_code == 0, res.output
    assert "- (not recorded)" in res.stdout
    assert (d / "plots" / "variance.png").is_file()


def test_progress_line_shows_the_predicted_mse_with_bands_and_no_ratio() -> None:
    row = MetricsRow(round=4, accuracy=0.5, loss=1.0, pred_var=0.01, pred_var_uniform=0.04,
                     var_ratio=4.0, pred_var_chosen=0.000372, pred_var_chosen_lo=0.000279,
                     pred_var_chosen_hi=0.000536, pred_var_fedavg=0.0021,
                     pred_var_fedavg_lo=0.0015, pred_var_fedavg_hi=0.0032)
    text = progress_text(row, "accuracy", "loss")
    assert "pred MSE 0.000372 [0.00028, 0.00054]  FedAvg 0.0021 [0.0015, 0.0032]" in text
    assert "ratio" not in text  # not the uncertainty-free ratio against uniform HT
    fedavg_round = MetricsRow(round=5, pred_var_chosen=0.002, pred_var_chosen_lo=0.001,
                              pred_var_chosen_hi=0.003, pred_var_fedavg=0.002,
                              pred_var_fedavg_lo=0.001, pred_var_fedavg_hi=0.003)
    assert progress_text(fedavg_round, "accuracy", "loss").endswith(
        "pred MSE FedAvg 0.002 [0.001, 0.003]")
    assert "pred" not in progress_text(MetricsRow(round=0, accuracy=0.1), "accuracy", "loss")
