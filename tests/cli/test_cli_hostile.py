"""Careless and hostile input to the commands, without Flower (issue 13, items 6-9).

Every bad input is ONE ``Error:`` line on stderr, exit code 2, no traceback, nothing created;
a resume reads the configuration saved with the checkpoint; resuming a finished run starts
nothing; ``report`` touches only directories fedstrat wrote. Run directories are written
with the run-dir and checkpoint modules, as the ServerApp writes them.
"""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import time
from pathlib import Path
from typing import Any

import click
import numpy as np
import pytest
from typer.testing import CliRunner

from fedstrat.app import procs
from fedstrat.app.checkpoint import input_digests, save_checkpoint
from fedstrat.app.config import ConfigError, RunConfig
from fedstrat.app.rundir import MetricsRow, summarize, write_config, write_metrics, write_summary
from fedstrat.app.simulation import (
    ALREADY_FINISHED,
    prepare_job,
    resume_config,
    run_simulation_job,
)
from fedstrat.cli.common import EXIT_INTERRUPTED, EXIT_TERMINATED, handle
from fedstrat.cli.deploy import deploy_app
from fedstrat.cli.main import app

runner = CliRunner()
TINY = ["--dataset", "digits", "--num-clients", "4", "--clients-per-round", "2"]


def _fake_run(d: Path, done: int, rounds: int, finished: bool) -> RunConfig:
    """A run directory checkpointed at round ``done`` of ``rounds`` (with summary.json when
    ``finished``)."""
    cfg = RunConfig(dataset="digits", num_clients=4, clients_per_round=2, rounds=rounds)
    cfg = dataclasses.replace(cfg, out=str(d.resolve()))
    rows = [
        MetricsRow(round=r, accuracy=0.1 * (r + 1), loss=2.0 - 0.1 * r) for r in range(done + 1)
    ]
    write_config(d, cfg)
    write_metrics(d, rows)
    save_checkpoint(
        d,
        round=done,
        arrays={"w": np.arange(6, dtype=np.float32), "b": np.ones(2, dtype=np.float32)},
        strategy_state={},
        metrics=[r.to_dict() for r in rows],
        elapsed=1.5,
        config=cfg.to_dict(),
    )
    if finished:
        write_summary(d, summarize(rows, cfg, wall_seconds=12.25))
    return cfg


def _one_error_line(res: click.testing.Result, *needles: str) -> str:
    assert res.exit_code == 2, (res.exit_code, res.output)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), res.stderr
    assert "Traceback" not in res.output
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


# ------------------------------------------------------------------------- output path
@pytest.mark.parametrize("where", ["proc", "under-file"])
@pytest.mark.parametrize("dry", [True, False])
def test_bad_out_is_one_line_before_anything_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str, dry: bool
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("x")
    out = "/proc/fedstrat-x/run" if where == "proc" else str(tmp_path / "afile" / "run")
    args = ["simulate", *TINY, "--rounds", "1", "--out", out] + (["--dry-run"] if dry else [])
    _one_error_line(runner.invoke(app, args), "output")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]
    assert procs.child_pids() == []


def test_bad_out_for_compare_measure_report_and_deploy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("x")
    bad = str(tmp_path / "afile" / "sub")
    _one_error_line(runner.invoke(app, ["compare", *TINY, "--out", bad]), "output")
    _one_error_line(runner.invoke(app, ["measure-variance", *TINY, "--out", bad]), "output")
    run = tmp_path / "run"
    _fake_run(run, 1, 1, finished=True)
    _one_error_line(runner.invoke(app, ["report", str(run), str(run), "--out", bad]), "output")
    t0 = time.monotonic()
    res = runner.invoke(deploy_app, ["local", "-n", "2", "--dataset", "digits", "--out", bad])
    _one_error_line(res, "output")
    assert time.monotonic() - t0 < 30  # rejected before any federation process started
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "run"]


def test_the_default_out_is_checked_before_anything_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # no --out: the run directory goes under ./runs, which here cannot be made (a file)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").write_text("x")
    _one_error_line(runner.invoke(app, ["simulate", *TINY, "--rounds", "1"]), "output", "runs")
    t0 = time.monotonic()
    res = runner.invoke(deploy_app, ["local", "-n", "2", "--dataset", "digits"])
    _one_error_line(res, "output", "runs")
    assert time.monotonic() - t0 < 30 and procs.child_pids() == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]


# ------------------------------------------------------------------------- values, limits
@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (["--lr", "inf"], "lr"),
        (["--proximal-mu", "nan"], "proximal-mu"),
        (["--n-strata", "3"], "n-strata"),
        (["--poc-d", "1"], "poc-d"),
    ],
)
def test_deploy_local_and_dry_run_reject_values_before_starting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, flags: list[str], needle: str
) -> None:
    monkeypatch.chdir(tmp_path)
    res = runner.invoke(app, ["simulate", *TINY, *flags, "--dry-run"])
    _one_error_line(res, needle)
    t0 = time.monotonic()
    res = runner.invoke(deploy_app, ["local", "-n", "4", "--clients-per-round", "2", *flags])
    _one_error_line(res, needle)
    assert time.monotonic() - t0 < 30
    assert list(tmp_path.iterdir()) == []
    assert procs.child_pids() == []


# ------------------------------------------------------------------------- checkpoint
def test_truncated_checkpoint_is_found_before_flower_starts(tmp_path: Path) -> None:
    run = tmp_path / "run"
    _fake_run(run, 1, 3, finished=False)
    npz = next((run / "checkpoint").glob("arrays-r*.npz"))
    npz.write_bytes(npz.read_bytes()[: npz.stat().st_size // 2])
    before = _tree(run)
    for extra in (["--dry-run"], []):
        res = runner.invoke(app, ["simulate", "--resume", str(run), *extra])
        _one_error_line(res, "unreadable checkpoint", "BadZipFile")
    res = runner.invoke(deploy_app, ["local", "--resume", str(run)])
    _one_error_line(res, "unreadable checkpoint")
    with pytest.raises(ConfigError, match="unreadable checkpoint"):
        run_simulation_job(resume_config(run))
    assert _tree(run) == before
    assert procs.child_pids() == []


def test_resume_uses_the_configuration_saved_with_the_checkpoint(tmp_path: Path) -> None:
    run = tmp_path / "run"
    cfg = _fake_run(run, 1, 3, finished=False)
    assert resume_config(run) == dataclasses.replace(cfg, resume=str(run.resolve()))
    # the editable config.toml is changed: 4 -> 6 clients, and a new seed
    text = (run / "config.toml").read_text()
    assert re.search("(?m)^num-clients = 4$", text) and re.search("(?m)^seed = 0$", text)
    edited = re.sub(
        "(?m)^seed = 0$", "seed = 5", text.replace("num-clients = 4", "num-clients = 6")
    )
    (run / "config.toml").write_text(edited)
    before = _tree(run)
    with pytest.raises(ConfigError, match=r"config.toml differs .*: num-clients, seed"):
        resume_config(run)
    with pytest.raises(ConfigError, match="num-clients, seed"):
        prepare_job(dataclasses.replace(cfg, resume=str(run)))
    res = runner.invoke(app, ["simulate", "--resume", str(run), "--dry-run"])
    _one_error_line(res, "config.toml differs", "num-clients, seed")
    res = runner.invoke(deploy_app, ["local", "--resume", str(run)])
    _one_error_line(res, "config.toml differs", "num-clients")
    assert _tree(run) == before
    # a change of a resumable option (rounds) in config.toml is fine; the checkpoint's value wins
    (run / "config.toml").write_text(text.replace("rounds = 3", "rounds = 9"))
    assert resume_config(run).rounds == 3


def test_resume_refuses_a_data_file_that_changed_since_the_run_started(tmp_path: Path) -> None:
    # the checkpoint keeps the sha256 of the run's own files; config.toml only their paths
    data, schema = tmp_path / "clicks.csv", tmp_path / "clicks.toml"
    data.write_text("user,item,click\n1,2,0\n1,3,1\n")
    schema.write_text('[label]\ncolumn = "click"\n[fields]\ncategorical = ["item"]\n')
    run = tmp_path / "run"
    cfg = dataclasses.replace(_fake_run(run, 1, 3, finished=False), dataset="table",
                              data=str(data), schema=str(schema)).validate()
    save_checkpoint(run, round=1, arrays={"w": np.arange(6, dtype=np.float32)},
                    strategy_state={}, metrics=[], elapsed=1.5, config=cfg.to_dict(),
                    inputs=input_digests(cfg))
    write_config(run, cfg)
    resumed = dataclasses.replace(cfg, resume=str(run), out="")
    assert prepare_job(resumed).resume == str(run.resolve())  # unchanged: resumes
    data.write_text("user,item,click\n1,2,1\n1,3,1\n")  # one label edited
    with pytest.raises(ConfigError, match=r"data \(.*clicks.csv\) changed since the run"):
        prepare_job(resumed)
    data.unlink()
    with pytest.raises(ConfigError, match="cannot check the run's input files"):
        prepare_job(resumed)


def test_resume_flags_that_change_the_model_are_refused(tmp_path: Path) -> None:
    run = tmp_path / "run"
    _fake_run(run, 1, 3, finished=False)
    res = runner.invoke(app, ["simulate", "--resume", str(run), "--lr", "0.5", "--dry-run"])
    _one_error_line(res, "differ from the saved run", "lr", "leave them out")
    res = runner.invoke(deploy_app, ["local", "--resume", str(run), "-n", "3"])
    _one_error_line(res, "num-clients")
    res = runner.invoke(app, ["simulate", "--resume", str(run), "--rounds", "5", "--dry-run"])
    assert res.exit_code == 0, res.output
    assert "rounds = 5" in res.stdout and "num-clients = 4" in res.stdout


def test_resuming_a_finished_run_starts_nothing(tmp_path: Path) -> None:
    run = tmp_path / "run"
    _fake_run(run, 2, 2, finished=True)
    before = _tree(run)
    res = runner.invoke(app, ["simulate", "--resume", str(run)], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert "already finished" in res.stderr and "nothing to do" in res.stderr
    assert "final accuracy" in res.stdout
    res = runner.invoke(deploy_app, ["local", "--resume", str(run)])
    assert res.exit_code == 0, res.output
    assert "already finished" in res.output
    result = run_simulation_job(resume_config(run))
    assert result.ok and result.details == ALREADY_FINISHED and result.summary["rounds"] == 2
    assert _tree(run) == before  # summary.json (its seconds) untouched, no logs/ folder
    assert procs.child_pids() == []


# ------------------------------------------------------------------------- report
def test_report_only_on_directories_fedstrat_wrote(tmp_path: Path) -> None:
    run = tmp_path / "run"
    cfg = _fake_run(run, 2, 2, finished=True)
    # a folder with a valid metrics table and config, but no summary or progress file
    other = tmp_path / "mine"
    other.mkdir()
    write_config(other, cfg)
    write_metrics(other, [MetricsRow(round=0, accuracy=0.1, loss=2.0)])
    before = _tree(other)
    _one_error_line(runner.invoke(app, ["report", str(other)]), "not a fedstrat run directory")
    # the same inside a would-be compare directory
    holder = tmp_path / "holder"
    holder.mkdir()
    (other).rename(holder / "x-s0")
    _one_error_line(runner.invoke(app, ["report", str(holder)]), "not a fedstrat run directory")
    assert _tree(holder / "x-s0") == before  # no plots written
    res = runner.invoke(app, ["report", str(run)], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert (run / "plots" / "accuracy.png").is_file()


# ------------------------------------------------------------------------- signals
@pytest.mark.parametrize(
    ("sig", "code", "word"),
    [(signal.SIGTERM, EXIT_TERMINATED, "terminated (SIGTERM)"), (signal.SIGINT, 130, "interr")],
)
def test_sigterm_and_sigint_unwind_with_one_line(
    sig: int, code: int, word: str, capsys: pytest.CaptureFixture[str], sigint: Any
) -> None:
    sigint(signal.default_int_handler)  # a foreground process, even when pytest runs with `&`
    cleaned: list[bool] = []
    before = signal.getsignal(signal.SIGTERM)

    def body() -> None:
        try:
            os.kill(os.getpid(), sig)
            time.sleep(10)
        finally:
            cleaned.append(True)

    with pytest.raises(click.exceptions.Exit) as info:
        handle(body, hint="resume hint")
    assert info.value.exit_code == code
    assert EXIT_INTERRUPTED == 130 and EXIT_TERMINATED == 143
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"Error: {word}") and "resume hint" in err[0]
    assert cleaned == [True]  # every finally ran
    assert signal.getsignal(signal.SIGTERM) == before


@pytest.fixture
def sigint() -> Any:
    """Set this process's SIGINT handler for one test; the one pytest started with comes back
    afterwards (a background ``pytest ... &`` inherits SIG_IGN from its shell)."""
    start = signal.getsignal(signal.SIGINT)
    yield lambda handler: signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGINT, start)


def _interrupted_body(cleaned: list[bool], seconds: float) -> Any:
    def body() -> str:
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(seconds)
            return "finished"
        finally:
            cleaned.append(True)

    return body


def test_ctrl_c_unwinds_after_a_library_replaced_the_sigint_handler(
    capsys: pytest.CaptureFixture[str], sigint: Any
) -> None:
    # what Flower's / Ray's graceful-exit handlers do: note the signal, do not raise
    seen: list[int] = []

    def library_handler(signum: int, frame: Any) -> None:
        seen.append(signum)

    sigint(library_handler)
    cleaned: list[bool] = []
    with pytest.raises(click.exceptions.Exit) as info:
        handle(_interrupted_body(cleaned, 10.0), hint="resume hint")
    assert info.value.exit_code == EXIT_INTERRUPTED
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("Error: interrupted") and "resume hint" in err[0]
    assert cleaned == [True] and seen == []  # the run unwound; the library never saw it
    assert signal.getsignal(signal.SIGINT) is library_handler  # put back afterwards


def test_an_inherited_ignored_sigint_is_respected_and_sigterm_still_stops(
    capsys: pytest.CaptureFixture[str], sigint: Any
) -> None:
    sigint(signal.SIG_IGN)  # as a shell's background job starts
    cleaned: list[bool] = []
    assert handle(_interrupted_body(cleaned, 0.2)) == "finished"  # Ctrl-C was not for us
    assert cleaned == [True] and signal.getsignal(signal.SIGINT) is signal.SIG_IGN

    def terminated() -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(10)

    with pytest.raises(click.exceptions.Exit) as info:
        handle(terminated)
    assert info.value.exit_code == EXIT_TERMINATED
    assert capsys.readouterr().err.strip().startswith("Error: terminated (SIGTERM)")
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
