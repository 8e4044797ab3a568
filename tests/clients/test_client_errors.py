"""Bad messages and bad node configs become error replies; the ClientApp never raises."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from clienthelpers import DIGITS_RUN_CONFIG, TRAIN_CONFIG, make_context, make_message
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, RecordDict

from fedstrat.clients import make_client_app
from fedstrat.clients.protocol import CLIENT_APP_RAISED_EXCEPTION

APP = make_client_app()


def _reply(content: RecordDict, kind: str = MessageType.TRAIN, **ctx: Any) -> Message:
    msg = make_message(content, kind)
    reply = APP(msg, make_context(**ctx))
    assert reply.metadata.reply_to_message_id == msg.metadata.message_id
    return reply


def _assert_error(reply: Message, *fragments: str) -> None:
    assert reply.has_error(), "expected an error reply"
    assert not reply.has_content()
    assert reply.error.code == CLIENT_APP_RAISED_EXCEPTION
    for fragment in fragments:
        assert fragment in reply.error.reason, (fragment, reply.error.reason)


def _cfg(**overrides: Any) -> ConfigRecord:
    return ConfigRecord({**TRAIN_CONFIG, **overrides})


@pytest.mark.parametrize("kind", [MessageType.TRAIN, MessageType.EVALUATE])
def test_missing_arrays(kind: str) -> None:
    _assert_error(_reply(RecordDict({"config": _cfg()}), kind), "no ArrayRecord 'arrays'")


def test_missing_config(initial_arrays: ArrayRecord) -> None:
    _assert_error(_reply(RecordDict({"arrays": initial_arrays})), "no ConfigRecord 'config'")


def test_bad_config_value(initial_arrays: ArrayRecord) -> None:
    content = RecordDict({"arrays": initial_arrays, "config": _cfg(optimizer="rmsprop")})
    _assert_error(_reply(content), "optimizer", "rmsprop")
    content = RecordDict({"arrays": initial_arrays, "config": _cfg(lr=-0.1)})
    _assert_error(_reply(content), "'lr' must be > 0")


@pytest.mark.parametrize("kind", [MessageType.TRAIN, MessageType.EVALUATE])
def test_arrays_with_wrong_keys(initial_arrays: ArrayRecord, kind: str) -> None:
    arrays = ArrayRecord({"w": initial_arrays["fc1.weight"]})
    content = RecordDict({"arrays": arrays, "config": _cfg()})
    _assert_error(_reply(content, kind), "do not match the model", "fc1.bias", "'w'")


def test_arrays_with_wrong_shape(initial_arrays: ArrayRecord) -> None:
    bad = {k: v.numpy() for k, v in initial_arrays.items()}
    bad["fc2.bias"] = np.zeros(7, dtype=np.float32)
    record = ArrayRecord()
    for key, value in bad.items():
        record[key] = Array(value)
    content = RecordDict({"arrays": record, "config": _cfg()})
    _assert_error(_reply(content), "fc2.bias", "(7,)", "(10,)")


def test_nan_in_arrays(initial_arrays: ArrayRecord) -> None:
    record = ArrayRecord()
    for key, value in initial_arrays.items():
        arr = value.numpy().copy()
        if key == "fc1.weight":
            arr[0, 0] = np.nan
        record[key] = Array(arr)
    for kind in (MessageType.TRAIN, MessageType.EVALUATE):
        content = RecordDict({"arrays": record, "config": _cfg()})
        _assert_error(_reply(content, kind), "fc1.weight", "NaN")


def test_diverged_training_is_error_not_nan_weights(initial_arrays: ArrayRecord) -> None:
    content = RecordDict({"arrays": initial_arrays, "config": _cfg(lr=1e30, **{"local-steps": 3})})
    _assert_error(_reply(content), "diverged")


@pytest.mark.parametrize(
    ("run_overrides", "ctx", "fragment"),
    [
        ({"dataset": "no-such-data"}, {}, "no-such-data"),
        ({"partition": "bogus"}, {}, "bogus"),
        ({"num-clients": 7}, {}, "num-partitions=5"),
        ({"model": "no-such-model"}, {}, "no-such-model"),
        ({"alpha": "high"}, {}, "'alpha' must be a number"),
        ({}, {"partition_id": 9}, "partition-id 9 out of range"),
    ],
)
def test_bad_node_setup(
    initial_arrays: ArrayRecord, run_overrides: dict[str, Any], ctx: dict[str, Any], fragment: str
) -> None:
    run_config = {**DIGITS_RUN_CONFIG, **run_overrides}
    for kind in (MessageType.TRAIN, MessageType.EVALUATE, MessageType.QUERY):
        if kind == MessageType.QUERY and "model" in run_overrides:
            continue  # profiling does not build a model
        content = RecordDict(
            {
                "arrays": initial_arrays,
                "config": _cfg(),
                "fedstrat-profile": ConfigRecord({"epsilon": 0.0, "seed": 0}),
            }
        )
        _assert_error(_reply(content, kind, run_config=run_config, **ctx), fragment)


def test_missing_partition_id(initial_arrays: ArrayRecord) -> None:
    ctx = make_context()
    ctx.node_config.pop("partition-id")
    msg = make_message(RecordDict({"arrays": initial_arrays}), MessageType.EVALUATE)
    _assert_error(APP(msg, ctx), "partition-id")


def test_node_keeps_working_after_errors(initial_arrays: ArrayRecord) -> None:
    _assert_error(_reply(RecordDict({"config": _cfg()})))
    reply = _reply(RecordDict({"arrays": initial_arrays, "config": _cfg()}))
    assert not reply.has_error(), reply.error
