"""``fedstrat deploy``: certificates, a real local federation, and the shipped Flower App.

Registered in :mod:`fedstrat.cli.main` as ``fedstrat deploy``. Commands:

* ``fedstrat deploy certs DIR`` - test CA, SuperLink certificate (SAN localhost/127.0.0.1 plus
  ``--host`` entries) and SuperNode authentication key pairs;
* ``fedstrat deploy local --num-supernodes N [run options]`` - start a TLS SuperLink with
  SuperNode authentication and N SuperNodes on 127.0.0.1, run the fedstrat Flower App on them
  with ``flwr run``, follow its progress, stop everything;
* ``fedstrat deploy app-dir`` - print the path of the Flower App shipped in the package (what
  ``flwr run`` needs on a real deployment, see docs/deploy.md).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import sys
from pathlib import Path
from typing import Any

import typer

from fedstrat.app.config import ConfigError, RunConfig
from fedstrat.app.stopping import clear_stop, marking_stop
from fedstrat.cli.common import (
    EXIT_INTERRUPTED,
    EXIT_TERMINATED,
    RESUME_HINT,
    Terminated,
    UsageFailure,
    check_out_dir,
    fail,
    preflight,
    sigterm_as_interrupt,
)
from fedstrat.cli.options import build_config, run_options

deploy_app = typer.Typer(
    name="deploy",
    help="Run fedstrat on Flower's Deployment Engine (SuperLink + SuperNodes, TLS, auth).",
    no_args_is_help=True,
    add_completion=False,
)


def app_dir() -> Path:
    """Directory of the Flower App shipped in the package (``pyproject.toml`` with components)."""
    from fedstrat.app.flower_local import flwr_app_dir

    path = flwr_app_dir()
    if not (path / "pyproject.toml").is_file():
        raise FileNotFoundError(f"the packaged Flower App is missing: {path}/pyproject.toml")
    return path


@deploy_app.command("app-dir")
def app_dir_cmd() -> None:
    """Print the path of the Flower App shipped inside fedstrat (for `flwr run`)."""
    try:
        typer.echo(str(app_dir()))
    except FileNotFoundError as exc:
        raise fail(str(exc), 1) from None


@deploy_app.command("certs")
def certs_cmd(
    directory: Path = typer.Argument(..., help="Folder to write the certificates and keys to."),
    num_supernodes: int = typer.Option(
        3, "--num-supernodes", "-n", help="Number of SuperNode authentication key pairs."
    ),
    host: list[str] = typer.Option(
        [],
        "--host",
        help="Extra host name or IP address of the SuperLink for the certificate's "
        "subjectAltName (repeatable). localhost and 127.0.0.1 are always included.",
    ),
    days: int = typer.Option(365, "--days", help="Validity in days."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing files."),
) -> None:
    """Generate a test CA, a SuperLink TLS certificate and SuperNode auth key pairs."""
    from fedstrat.deploy.certs import certificate_hosts, generate_certificates

    if num_supernodes < 0:
        raise fail(f"--num-supernodes must be >= 0, got {num_supernodes}")
    try:
        certs = generate_certificates(
            directory, hosts=host, num_supernodes=num_supernodes, days=days, overwrite=overwrite
        )
    except (FileExistsError, ValueError) as exc:
        raise fail(str(exc)) from None
    typer.echo(f"CA certificate        {certs.ca_cert}   (copy to every SuperNode)")
    typer.echo(f"CA key                {certs.ca_key}   (keep private)")
    typer.echo(f"SuperLink certificate {certs.server_cert}")
    typer.echo(f"SuperLink key         {certs.server_key}")
    typer.echo(f"certificate hosts     {', '.join(certificate_hosts(certs.server_cert))}")
    for priv, pub in zip(certs.supernode_private_keys, certs.supernode_public_keys, strict=True):
        typer.echo(f"SuperNode key pair    {priv}  {pub.name}")


def _base_for(num_supernodes: int) -> RunConfig:
    """Defaults for a deployment of ``num_supernodes`` nodes: ``num-clients`` = N and, unless
    set otherwise, ``clients-per-round`` = min(default, N)."""
    base = RunConfig()
    return dataclasses.replace(
        base,
        num_clients=num_supernodes,
        clients_per_round=min(base.clients_per_round, num_supernodes),
    )


def _default_out(cfg: RunConfig) -> Path:
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{stamp}-deploy-{cfg.selection}-s{cfg.seed}"


def round_line(event: dict[str, Any]) -> str:
    """The line ``deploy local`` prints for a ``progress.jsonl`` round event: the round, then
    what ``simulate``'s progress bar shows (score, loss and, from tracked evidence, the
    predicted MSE of the design used and of FedAvg with their 80% bands; no ratio), the
    training loss and failed / rejected replies. Keys the event lacks are left out; a key
    this version does not know is ignored (an event of another fedstrat version)."""
    from fedstrat.app.rundir import METRIC_COLUMNS, MetricsRow, primary_metric
    from fedstrat.cli.report import progress_text

    parts = [f"round {event.get('round')}/{event.get('rounds')}"]
    row = MetricsRow(**{"round": 0, **{k: event[k] for k in METRIC_COLUMNS if k in event}})
    ctr = row.value("auc") is not None or row.value("logloss") is not None
    parts.append(progress_text(row, *primary_metric("ctr" if ctr else "classification")))
    if row.value("train_loss") is not None:
        parts.append(f"train_loss {row.train_loss:.4g}")
    for key in ("n_failed", "n_rejected"):
        if event.get(key):
            parts.append(f"{key} {event[key]}")
    return "  ".join(parts)


def summary_lines(summary: dict[str, Any]) -> list[str]:
    """What ``deploy local`` prints of the run's ``summary.json``: its main keys as JSON and
    the predicted MSE ratio FedAvg / design used with its standard error over the tracked
    rounds, or "-" and why (too few tracked rounds, or a summary without it)."""
    from fedstrat.app.rundir import MIN_RATIO_ROUNDS
    from fedstrat.app.tables import fmt_ratio

    keys = ("metric", "final", "best", "rounds", "pred_ratio_fedavg", "pred_ratio_fedavg_se",
            "pred_ratio_rounds", "wall_seconds")
    shown = {k: summary[k] for k in keys if k in summary}
    if not shown:
        return []
    rounds = summary.get("pred_ratio_rounds")
    ratio = fmt_ratio(summary.get("pred_ratio_fedavg"), summary.get("pred_ratio_fedavg_se"),
                      rounds if isinstance(rounds, int) else None, MIN_RATIO_ROUNDS)
    return ["summary: " + json.dumps(shown),
            f"pred. MSE FedAvg/this (mean ± s.e. over tracked rounds): {ratio}"]


class _ProgressTail:
    """Print new rounds from ``<run dir>/progress.jsonl`` while the run is going."""

    def __init__(self, run_dir: Path, quiet: bool) -> None:
        self.path = run_dir / "progress.jsonl"
        # A resumed run appends to the file: show only what this run adds.
        self.seen = len(self._lines())
        self.quiet = quiet

    def _lines(self) -> list[str]:
        if not self.path.is_file():
            return []
        return self.path.read_text(encoding="utf-8", errors="replace").splitlines()

    def __call__(self, info: dict[str, Any]) -> None:
        if self.quiet:
            return
        lines = self._lines()
        for line in lines[self.seen :]:
            try:
                ev = json.loads(line)
            except json.JSONDecodeError:
                continue
            kind = ev.get("event")
            if kind == "round":
                typer.echo("  " + round_line(ev))
            elif kind == "start":
                typer.echo(f"  run started at round {ev.get('first_round')}")
            elif kind == "error":
                typer.echo(f"  ServerApp error: {ev.get('message')}", err=True)
        self.seen = len(lines)


def _local_config(
    run_opts: dict[str, Any],
    config: Path | None,
    set_values: list[str] | None,
    num_supernodes: int | None,
) -> RunConfig:
    """The run configuration of ``deploy local``, checked like ``simulate``'s
    (:func:`fedstrat.app.simulation.prepare_job`: options, run directory, resume against the
    configuration saved with the checkpoint, checkpoint readable). Writes nothing."""
    from fedstrat.app.simulation import prepare_job, resume_config

    n = num_supernodes if num_supernodes is not None else 3
    cfg = build_config(run_opts, config, set_values, base=_base_for(n))
    if cfg.resume:  # continue from the run's saved options; explicit flags on top
        base = resume_config(cfg.resume)
        n = num_supernodes if num_supernodes is not None else base.num_clients
        cfg = build_config(run_opts, config, set_values, base=base)
    cfg = dataclasses.replace(cfg, num_clients=n)
    if not cfg.out:
        cfg = dataclasses.replace(cfg, out=str(cfg.resume or _default_out(cfg)))
    return prepare_job(cfg)


@deploy_app.command("local")
@run_options(exclude=("num_clients",))
def local_cmd(
    *,
    run_opts: dict[str, Any],
    config: Path | None,
    set_values: list[str] | None,
    num_supernodes: int | None = typer.Option(
        None,
        "--num-supernodes",
        "-n",
        help="SuperNodes to start (= num-clients of the run) [default: 3, or the resumed "
        "run's num-clients].",
    ),
    tls: bool = typer.Option(True, "--tls/--insecure", help="TLS between all components."),
    auth: bool = typer.Option(
        True, "--auth/--no-auth", help="SuperNode authentication (needs --tls)."
    ),
    certs: Path | None = typer.Option(
        None, "--certs", help="Certificate folder from `fedstrat deploy certs` (default: new)."
    ),
    app: Path | None = typer.Option(
        None, "--app", help="Flower App directory (default: the one shipped in fedstrat)."
    ),
    workdir: Path | None = typer.Option(
        None, "--workdir", help="Folder for logs and FLWR_HOME dirs (default: temporary)."
    ),
    keep_workdir: bool = typer.Option(
        False, "--keep-workdir", help="Keep the temporary workdir (logs) after the run."
    ),
    timeout: float = typer.Option(3600.0, "--timeout", help="Seconds to wait for the run."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only the final summary."),
) -> None:
    """Run fedstrat on a real local federation: TLS SuperLink + N authenticated SuperNodes.

    Every process binds to 127.0.0.1 on a free port, and every process started here is stopped
    at the end, also on errors and Ctrl-C. Node i gets partition i of num-supernodes.
    """
    from fedstrat.app.flower_local import tail as log_tail
    from fedstrat.app.simulation import finished_result
    from fedstrat.deploy.local import FederationError, LocalFederation

    if num_supernodes is not None and num_supernodes < 1:
        raise fail(f"--num-supernodes must be >= 1, got {num_supernodes}")
    if auth and not tls:
        raise fail("SuperNode authentication needs TLS: use --tls or --no-auth")
    try:
        cfg = _local_config(run_opts, config, set_values, num_supernodes)
        app_path = (app or app_dir()).expanduser().resolve()
        check_out_dir(cfg.out or _default_out(cfg), allow_existing=bool(cfg.resume))
        preflight(cfg)
    except (ConfigError, FileNotFoundError) as exc:
        raise fail(str(exc)) from None
    except UsageFailure as exc:
        raise fail(str(exc)) from None
    done = finished_result(cfg)
    if done is not None:
        typer.echo(f"run {cfg.out} has already finished its {cfg.rounds} rounds; nothing to do")
        return

    stopped = f"every process it started was stopped; {RESUME_HINT}"
    clear_stop(cfg.out)  # left by a run that was stopped
    echo = (lambda _m: None) if quiet else (lambda m: typer.echo(f"[deploy] {m}", err=True))
    tail = _ProgressTail(Path(cfg.out), quiet)
    try:
        with (
            sigterm_as_interrupt(),
            LocalFederation(
                cfg.num_clients,
                tls=tls,
                auth=auth,
                certs_dir=certs,
                workdir=workdir,
                keep_workdir=keep_workdir,
                echo=echo,
            ) as fed,
        ):
            with marking_stop(cfg.out):  # before `fed` stops a process (fedstrat.app.stopping)
                result = fed.run(app_path, cfg.to_flower(), timeout=timeout, on_poll=tail)
            tail(result.info)
            if result.log_path is not None and keep_workdir:
                echo(f"ServerApp log: {result.log_path}")
            elif not result.ok and result.log_path is not None:
                typer.echo(log_tail(result.log_path, 30), err=True)
    except Terminated:
        raise fail(f"terminated (SIGTERM); {stopped}", EXIT_TERMINATED) from None
    except KeyboardInterrupt:
        raise fail(f"interrupted; {stopped}", EXIT_INTERRUPTED) from None
    except (FederationError, TimeoutError, ValueError) as exc:
        raise fail(str(exc), 1) from None
    summary_path = Path(cfg.out) / "summary.json"
    typer.echo(f"run {result.run_id}: {result.status} in {result.elapsed:.1f} s")
    typer.echo(f"run directory: {cfg.out}")
    if summary_path.is_file():
        for line in summary_lines(json.loads(summary_path.read_text(encoding="utf-8"))):
            typer.echo(line)
    if not result.ok:
        raise typer.Exit(1)


def main() -> None:  # pragma: no cover - ``python -m fedstrat.cli.deploy``
    deploy_app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
