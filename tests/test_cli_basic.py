"""The console script answers --help and --version."""

from typer.testing import CliRunner

from fedstrat import __version__
from fedstrat.cli.main import app


def test_version() -> None:
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0
    assert __version__ in result.output


def test_help() -> None:
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "stratified" in result.output.lower()
