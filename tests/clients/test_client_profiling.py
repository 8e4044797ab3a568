"""The fedstrat-profile query handler, on the fedstrat ClientApp and on a foreign ClientApp."""

from __future__ import annotations

import numpy as np
import pytest
from clienthelpers import DIGITS_RUN_CONFIG, make_context, make_message
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.clientapp import ClientApp

from fedstrat.clients import load_client_data, make_client_app, profile_reply, register_profiling

APP = make_client_app()


def _query(epsilon: float = 0.0, seed: int = 0, node_id: int = 11) -> Message:
    content = RecordDict({"fedstrat-profile": ConfigRecord({"epsilon": epsilon, "seed": seed})})
    return make_message(content, MessageType.QUERY, node_id=node_id)


@pytest.mark.parametrize("partition_id", [0, 3])
def test_exact_profile_matches_node_data(partition_id: int) -> None:
    reply = APP(_query(), make_context(partition_id=partition_id))
    assert not reply.has_error(), reply.error
    assert set(reply.content.metric_records) == {"fedstrat-profile"}
    record = reply.content["fedstrat-profile"]
    assert set(record) == {"num-examples", "label-hist", "partition-id"}
    assert record["partition-id"] == partition_id
    data = load_client_data(DIGITS_RUN_CONFIG, {"partition-id": partition_id, "num-partitions": 5})
    hist = np.asarray(record["label-hist"])
    assert record["num-examples"] == data.num_examples
    assert hist.shape == (10,)
    assert hist.sum() == record["num-examples"]
    np.testing.assert_array_equal(hist, np.bincount(data.y.numpy(), minlength=10))


def test_privatised_profile_is_nonnegative_and_noisy() -> None:
    ctx = make_context(partition_id=1)
    exact = np.asarray(APP(_query(), ctx).content["fedstrat-profile"]["label-hist"])
    reply = APP(_query(epsilon=0.5, seed=4), ctx)
    assert not reply.has_error(), reply.error
    record = reply.content["fedstrat-profile"]
    noisy = np.asarray(record["label-hist"])
    assert noisy.shape == exact.shape
    assert np.all(noisy >= 0)
    assert not np.array_equal(noisy, exact)
    assert record["num-examples"] == exact.sum()  # the size is sent exactly
    # epsilon = inf is exact, like epsilon = 0
    inf = APP(_query(epsilon=float("inf")), ctx).content["fedstrat-profile"]["label-hist"]
    np.testing.assert_array_equal(inf, exact)
    # same (seed, node) -> same release; other node id -> independent noise
    again = APP(_query(epsilon=0.5, seed=4), ctx).content["fedstrat-profile"]["label-hist"]
    np.testing.assert_array_equal(noisy, again)
    other = APP(_query(epsilon=0.5, seed=4, node_id=12), ctx)
    assert not np.array_equal(noisy, other.content["fedstrat-profile"]["label-hist"])


def test_privatised_profile_noise_scales_with_epsilon() -> None:
    """Seeded Monte Carlo over 200 node ids: mean L1 error at eps=0.1 exceeds that at eps=10."""
    hist = np.array([50.0, 30.0, 20.0, 0.0])

    def mean_error(eps: float) -> float:
        errs = []
        for node in range(200):
            msg = _query(epsilon=eps, seed=1, node_id=node)
            out = np.asarray(
                profile_reply(msg, hist, 100).content["fedstrat-profile"]["label-hist"]
            )
            errs.append(np.abs(out - hist).sum())
        return float(np.mean(errs))

    assert mean_error(0.1) > 5 * mean_error(10.0)


def test_register_profiling_on_foreign_client_app() -> None:
    foreign = ClientApp()

    @foreign.train()
    def train(message: Message, context: Context) -> Message:  # pragma: no cover - not called
        return Message(message.content, reply_to=message)

    register_profiling(foreign, lambda ctx: ([3, 0, 2], 5))
    msg = _query()
    ctx = make_context()
    ctx.node_config.clear()  # a deployment without partition-id: no partition-id in the reply
    reply = foreign(msg, ctx)
    assert not reply.has_error(), reply.error
    assert reply.metadata.reply_to_message_id == msg.metadata.message_id
    record = reply.content["fedstrat-profile"]
    assert dict(record) == {"num-examples": 5, "label-hist": [3.0, 0.0, 2.0]}
    # the query slot is now taken
    with pytest.raises(ValueError):
        register_profiling(foreign, lambda ctx: ([1], 1))


def test_foreign_get_profile_failure_is_error_reply() -> None:
    foreign = ClientApp()

    def broken(ctx: Context) -> tuple[list[float], int]:
        raise RuntimeError("no data on this node")

    register_profiling(foreign, broken)
    reply = foreign(_query(), make_context())
    assert reply.has_error()
    assert "no data on this node" in reply.error.reason


def test_profile_reply_validation() -> None:
    with pytest.raises(ValueError, match="fedstrat-profile"):
        profile_reply(make_message(RecordDict(), MessageType.QUERY), [1.0], 1)
    with pytest.raises(ValueError, match="epsilon"):
        profile_reply(_query(epsilon=-1.0), [1.0], 1)
    with pytest.raises(ValueError, match="non-negative"):
        profile_reply(_query(), [1.0, -2.0], 1)
    with pytest.raises(ValueError, match="1-D"):
        profile_reply(_query(), [], 0)
    with pytest.raises(ValueError, match="num_examples"):
        profile_reply(_query(), [1.0], -1)
    with pytest.raises(ValueError):
        register_profiling(ClientApp(), "not callable")  # type: ignore[arg-type]


def test_query_without_profile_record_is_error_reply() -> None:
    content = RecordDict({"other": ConfigRecord({"x": 1})})
    reply = APP(make_message(content, MessageType.QUERY), make_context())
    assert reply.has_error()
    assert "fedstrat-profile" in reply.error.reason
