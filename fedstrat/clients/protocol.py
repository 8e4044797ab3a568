"""Parsing and validation of the fedstrat message protocol on the client side.

Everything here is framework glue without torch: reading the ``"config"`` ConfigRecord of a
train/evaluate message into a typed :class:`TrainConfig`, finding the ``"arrays"`` ArrayRecord,
checking that received arrays are finite, deriving per-client seeds, and turning an exception
into a Flower error reply. See "Flower message protocol" in docs/design.md.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message

from fedstrat.wire import ARRAYS_KEY, CONFIG_KEY

logger = logging.getLogger(__name__)

#: Flower's error code for "the ClientApp raised an exception"
#: (``flwr.common.constant.ErrorCode.CLIENT_APP_RAISED_EXCEPTION``; not re-exported publicly).
CLIENT_APP_RAISED_EXCEPTION = 2

OPTIMIZERS = ("sgd", "adam")


class ProtocolError(ValueError):
    """A message does not follow the fedstrat message protocol (missing/bad record or value)."""


def read_number(cfg: Mapping[str, Any], key: str, default: float, *, integer: bool) -> Any:
    value = cfg.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ProtocolError(
            f"config value {key!r} must be a number, got {type(value).__name__} {value!r}"
        )
    if not math.isfinite(float(value)):
        raise ProtocolError(f"config value {key!r} must be finite, got {value!r}")
    if integer:
        if float(value) != int(value):
            raise ProtocolError(f"config value {key!r} must be an integer, got {value!r}")
        return int(value)
    return float(value)


@dataclass(frozen=True)
class TrainConfig:
    """Local-training instructions of one round (the ``"config"`` record of a train message).

    ``local_steps > 0`` overrides ``local_epochs``; ``proximal_mu > 0`` adds the FedProx term
    ``mu/2 * ||w - w_global||^2``; ``clip_norm = 0`` disables gradient clipping.
    """

    server_round: int = 0
    local_epochs: int = 1
    local_steps: int = 0
    lr: float = 0.05
    batch_size: int = 32
    optimizer: str = "sgd"
    proximal_mu: float = 0.0
    clip_norm: float = 0.0
    seed: int = 0

    @classmethod
    def from_record(cls, cfg: Mapping[str, Any]) -> TrainConfig:
        """Parse and validate a ConfigRecord; missing keys take the defaults above."""
        d = cls()
        optimizer = cfg.get("optimizer", d.optimizer)
        if optimizer not in OPTIMIZERS:
            raise ProtocolError(
                f"config value 'optimizer' must be one of {OPTIMIZERS}, got {optimizer!r}"
            )
        out = cls(
            server_round=read_number(cfg, "server-round", d.server_round, integer=True),
            local_epochs=read_number(cfg, "local-epochs", d.local_epochs, integer=True),
            local_steps=read_number(cfg, "local-steps", d.local_steps, integer=True),
            lr=read_number(cfg, "lr", d.lr, integer=False),
            batch_size=read_number(cfg, "batch-size", d.batch_size, integer=True),
            optimizer=str(optimizer),
            proximal_mu=read_number(cfg, "proximal-mu", d.proximal_mu, integer=False),
            clip_norm=read_number(cfg, "clip-norm", d.clip_norm, integer=False),
            seed=read_number(cfg, "seed", d.seed, integer=True),
        )
        if out.local_epochs < 0 or out.local_steps < 0:
            raise ProtocolError("config values 'local-epochs' and 'local-steps' must be >= 0")
        if out.local_epochs == 0 and out.local_steps == 0:
            raise ProtocolError("one of config values 'local-epochs', 'local-steps' must be > 0")
        if not out.lr > 0:
            raise ProtocolError(f"config value 'lr' must be > 0, got {out.lr}")
        if out.batch_size < 1:
            raise ProtocolError(f"config value 'batch-size' must be >= 1, got {out.batch_size}")
        if out.proximal_mu < 0:
            raise ProtocolError(f"config value 'proximal-mu' must be >= 0, got {out.proximal_mu}")
        if out.clip_norm < 0:
            raise ProtocolError(f"config value 'clip-norm' must be >= 0, got {out.clip_norm}")
        return out


def get_config(message: Message, *, required: bool = True) -> ConfigRecord:
    """Return the ``"config"`` ConfigRecord of ``message`` (empty if absent and not required)."""
    records = message.content.config_records
    if CONFIG_KEY in records:
        return records[CONFIG_KEY]
    if required:
        raise ProtocolError(
            f"message has no ConfigRecord {CONFIG_KEY!r} (config records present: "
            f"{sorted(records)})"
        )
    return ConfigRecord()


def get_arrays(message: Message) -> ArrayRecord:
    """Return the ``"arrays"`` ArrayRecord of ``message`` after checking every array is finite."""
    records = message.content.array_records
    if ARRAYS_KEY not in records:
        raise ProtocolError(
            f"message has no ArrayRecord {ARRAYS_KEY!r} (array records present: {sorted(records)})"
        )
    record = records[ARRAYS_KEY]
    if len(record) == 0:
        raise ProtocolError(f"ArrayRecord {ARRAYS_KEY!r} is empty")
    for key, array in record.items():
        values = array.numpy()
        if np.issubdtype(values.dtype, np.inexact) and not np.all(np.isfinite(values)):
            raise ProtocolError(f"received array {key!r} contains NaN or infinite values")
    return record


def client_seed(seed: int, server_round: int, partition_id: int) -> int:
    """Deterministic 31-bit seed from (config seed, server round, partition id).

    Uses numpy's ``SeedSequence`` hashing, so distinct triples give (practically) independent
    streams and the same triple gives the same local update on every machine.
    """
    state = np.random.SeedSequence([abs(int(seed)), abs(int(server_round)), abs(int(partition_id))])
    return int(state.generate_state(1, dtype=np.uint32)[0] & 0x7FFFFFFF)


def partition_id_of(context: Context) -> int:
    """The node's ``partition-id`` from its node config, else its node id."""
    value = context.node_config.get("partition-id", context.node_id)
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ProtocolError(f"node config 'partition-id' must be an integer, got {value!r}")
    try:
        return int(value)
    except ValueError as err:
        raise ProtocolError(
            f"node config 'partition-id' must be an integer, got {value!r}"
        ) from err


def error_reply(message: Message, exc: BaseException) -> Message:
    """Build Flower's error reply to ``message`` describing ``exc`` (type and text)."""
    reason = f"{type(exc).__name__}: {exc}"
    return Message(Error(code=CLIENT_APP_RAISED_EXCEPTION, reason=reason), reply_to=message)


Handler = Callable[[Message, Context], Message]


def replies_errors(handler: Handler) -> Handler:
    """Decorate a ClientApp handler so any exception becomes an error reply, never a crash.

    The exception is logged with its traceback on the node; the server receives
    ``Message(error=Error(code=2, reason="<Type>: <text>"), reply_to=message)``.
    """

    @functools.wraps(handler)
    def wrapped(message: Message, context: Context) -> Message:
        try:
            return handler(message, context)
        except Exception as exc:  # noqa: BLE001 - every failure must become an error reply
            logger.exception("fedstrat ClientApp handler %s failed", handler.__name__)
            return error_reply(message, exc)

    return wrapped
