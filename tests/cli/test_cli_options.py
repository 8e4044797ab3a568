"""CLI option handling: help texts, exit code 2 with one clear message, config precedence."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedstrat.cli.main import app, cli

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

runner = CliRunner()

SIMULATE_FLAGS = (
    "--dataset",
    "--model",
    "--partition",
    "--alpha",
    "--num-clients",
    "--clients-per-round",
    "--rounds",
    "--local-epochs",
    "--lr",
    "--batch-size",
    "--selection",
    "--allocation",
    "--strategy",
    "--seed",
    "--device",
    "--out",
    "--config",
    "--local-steps",
    "--design",
    "--estimator",
    "--n-strata",
    "--dry-run",
)


def _help(*cmd: str) -> str:
    result = runner.invoke(app, [*cmd, "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    return result.output


def test_simulate_help_shows_the_default_jobs_values() -> None:
    out = runner.invoke(app, ["simulate", "--help"], env={"COLUMNS": "200"}).output
    lines = out.splitlines()
    assert any("--rounds " in ln and "[default: (30)]" in ln for ln in lines)
    assert any("--lr " in ln and "[default: (0.05)]" in ln for ln in lines)


def test_simulate_help_lists_every_option() -> None:
    text = _help("simulate")
    for flag in SIMULATE_FLAGS:
        assert flag in text, flag


def test_compare_help() -> None:
    text = _help("compare")
    for flag in ("--selections", "--seeds", "--measure-variance", "--dataset", "--alpha", "--out"):
        assert flag in text, flag
    # selection and seed are given as lists here, not as single options; no --resume
    assert "--selection " not in text and "--seed " not in text and "--resume" not in text
    assert "runs/compare-" in text


def test_measure_and_report_help() -> None:
    text = _help("measure-variance")
    for flag in ("--measure-rounds", "--samples", "--selections", "--dataset", "--partition"):
        assert flag in text, flag
    # what would do nothing here is not offered: rounds are --measure-rounds
    assert "--rounds " not in text and "--selection " not in text and "--resume" not in text
    assert "runs/variance-" in text
    assert runner.invoke(app, ["measure-variance", "--rounds", "1,10"]).exit_code == 2
    assert "RUN_DIRS" in _help("report")


def _dry(args: list[str]) -> dict:
    result = runner.invoke(app, ["simulate", "--dry-run", *args])
    assert result.exit_code == 0, result.output + result.stderr
    return tomllib.loads(result.stdout)


def _fails(args: list[str], *needles: str) -> str:
    result = runner.invoke(app, args)
    assert result.exit_code == 2, (result.exit_code, result.output)
    err = result.stderr
    for needle in needles:
        assert needle in err, err
    return err


def test_defaults_are_the_embedded_job() -> None:
    cfg = _dry([])
    assert cfg["dataset"] == "mnist5k"
    assert cfg["num-clients"] == 100 and cfg["clients-per-round"] == 10
    assert cfg["partition"] == "dirichlet" and cfg["alpha"] == 0.1
    assert cfg["selection"] == "stratified"


def test_config_file_and_override_precedence(tmp_path: Path) -> None:
    f = tmp_path / "job.toml"
    f.write_text('dataset = "digits"\nnum-clients = 20\nalpha = 0.7\nrounds = 3\n')
    cfg = _dry(["--config", str(f)])
    assert (cfg["dataset"], cfg["num-clients"], cfg["alpha"], cfg["rounds"]) == (
        "digits",
        20,
        0.7,
        3,
    )
    cfg = _dry(["--config", str(f), "--alpha", "0.3", "--set", "rounds=5"])
    assert cfg["alpha"] == 0.3  # explicit flag beats the file
    assert cfg["rounds"] == 5  # --set beats the file
    assert cfg["num-clients"] == 20  # untouched keys come from the file
    cfg = _dry(["--config", str(f), "--set", "rounds=5", "--rounds", "7"])
    assert cfg["rounds"] == 7  # explicit flag beats --set


def test_unknown_selection() -> None:
    _fails(["simulate", "--selection", "bogus"], "Error:", "unknown selection", "stratified")


def test_bad_alpha() -> None:
    _fails(["simulate", "--alpha", "-0.5"], "alpha must be > 0")
    # not a number at all: click's own usage error, also exit 2
    result = runner.invoke(app, ["simulate", "--alpha", "abc"])
    assert result.exit_code == 2


def test_missing_config_file(tmp_path: Path) -> None:
    _fails(["simulate", "--config", str(tmp_path / "nope.toml")], "config file not found")


def test_bad_toml(tmp_path: Path) -> None:
    f = tmp_path / "bad.toml"
    f.write_text("rounds = = 3\n")
    _fails(["simulate", "--config", str(f)], "not valid TOML")


def test_unknown_key_in_config(tmp_path: Path) -> None:
    f = tmp_path / "bad.toml"
    f.write_text("roundz = 3\n")
    _fails(["simulate", "--config", str(f)], "unknown option 'roundz'")


def test_missing_local_data_file(tmp_path: Path) -> None:
    out = tmp_path / "run"
    err = _fails(
        ["simulate", "--dataset", "mnist", "--data-root", str(tmp_path), "--out", str(out)],
        "train-images-idx3-ubyte",
    )
    assert len(err.strip().splitlines()) == 1  # ONE message
    assert not out.exists()  # nothing half-written


def test_bad_model_partition_device() -> None:
    _fails(["simulate", "--model", "nosuchmodel"], "unknown model")
    _fails(["simulate", "--device", "bogus-device"], "device")
    _fails(["simulate", "--partition", "natural"], "natural")


def test_existing_out_dir_is_refused(tmp_path: Path) -> None:
    (tmp_path / "x.txt").write_text("keep me")
    _fails(["simulate", "--dataset", "digits", "--out", str(tmp_path)], "already exists")
    assert (tmp_path / "x.txt").read_text() == "keep me"


def test_compare_rejects_bad_lists(tmp_path: Path) -> None:
    _fails(["compare", "--selections", "uniform,nope", "--out", str(tmp_path / "c")], "nope")
    _fails(["compare", "--seeds", "1,x", "--out", str(tmp_path / "c")], "--seeds")
    assert not (tmp_path / "c").exists()


def test_measure_rejects_bad_selection(tmp_path: Path) -> None:
    _fails(["measure-variance", "--selections", "uniform,zzz", "--out", str(tmp_path / "m")], "zzz")


@pytest.mark.parametrize("cmd", ["simulate", "compare", "measure-variance"])
def test_unknown_option_exit_2(cmd: str) -> None:
    result = runner.invoke(app, [cmd, "--no-such-option", "1"])
    assert result.exit_code == 2


@pytest.mark.parametrize(
    ("argv", "needle"),
    [(["simulate", "--roudns", "3"], "--rounds"), (["simulate", "--rounds", "abc"], "abc"),
     (["measure-variance", "--rounds", "1,10"], "--measure-rounds")],
)
def test_the_command_reports_a_usage_error_in_one_line(
    argv: list[str], needle: str, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # the installed `fedstrat` command (cli), not only the Typer app: one Error: line, exit 2
    monkeypatch.setattr("sys.argv", ["fedstrat", *argv])
    with pytest.raises(SystemExit) as done:
        cli()
    err = capsys.readouterr().err.strip().splitlines()
    assert done.value.code == 2 and len(err) == 1 and err[0].startswith("Error: ")
    assert needle in err[0]


def test_resume_without_checkpoint(tmp_path: Path) -> None:
    _fails(["simulate", "--resume", str(tmp_path)], "cannot resume", "checkpoint")


def test_deploy_sub_app_is_registered_when_present() -> None:
    import importlib.util

    text = _help()
    for cmd in ("simulate", "compare", "report", "measure-variance"):
        assert cmd in text
    if importlib.util.find_spec("fedstrat.cli.deploy") is not None:
        assert "deploy" in text


def test_boolean_options_take_a_no_form() -> None:
    assert _dry([])["size-strata"] is True and _dry([])["sparse-uplink"] is False
    assert _dry(["--no-size-strata"])["size-strata"] is False
    assert _dry(["--sparse-uplink"])["sparse-uplink"] is True
    assert _dry(["--set", "size-strata=false"])["size-strata"] is False
