"""Shared pieces of the ``fedstrat`` commands: one-line usage errors (exit 2), consoles,
option resolution and the pre-flight check that runs before anything is written."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import os
import signal
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer

from fedstrat.app.config import ConfigError, RunConfig
from fedstrat.cli.options import build_config


class UsageFailure(Exception):
    """Bad user input: reported as one line on stderr, exit code 2."""


def fail(message: str, code: int = 2) -> typer.Exit:
    typer.echo(f"Error: {message}", err=True)
    return typer.Exit(code)


def stamp() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")


def err_console() -> Any:
    from rich.console import Console

    return Console(stderr=True)


def out_console() -> Any:
    import os

    from rich.console import Console

    console = Console()
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(width=160)  # tables in logs and pipes: do not squeeze to 80
    return console


def resolve(
    run_opts: dict[str, Any],
    config: Path | None,
    set_values: list[str] | None,
    base: RunConfig | None = None,
    **fixed: Any,
) -> RunConfig:
    try:
        cfg = build_config(run_opts, config, set_values, base=base)
        if fixed:
            cfg = dataclasses.replace(cfg, **fixed).validate()
    except ConfigError as exc:
        raise UsageFailure(str(exc)) from exc
    if (cfg.data or cfg.schema) and not cfg.data_root:  # Flower's processes may run elsewhere
        paths = {k: str(Path(v).expanduser().resolve()) for k, v in
                 (("data", cfg.data), ("schema", cfg.schema)) if v}
        cfg = dataclasses.replace(cfg, **paths)
    return cfg


def check_out_dir(path: str | Path, allow_existing: bool = False) -> None:
    """Refuse an output path that is a file, a non-empty directory (unless ``allow_existing``)
    or cannot be created: its nearest existing ancestor must be a directory in which a folder
    can be made (tried with a temporary folder, removed at once). Nothing is left behind."""
    if not path:
        return
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise UsageFailure(f"output path {p} exists and is not a directory")
    if p.is_dir() and any(p.iterdir()) and not allow_existing:
        raise UsageFailure(f"output directory {p} already exists and is not empty")
    probe_in = p.absolute()
    while not probe_in.exists():
        probe_in = probe_in.parent
    if not probe_in.is_dir():
        raise UsageFailure(f"cannot create output directory {p}: {probe_in} is not a directory")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".fedstrat-probe-", dir=probe_in))
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise UsageFailure(f"cannot write output directory {p}: {reason} ({probe_in})") from None


def preflight(cfg: RunConfig) -> None:
    """Check that the dataset's files are there, the partition is possible and the model
    exists for the dataset, without writing anything. Raises :class:`UsageFailure`."""
    try:
        from fedstrat.data import load_dataset, partition_dataset
        from fedstrat.data.registry import run_options
    except ImportError as exc:  # pragma: no cover - package incomplete
        raise UsageFailure(f"fedstrat.data is not available: {exc}") from exc
    try:
        ds = load_dataset(
            cfg.dataset, root=cfg.data_root or None, seed=cfg.seed,
            data=cfg.data, schema=cfg.schema, split=cfg.split,
            **run_options(cfg.dataset, cfg.to_dict()),
        )
    except (ValueError, OSError) as exc:
        text = str(exc).strip()
        raise UsageFailure(" ".join(text.split()) if text else repr(exc)) from None
    kw: dict[str, Any] = {"alpha": cfg.alpha, "seed": cfg.seed}
    if cfg.partition == "shard":
        kw["shards_per_client"] = cfg.shards_per_client
    if cfg.partition == "natural":
        kw["key"] = cfg.natural_key
    try:
        partition_dataset(ds, cfg.partition, cfg.num_clients, **kw)
    except (ValueError, KeyError) as exc:
        raise UsageFailure(f"partition {cfg.partition!r} failed: {exc}") from exc
    if cfg.device not in ("", "auto"):
        from fedstrat.models import get_device

        try:
            get_device(cfg.device)
        except ValueError as exc:
            raise UsageFailure(str(exc)) from None
    if cfg.model:
        try:
            from fedstrat.models import build_model, list_models
        except ImportError as exc:  # pragma: no cover
            raise UsageFailure(f"fedstrat.models is not available: {exc}") from exc
        names = list(list_models())
        if cfg.model not in names:
            raise UsageFailure(f"unknown model {cfg.model!r}; choose one of: {', '.join(names)}")
        try:
            build_model(cfg.model, ds)
        except (ValueError, TypeError, RuntimeError) as exc:
            raise UsageFailure(f"model {cfg.model!r} does not fit {cfg.dataset}: {exc}") from exc


#: Exit code after Ctrl-C (SIGINT), as a shell reports it: 128 + 2.
EXIT_INTERRUPTED = 130
#: Exit code after SIGTERM (``kill``, systemd, container runtimes), as a shell reports it: 128 + 15.
EXIT_TERMINATED = 143
#: What an interrupted ``simulate`` leaves (``handle(..., hint=RESUME_HINT)``).
RESUME_HINT = "the last checkpoint is kept (continue with --resume <run dir>)"


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived: unwinds like Ctrl-C (every ``finally`` runs), exit code 143."""


def _on_sigterm(signum: int, frame: Any) -> None:
    # a second SIGTERM must not interrupt the clean-up the first one started (SIGKILL still can)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Terminated


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """While inside, SIGTERM raises :class:`Terminated` and SIGINT (Ctrl-C) raises
    KeyboardInterrupt in the main thread, so a run stops and unwinds (every ``finally``) with
    one line. Both previous handlers are put back on the way out. No-op outside the main thread.

    SIGINT: a handler a library installed earlier in the process (Flower's and Ray's graceful
    exit handlers, ``SIG_DFL``, which would kill the process without any clean-up) is replaced
    for the duration by Python's ``default_int_handler``. ``SIG_IGN`` is kept: Python starts
    with SIGINT ignored only when the parent said so (a shell's background job, ``nohup``-style
    launchers, CI runners), and such a process must not stop on a Ctrl-C typed for the
    foreground job; it still stops with one line on SIGTERM (exit 143). SIGTERM is always
    taken (a supervisor's stop request)."""
    try:
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread
        yield
        return
    previous_int = signal.getsignal(signal.SIGINT)
    take_int = previous_int is not signal.SIG_IGN
    if take_int:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        if take_int and previous_int is not None:  # None: set outside Python, cannot restore
            signal.signal(signal.SIGINT, previous_int)


def handle(fn: Any, hint: str = "") -> Any:
    """Run ``fn()`` turning UsageFailure into exit 2, runtime failures into exit 1, Ctrl-C into
    130 and SIGTERM into 143 (one ``Error:`` line each; ``hint`` ends the interrupt line).
    Signals as :func:`sigterm_as_interrupt`: Ctrl-C unwinds even when a library replaced the
    SIGINT handler earlier in the process; an inherited ``SIG_IGN`` for SIGINT is respected."""
    stopped = "every process it started was stopped" + (f"; {hint}" if hint else "")
    try:
        with sigterm_as_interrupt():
            return fn()
    except UsageFailure as exc:
        raise fail(str(exc)) from None
    except ConfigError as exc:
        raise fail(str(exc)) from None
    except Terminated:
        raise fail(f"terminated (SIGTERM); {stopped}", EXIT_TERMINATED) from None
    except KeyboardInterrupt:
        raise fail(f"interrupted; {stopped}", EXIT_INTERRUPTED) from None
    except RuntimeError as exc:
        if type(exc).__name__ == "SimulationError":  # the run started but failed: exit 1
            raise fail(str(exc), 1) from None
        raise


def split_list(values: str, what: str) -> list[str]:
    items = [v.strip() for v in values.split(",") if v.strip()]
    if not items:
        raise UsageFailure(f"{what} must be a non-empty comma-separated list")
    return items


def int_list(values: str, what: str) -> list[int]:
    out = []
    for v in split_list(values, what):
        try:
            out.append(int(v))
        except ValueError:
            raise UsageFailure(f"{what} must be integers, got {v!r}") from None
    return out
