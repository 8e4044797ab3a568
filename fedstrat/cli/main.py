"""The ``fedstrat`` command."""

from __future__ import annotations

import typer

from fedstrat import __version__

app = typer.Typer(
    name="fedstrat",
    help="Federated learning with stratified client selection, built on Flower.",
    no_args_is_help=True,
    add_completion=False,
)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"fedstrat {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(
        False, "--version", callback=_version_callback, is_eager=True, help="Show the version."
    ),
) -> None:
    """Federated learning with stratified client selection, built on Flower."""


if __name__ == "__main__":  # pragma: no cover
    app()
