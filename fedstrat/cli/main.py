"""The ``fedstrat`` command: simulate, compare, report, measure-variance (and deploy).

Every bad input (unknown option or name, bad value, unreadable config file, missing data file,
existing output directory) is reported as ONE line ``Error: ...`` on stderr with exit code 2,
before anything is written.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

import click
import typer

from fedstrat import __version__
from fedstrat.app.config import SELECTIONS, RunConfig
from fedstrat.cli.common import (
    RESUME_HINT,
    UsageFailure,
    check_out_dir,
    err_console,
    fail,
    handle,
    int_list,
    out_console,
    preflight,
    resolve,
    split_list,
    stamp,
)
from fedstrat.cli.options import run_options
from fedstrat.data.info import dataset_info
from fedstrat.measure.variance import MEASURED_SELECTIONS as MEASURED  # numpy only; no torch

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


def simulation_runner() -> Any:
    """The simulation runner (``run_simulation_job``); tests replace it with a fake."""
    try:
        from fedstrat.app.simulation import run_simulation_job
    except ImportError as exc:
        raise UsageFailure(
            f"the simulation runner fedstrat.app.simulation is missing: {exc}"
        ) from None
    return run_simulation_job


def _progress_text(record: dict[str, Any], ctr: bool) -> str:
    from fedstrat.app.rundir import primary_metric, row_from_event
    from fedstrat.cli.report import progress_text

    metric, loss = primary_metric("ctr" if ctr else "classification")
    return progress_text(row_from_event(record), metric, loss)


def _make_progress(console: Any) -> Any:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        console=console,
    )


def _run_one(cfg: RunConfig, progress: Any, label: str) -> Any:
    """Run one simulation with a progress bar over rounds; returns the RunResult."""
    run = simulation_runner()
    ctr = dataset_info(cfg.dataset).is_ctr
    task = progress.add_task(label, total=cfg.rounds, info="starting Flower ...")

    def on_round(record: dict[str, Any]) -> None:
        try:
            rnd = int(float(record.get("round", record.get("server-round", 0)) or 0))
        except (TypeError, ValueError):
            rnd = 0
        progress.update(task, completed=rnd, info=_progress_text(record, ctr))

    result = run(cfg, on_round=on_round, quiet=True)
    progress.update(task, completed=cfg.rounds)
    return result


# ---------------------------------------------------------------------------------- simulate
@app.command()
@run_options()
def simulate(
    *,
    run_opts: dict[str, Any],
    config: Path | None,
    set_values: list[str] | None,
    dry_run: bool = typer.Option(
        False,
        "--dry-run",
        help="Validate everything (options, config file, data files, model) and print the "
        "resolved configuration as TOML; run and write nothing.",
    ),
) -> None:
    """Run one federated simulation (Flower) and write a run directory.

    Without options it runs the embedded default job: MNIST-5k, 100 clients with Dirichlet(0.1)
    label skew, 10 clients a round, stratified Neyman selection around FedAvg.
    """

    def body() -> None:
        cfg = resolve(run_opts, config, set_values)
        resume = str(getattr(cfg, "resume", "") or "")
        if resume:
            # continue from the run's saved options; explicit flags (e.g. --rounds) on top
            try:
                from fedstrat.app.simulation import resume_config

                saved = resume_config(resume)
            except (ValueError, OSError) as exc:
                raise UsageFailure(f"cannot resume {resume}: {exc}") from None
            cfg = resolve(run_opts, config, set_values, base=saved)
        from fedstrat.app.rundir import default_run_dir

        check_out_dir(cfg.out or default_run_dir(cfg), allow_existing=bool(resume))
        simulation_runner()
        from fedstrat.app.simulation import finished_result, prepare_job

        # run directory, resume checks, checkpoint readable; writes nothing
        done = finished_result(prepare_job(cfg))
        preflight(cfg)
        if dry_run:
            typer.echo(config_to_toml(cfg), nl=False)
            return
        if done is not None:
            typer.echo(
                f"run {done.run_dir} has already finished its {cfg.rounds} rounds; nothing to "
                "do (pass a larger --rounds to continue it)",
                err=True,
            )
            _print_run_summary(done)
            return
        console = err_console()
        with _make_progress(console) as progress:
            result = _run_one(cfg, progress, f"{cfg.selection} seed {cfg.seed}")
        _print_run_summary(result)

    handle(body, hint=RESUME_HINT)


def config_to_toml(cfg: RunConfig) -> str:
    """The resolved configuration as a flat TOML document (keys spelled like the options)."""
    from fedstrat.app.tomlwrite import flat_toml

    return flat_toml(cfg.to_flower(), allow_nonfinite=True)


def _print_run_summary(result: Any) -> None:
    from fedstrat.cli.report import rich_summary_table

    out_console().print(rich_summary_table(_load_run(result.run_dir)))


# ---------------------------------------------------------------------------------- compare
@app.command()
@run_options(exclude=("selection", "seed", "resume"),  # --skip-existing reuses finished runs
             helps={"out": "Output directory (default runs/compare-<timestamp>)."})
def compare(
    *,
    run_opts: dict[str, Any],
    config: Path | None,
    set_values: list[str] | None,
    selections: str = typer.Option(
        "stratified,uniform,clustered1",
        "--selections",
        help="Comma-separated selections to compare: " + ", ".join(SELECTIONS) + ".",
    ),
    seeds: str = typer.Option(
        "0,1,2",
        "--seeds",
        help="Comma-separated seeds (same for every "
        "selection, so each seed's partition is shared).",
    ),
    measure: bool = typer.Option(
        False, "--measure-variance", help="Also measure the estimator variance per seed."
    ),
    measure_rounds: str = typer.Option(
        "1,10", "--measure-rounds", help="Rounds at which the variance is measured."
    ),
    samples: int = typer.Option(2000, "--samples", help="Monte Carlo samples per selection."),
    skip_existing: bool = typer.Option(
        False, "--skip-existing", help="Reuse finished run dirs in --out instead of failing."
    ),
    target: float = typer.Option(0.0, "--target", help="Target accuracy (0 = dataset default)."),
) -> None:
    """Run several selections x several seeds and write a comparison (compare/ in --out)."""

    def body() -> None:
        from fedstrat.app import comparedir
        from fedstrat.app.rundir import is_finished
        from fedstrat.cli.report import rich_compare_table
        from fedstrat.measure.output import VARIANCE_JSON, load_measured

        sels = split_list(selections, "--selections")
        bad = [s for s in sels if s not in SELECTIONS]
        if bad:
            raise UsageFailure(
                f"unknown selection {bad[0]!r}; choose from: {', '.join(SELECTIONS)}"
            )
        seed_list = int_list(seeds, "--seeds")
        m_rounds = int_list(measure_rounds, "--measure-rounds") if measure else []
        if measure and samples < 2:
            raise UsageFailure("--samples must be >= 2")
        base = resolve(run_opts, config, set_values)
        cfgs = [
            resolve(run_opts, config, set_values, selection=sel, seed=seed)
            for seed in seed_list
            for sel in sels
        ]
        root = Path(base.out or f"runs/compare-{stamp()}")
        check_out_dir(str(root), allow_existing=skip_existing)
        preflight(base)
        simulation_runner()
        console = err_console()
        if measure:
            vdir = root / comparedir.VARIANCE_DIR
            _measure_into(base, seed_list, m_rounds, samples, vdir, console)
        summaries = []
        failed: list[str] = []
        with _make_progress(console) as progress:
            for cfg in cfgs:
                run_dir = root / comparedir.run_dir_name(cfg.selection, cfg.seed)
                if skip_existing and is_finished(run_dir):
                    summaries.append(_load_run(run_dir, target))
                    continue
                if run_dir.exists():
                    import shutil

                    shutil.rmtree(run_dir)  # an unfinished run of ours: redo it
                cfg = dataclasses.replace(cfg, out=str(run_dir))
                try:
                    result = _run_one(cfg, progress, f"{cfg.selection} seed {cfg.seed}")
                except RuntimeError as exc:  # SimulationError: keep going, report at the end
                    failed.append(f"{run_dir.name}: {exc}")
                    console.print(f"[red]run {run_dir.name} failed:[/red] {exc}")
                    continue
                summaries.append(_load_run(result.run_dir, target))
        if not summaries:
            raise fail("every run failed: " + "; ".join(failed), 1)
        measured = load_measured(root / comparedir.VARIANCE_DIR / VARIANCE_JSON)
        dest = root / comparedir.COMPARE_DIR
        rows, files = comparedir.write_comparison(summaries, dest, measured)
        out = out_console()
        out.print(rich_compare_table(rows, title=f"fedstrat compare ({root})"))
        out.print(f"wrote {len(files)} files to {dest}")
        if failed:
            raise fail(f"{len(failed)} run(s) failed: " + "; ".join(failed), 1)

    handle(body, hint="finished runs are kept (rerun with --skip-existing)")


def _measure_into(
    base: RunConfig,
    seeds: list[int],
    rounds: list[int],
    samples: int,
    out_dir: Path,
    console: Any,
    selections: list[str] | None = None,
) -> Any:
    """Measured variance for each seed; all rows in one variance.json under ``out_dir``."""
    from fedstrat.measure import MEASURED_SELECTIONS, MeasureResult, measure_variance
    from fedstrat.measure.output import rich_table, write_outputs

    rows: list[dict[str, Any]] = []
    metas = []
    for seed in seeds:
        cfg = dataclasses.replace(base, seed=seed)
        with console.status(f"measuring estimator variance (seed {seed}) ..."):
            res = measure_variance(
                cfg,
                rounds,
                selections=selections or MEASURED_SELECTIONS,
                n_samples=samples,
                on_progress=lambda msg: console.log(msg),
            )
        for r in res.rows:
            r["seed"] = seed
        rows.extend(res.rows)
        metas.append(res.meta)
    meta = dict(metas[0])
    meta["seeds"] = seeds
    meta["seconds"] = sum(m["seconds"] for m in metas)
    result = MeasureResult(rows=rows, meta=meta)
    write_outputs(result, out_dir)
    out_console().print(rich_table(result))
    return result


# ---------------------------------------------------------------------------------- measure
@app.command("measure-variance")
@run_options(exclude=("rounds", "selection", "resume"),  # --measure-rounds, --selections
             helps={"out": "Output directory (default runs/variance-<timestamp>)."})
def measure_variance_cmd(
    *,
    run_opts: dict[str, Any],
    config: Path | None,
    set_values: list[str] | None,
    measure_rounds: str = typer.Option(
        "1,10",
        "--measure-rounds",
        help="Rounds at which to measure; round r uses the model after r-1 full-participation "
        "FedAvg rounds.",
    ),
    samples: int = typer.Option(2000, "--samples", help="Monte Carlo samples per selection."),
    selections: str = typer.Option(
        ",".join(MEASURED),
        "--selections",
        help="Selections to measure: "
        + ", ".join(MEASURED)
        + " (stratified-prop: same strata, proportional allocation; stratified-sketch: strata "
        "from update sketches). Opt-in: fedavg (uniform, self-normalised), difference, "
        "stratified-difference (control variates, see fedstrat.measure.controls), "
        "stratified-difference-learned (the strategy's own difference draw, replayed).",
    ),
    seeds: str = typer.Option(
        "", "--seeds", help="Comma-separated seeds to repeat the measurement (default: --seed)."
    ),
) -> None:
    """Measure E||T_hat - T||^2 of each selection from every client's real update (no Flower).

    Prints a table and writes variance.json / variance.csv / table.md / variance.png to --out.
    """

    def body() -> None:
        from fedstrat.measure.variance import SELECTABLE as MEASURABLE

        sels = split_list(selections, "--selections")
        bad = [s for s in sels if s not in MEASURABLE]
        if bad:
            raise UsageFailure(
                f"unknown selection {bad[0]!r}; choose from: {', '.join(MEASURABLE)}"
            )
        rounds = int_list(measure_rounds, "--measure-rounds")
        if min(rounds) < 1:
            raise UsageFailure("--measure-rounds must be >= 1")
        if samples < 2:
            raise UsageFailure("--samples must be >= 2")
        cfg = resolve(run_opts, config, set_values)
        out = Path(cfg.out or f"runs/variance-{stamp()}")
        check_out_dir(str(out))
        preflight(cfg)
        seed_list = int_list(seeds, "--seeds") if seeds.strip() else [cfg.seed]
        res = _measure_into(cfg, seed_list, rounds, samples, out, err_console(), sels)
        from fedstrat.measure.output import ratio_line

        out_console().print(f"{ratio_line(res)}; wrote {out}")

    handle(body)


# ---------------------------------------------------------------------------------- report
@app.command()
def report(
    run_dirs: list[Path] = typer.Argument(..., help="Run directories and/or compare directories."),
    out: Path | None = typer.Option(
        None,
        "--out",
        help="Where the comparison goes (default: <compare dir>/compare, else "
        "runs/report-<timestamp>).",
    ),
    target: float = typer.Option(0.0, "--target", help="Target accuracy (0 = run's default)."),
    plots: bool = typer.Option(True, "--plots/--no-plots", help="Re-render each run's plots/."),
) -> None:
    """Re-render tables and plots from existing run (and compare) directories."""

    def body() -> None:
        from fedstrat.app.rundir import RunDirError
        from fedstrat.cli.report import report_dirs

        default_out = Path(f"runs/report-{stamp()}")
        check_out_dir(out or default_out, allow_existing=True)
        try:
            report_dirs(
                run_dirs,
                out_console(),
                out=out,
                default_out=default_out,
                target=target,
                plots=plots,
            )
        except RunDirError as exc:
            raise UsageFailure(str(exc)) from exc

    handle(body)


def _load_run(path: Path, target: float = 0.0) -> Any:
    """:func:`fedstrat.app.rundir.load_run` (``target`` 0 = the run's own); a directory that is
    not a readable run directory is a usage error."""
    from fedstrat.app.rundir import RunDirError, load_run

    try:
        return load_run(path, target or None)
    except RunDirError as exc:
        raise UsageFailure(str(exc)) from exc


try:  # the deploy engineer's sub-app, once it exists
    from fedstrat.cli.deploy import deploy_app
except ImportError:  # pragma: no cover - not there yet
    deploy_app = None
else:  # pragma: no cover
    app.add_typer(deploy_app, name="deploy")


def cli() -> None:
    """The ``fedstrat`` command: :data:`app`, with a usage error (unknown option, a value of
    the wrong type) as one ``Error:`` line and exit code 2, like every other bad input."""
    try:
        code = app(standalone_mode=False)
    except click.ClickException as exc:
        message = " ".join(exc.format_message().split())
        if message:  # none after the help that no arguments print
            typer.echo(f"Error: {message}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        typer.echo("Aborted.", err=True)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":  # pragma: no cover
    cli()
