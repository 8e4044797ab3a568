"""Helpers for the ClientApp tests: hand-built Flower Messages and Contexts on digits."""

from __future__ import annotations

import itertools
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict

DIGITS_RUN_CONFIG: dict[str, Any] = {
    "dataset": "digits",
    "partition": "dirichlet",
    "alpha": 0.5,
    "num-clients": 5,
    "shards-per-client": 2,
    "natural-key": "user",
    "seed": 3,
    "model": "mlp",
    "device": "cpu",
    "data-root": "",
}

TRAIN_CONFIG: dict[str, Any] = {
    "server-round": 1,
    "local-epochs": 1,
    "local-steps": 0,
    "lr": 0.1,
    "batch-size": 16,
    "optimizer": "sgd",
    "proximal-mu": 0.0,
    "clip-norm": 0.0,
    "seed": 7,
}

_message_ids = itertools.count(1)


def make_message(content: RecordDict, message_type: str, node_id: int = 11) -> Message:
    """An instruction message as the SuperLink would deliver it (with a message id)."""
    msg = Message(content=content, dst_node_id=node_id, message_type=message_type)
    msg.metadata.__dict__["_message_id"] = f"msg-{next(_message_ids)}"
    return msg


def make_context(
    run_config: dict[str, Any] | None = None,
    partition_id: int = 0,
    num_partitions: int | None = 5,
    node_id: int = 11,
) -> Context:
    """A node Context as Flower builds it in simulation."""
    node_config: dict[str, Any] = {"partition-id": partition_id}
    if num_partitions is not None:
        node_config["num-partitions"] = num_partitions
    return Context(
        run_id=1,
        node_id=node_id,
        node_config=node_config,
        state=RecordDict(),
        run_config=dict(DIGITS_RUN_CONFIG if run_config is None else run_config),
    )


def train_content(arrays: ArrayRecord, **overrides: Any) -> RecordDict:
    """Content of a train message: arrays + the protocol's config record."""
    return RecordDict({"arrays": arrays, "config": ConfigRecord({**TRAIN_CONFIG, **overrides})})
