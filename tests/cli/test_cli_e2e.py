"""One real end-to-end CLI run (Flower simulation on digits), then ``report`` on its run dir."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedstrat.cli.main import app

runner = CliRunner()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("e2e") / "run"
    args = ["simulate", "--dataset", "digits", "--num-clients", "10", "--clients-per-round", "3"]
    args += ["--rounds", "2", "--local-steps", "2", "--seed", "1", "--out", str(out)]
    res = runner.invoke(app, args, env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output + str(res.exception)
    assert "final accuracy" in res.stdout and str(out) in res.stdout.replace("\n", "")
    return out


def test_simulate_writes_the_run_dir(run_dir: Path) -> None:
    for name in ("config.toml", "metrics.csv", "metrics.json", "summary.json", "model.pt"):
        assert (run_dir / name).is_file(), name
    rows = json.loads((run_dir / "metrics.json").read_text())
    assert [r["round"] for r in rows if r["round"] > 0] == [1, 2]
    assert 0.0 <= rows[-1]["accuracy"] <= 1.0
    assert rows[-1]["pred_var"] is not None  # the strategy's prediction reached the run dir


def test_report_on_the_run_dir(run_dir: Path) -> None:
    res = runner.invoke(app, ["report", str(run_dir)], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert "stratified" in res.stdout
    assert (run_dir / "plots" / "accuracy.png").stat().st_size > 0


def test_resume_starts_from_the_saved_options(run_dir: Path) -> None:
    res = runner.invoke(app, ["simulate", "--resume", str(run_dir), "--rounds", "3", "--dry-run"])
    assert res.exit_code == 0, res.output
    assert 'dataset = "digits"' in res.stdout and "num-clients = 10" in res.stdout
    assert "rounds = 3" in res.stdout and f'resume = "{run_dir}"' in res.stdout
