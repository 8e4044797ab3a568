"""Shared pieces of the ``fedstrat`` commands: one-line usage errors (exit 2), consoles,
option resolution and the pre-flight check that runs before anything is written."""

from __future__ import annotations

import dataclasses
import datetime as _dt
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
    return cfg


def check_out_dir(path: str, allow_existing: bool = False) -> None:
    if not path:
        return
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise UsageFailure(f"output path {p} exists and is not a directory")
    if p.is_dir() and any(p.iterdir()) and not allow_existing:
        raise UsageFailure(f"output directory {p} already exists and is not empty")


def preflight(cfg: RunConfig) -> None:
    """Check that the dataset's files are there, the partition is possible and the model
    exists for the dataset, without writing anything. Raises :class:`UsageFailure`."""
    try:
        from fedstrat.data import load_dataset, partition_dataset
    except ImportError as exc:  # pragma: no cover - package incomplete
        raise UsageFailure(f"fedstrat.data is not available: {exc}") from exc
    try:
        ds = load_dataset(cfg.dataset, root=cfg.data_root or None, seed=cfg.seed)
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


def handle(fn: Any) -> Any:
    """Run ``fn()`` turning UsageFailure into exit 2 and runtime failures into exit 1."""
    try:
        return fn()
    except UsageFailure as exc:
        raise fail(str(exc)) from None
    except ConfigError as exc:
        raise fail(str(exc)) from None
    except KeyboardInterrupt:
        raise fail("interrupted", 130) from None
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
