"""Per-round checkpoints in ``<run dir>/checkpoint/``.

Files (written in this order, each atomically; ``state.json`` last, so it always points at
complete array files)::

    arrays-r<round>.npz      global model arrays (ArrayRecord keys, in order)
    server-opt-r<round>.npz  server-optimizer moments of FedAdam/FedYogi (``m_t.<key>``,
                             ``v_t.<key>``), only for those strategies
    state.json               {"round", "array_keys", "arrays_file", "server_opt_file",
                              "strategy_state", "metrics", "elapsed", "config", "inputs"}

``inputs``: the sha256 of the run's own input files (``data``, ``schema``;
:func:`input_digests`), so that a resume can refuse files that changed since the run started
(:func:`changed_inputs`; a checkpoint without the key is not checked).

Older array files are removed after ``state.json`` has been replaced.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedstrat.app.config import ConfigError
from fedstrat.app.rundir import CHECKPOINT_DIR, write_bytes_atomic, write_json_atomic

STATE_FILE = "state.json"


@dataclass
class Checkpoint:
    """A loaded checkpoint."""

    round: int
    arrays: dict[str, np.ndarray]
    server_opt: dict[str, dict[str, np.ndarray]]
    strategy_state: dict[str, Any]
    metrics: list[dict[str, Any]]
    elapsed: float
    config: dict[str, Any]


def find_checkpoint_dir(path: str | Path) -> Path:
    """``path`` itself if it holds ``state.json``, else ``path/checkpoint``; ConfigError if
    neither has one."""
    p = Path(path).expanduser()
    for cand in (p, p / CHECKPOINT_DIR):
        if (cand / STATE_FILE).is_file():
            return cand.resolve()
    raise ConfigError(f"resume: no checkpoint found in {p} (expected {p / CHECKPOINT_DIR})")


def _state(ckpt_dir: Path) -> Any:
    """The parsed ``state.json`` of a checkpoint folder; ConfigError if unreadable."""
    try:
        return json.loads((Path(ckpt_dir) / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"resume: unreadable checkpoint in {ckpt_dir}: {exc}") from exc


def checkpoint_round(ckpt_dir: Path) -> int:
    """The round number stored in a checkpoint folder."""
    state = _state(ckpt_dir)
    try:
        return int(state["round"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"resume: unreadable checkpoint in {ckpt_dir}: {exc}") from exc


def checkpoint_config(ckpt_dir: Path) -> dict[str, Any] | None:
    """The run configuration stored in a checkpoint's ``state.json`` (``RunConfig.to_dict``
    keys), or None for a checkpoint written without one. ConfigError if unreadable."""
    state = _state(ckpt_dir)
    config = state.get("config") if isinstance(state, dict) else None
    if config is None:
        return None
    if not isinstance(config, dict):
        raise ConfigError(f"resume: the stored configuration in {ckpt_dir} is not a table")
    return config


def input_digests(cfg: Any) -> dict[str, str]:
    """``{"data": sha256, "schema": sha256}`` of the run's own input files (the options that
    name one; none for the built-in datasets). OSError if a file cannot be read."""
    out: dict[str, str] = {}
    for key in ("data", "schema"):
        path = getattr(cfg, key, "") or ""
        if path:
            digest = hashlib.sha256()
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
            out[key] = digest.hexdigest()
    return out


def changed_inputs(ckpt_dir: Path, cfg: Any) -> list[str]:
    """The input files (``"data (path)"``) whose sha256 differs from the one stored with the
    checkpoint in ``ckpt_dir`` (empty for a checkpoint that stored none). ConfigError if the
    checkpoint or a file cannot be read."""
    state = _state(ckpt_dir)
    saved = state.get("inputs") if isinstance(state, dict) else None
    try:
        now = input_digests(cfg) if saved else {}
    except OSError as exc:
        raise ConfigError(f"resume: cannot check the run's input files: {exc}") from exc
    return [f"{k} ({getattr(cfg, k, '')})" for k, v in sorted((saved or {}).items())
            if now.get(k) != v]


def _npz_bytes(arrays: Mapping[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(v) for k, v in arrays.items()})
    return buf.getvalue()


def save_checkpoint(
    run_dir: Path,
    *,
    round: int,  # noqa: A002 - the natural name
    arrays: Mapping[str, np.ndarray],
    strategy_state: Mapping[str, Any],
    metrics: Sequence[Mapping[str, Any]],
    elapsed: float,
    config: Mapping[str, Any],
    server_opt: Mapping[str, Mapping[str, np.ndarray]] | None = None,
    inputs: Mapping[str, str] | None = None,
) -> Path:
    """Write the checkpoint of ``round`` (see the module docstring); returns its folder."""
    ckpt = Path(run_dir) / CHECKPOINT_DIR
    ckpt.mkdir(parents=True, exist_ok=True)
    arrays_file = f"arrays-r{round}.npz"
    write_bytes_atomic(ckpt / arrays_file, _npz_bytes(arrays))
    opt_file = None
    if server_opt:
        flat = {
            f"{name}.{k}": v for name, moments in server_opt.items() for k, v in moments.items()
        }
        opt_file = f"server-opt-r{round}.npz"
        write_bytes_atomic(ckpt / opt_file, _npz_bytes(flat))
    write_json_atomic(
        ckpt / STATE_FILE,
        {
            "round": round,
            "array_keys": list(arrays.keys()),
            "arrays_file": arrays_file,
            "server_opt_file": opt_file,
            "server_opt_names": sorted(server_opt) if server_opt else [],
            "strategy_state": dict(strategy_state),
            "metrics": list(metrics),
            "elapsed": elapsed,
            "config": dict(config),
            "inputs": dict(inputs or {}),
        },
    )
    keep = {arrays_file, opt_file, STATE_FILE}
    for old in ckpt.glob("*.npz"):
        if old.name not in keep:
            old.unlink(missing_ok=True)
    return ckpt


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Load the checkpoint in ``path`` (a run directory or its ``checkpoint/`` folder)."""
    ckpt = find_checkpoint_dir(path)
    try:
        state = json.loads((ckpt / STATE_FILE).read_text(encoding="utf-8"))
        with np.load(ckpt / state["arrays_file"], allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in state["array_keys"]}
        server_opt: dict[str, dict[str, np.ndarray]] = {}
        if state.get("server_opt_file"):
            with np.load(ckpt / state["server_opt_file"], allow_pickle=False) as npz:
                for name in npz.files:
                    group, key = name.split(".", 1)
                    server_opt.setdefault(group, {})[key] = npz[name]
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as exc:
        reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        raise ConfigError(f"resume: unreadable checkpoint in {ckpt}: {reason}") from exc
    return Checkpoint(
        round=int(state["round"]),
        arrays=arrays,
        server_opt=server_opt,
        strategy_state=state.get("strategy_state") or {},
        metrics=state.get("metrics") or [],
        elapsed=float(state.get("elapsed") or 0.0),
        config=state.get("config") or {},
    )
