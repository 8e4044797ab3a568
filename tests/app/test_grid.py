"""StableNodeGrid: stable ids from partition-id / exact profiles, re-addressing, reply order."""

from __future__ import annotations

from collections.abc import Iterable

import pytest
from flwr.app import ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid

from fedstrat.app.grid import PROFILE_KEY, StableNodeGrid


@pytest.fixture(autouse=True)
def _task_identity() -> None:
    """Outside a ServerApp, Flower needs a task identity to construct Messages."""
    from flwr.supercore.task_identity import TaskIdentity

    for attr, value in (("run_id", 1), ("task_id", 1), ("node_id", 0)):
        try:
            getattr(TaskIdentity, attr)
        except RuntimeError:
            setattr(TaskIdentity, attr, value)


class FakeGrid(Grid):
    """Nodes with random-looking Flower ids; each answers the profile query and echoes train."""

    def __init__(self, partitions: dict[int, int | None], hists: dict[int, list[float]]) -> None:
        self.partitions = partitions  # flower id -> partition id (None = not reported)
        self.hists = hists
        self.sent_to: list[int] = []

    def set_run(self, run):  # noqa: ANN001, ANN201
        pass

    @property
    def run(self):  # noqa: ANN201
        return None

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):  # noqa: ANN001, ANN201
        return Message(content, dst_node_id=dst_node_id, message_type=message_type)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.partitions)

    def push_messages(self, messages):  # noqa: ANN001, ANN201
        raise NotImplementedError

    def pull_messages(self, message_ids):  # noqa: ANN001, ANN201
        raise NotImplementedError

    def send_and_receive(self, messages, *, timeout=None):  # noqa: ANN001, ANN201
        replies = []
        for m in messages:
            dst = m.metadata.dst_node_id
            assert dst in self.partitions, f"message to unknown Flower node {dst}"
            self.sent_to.append(dst)
            if m.metadata.message_type == MessageType.QUERY:
                rec = {"num-examples": 10, "label-hist": self.hists[dst]}
                if self.partitions[dst] is not None:
                    rec["partition-id"] = self.partitions[dst]
                content = RecordDict({PROFILE_KEY: MetricRecord(rec)})
            else:
                content = RecordDict({"metrics": MetricRecord({"flower-id": dst})})
            reply = Message(content, reply_to=m)
            reply.metadata.__dict__["_src_node_id"] = dst
            replies.append(reply)
        return list(reversed(replies))  # arrival order differs from sending order


FLOWER_IDS = [9_876_543_210, 1_234_567_890_123, 55_555_555_555]


def _hists() -> dict[int, list[float]]:
    return {fid: [float(i), 10.0 - i] for i, fid in enumerate(FLOWER_IDS)}


def test_ids_are_one_plus_partition_id_and_messages_are_readdressed() -> None:
    fake = FakeGrid({FLOWER_IDS[0]: 2, FLOWER_IDS[1]: 0, FLOWER_IDS[2]: 1}, _hists())
    grid = StableNodeGrid(fake)
    assert list(grid.get_node_ids()) == [1, 2, 3]
    assert grid.mapping == {3: FLOWER_IDS[0], 1: FLOWER_IDS[1], 2: FLOWER_IDS[2]}
    msgs = [
        Message(RecordDict({"config": ConfigRecord({"x": 1})}), dst_node_id=nid,
                message_type=MessageType.TRAIN)
        for nid in (3, 1)
    ]
    replies = list(grid.send_and_receive(msgs))
    # replies are labelled with stable ids, sorted by sender, and come from the right nodes
    assert [r.metadata.src_node_id for r in replies] == [1, 3]
    assert [r.content["metrics"]["flower-id"] for r in replies] == [FLOWER_IDS[1], FLOWER_IDS[0]]
    # the caller's messages keep their stable destination
    assert [m.metadata.dst_node_id for m in msgs] == [3, 1]
    created = grid.create_message(RecordDict(), MessageType.TRAIN, 2, "g")
    assert created.metadata.dst_node_id == FLOWER_IDS[2]


def test_fallback_orders_by_exact_profile_when_no_partition_id() -> None:
    fake = FakeGrid({fid: None for fid in FLOWER_IDS}, _hists())
    grid = StableNodeGrid(fake)
    assert list(grid.get_node_ids()) == [1, 2, 3]
    # sorted by (num-examples, label-hist): hist [0,10] < [1,9] < [2,8]
    assert grid.mapping == {1: FLOWER_IDS[0], 2: FLOWER_IDS[1], 3: FLOWER_IDS[2]}
    assert not grid.unstable


def test_duplicate_profiles_keep_flower_ids_with_warning(caplog: pytest.LogCaptureFixture) -> None:
    hists = {fid: [5.0, 5.0] for fid in FLOWER_IDS}
    fake = FakeGrid({fid: None for fid in FLOWER_IDS}, hists)
    grid = StableNodeGrid(fake)
    with caplog.at_level("WARNING", logger="fedstrat.app"):
        assert sorted(grid.get_node_ids()) == sorted(FLOWER_IDS)
    assert grid.unstable == set(FLOWER_IDS)
    assert "not reproducible" in caplog.text


def test_nodes_are_profiled_once() -> None:
    fake = FakeGrid({FLOWER_IDS[0]: 0, FLOWER_IDS[1]: 1}, _hists())
    grid = StableNodeGrid(fake)
    grid.get_node_ids()
    grid.get_node_ids()
    assert len(fake.sent_to) == 2
    fake.partitions[FLOWER_IDS[2]] = 7  # a late joiner
    assert list(grid.get_node_ids()) == [1, 2, 8]
    assert len(fake.sent_to) == 3


def test_identical_profile_query_is_answered_from_cache() -> None:
    fake = FakeGrid({FLOWER_IDS[0]: 0, FLOWER_IDS[1]: 1}, _hists())
    grid = StableNodeGrid(fake, epsilon=0.0, seed=3)
    ids = list(grid.get_node_ids())
    content = RecordDict({PROFILE_KEY: ConfigRecord({"epsilon": 0.0, "seed": 3})})
    msgs = [Message(content, nid, MessageType.QUERY) for nid in reversed(ids)]
    replies = list(grid.send_and_receive(msgs))
    assert len(fake.sent_to) == 2  # nothing new was sent
    assert [r.metadata.src_node_id for r in replies] == [1, 2]
    assert replies[0].content[PROFILE_KEY]["label-hist"] == _hists()[FLOWER_IDS[0]]
    # another seed is a different query: it goes to the nodes
    other = RecordDict({PROFILE_KEY: ConfigRecord({"epsilon": 0.0, "seed": 4})})
    grid.send_and_receive([Message(other, 1, MessageType.QUERY)])
    assert fake.sent_to[-1] == FLOWER_IDS[0]
