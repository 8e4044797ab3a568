"""StableNodeGrid: stable ids from partition-id / exact profiles, re-addressing, reply order."""

from __future__ import annotations

import time
from collections.abc import Iterable
from types import SimpleNamespace

import pytest
from flwr.app import ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid

from fedstrat.app.grid import POLL_FIRST, POLL_GROWTH, POLL_MAX, StableNodeGrid, pull_replies
from fedstrat.strategies.discovery import NodeWaiter
from fedstrat.wire import PROFILE_KEY


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
        self.outbox: dict[str, Message] = {}
        self.pushed = 0

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
        """Sets message ids (as a real grid does); the replies are ready at once."""
        messages = list(messages)
        for m in messages:
            if not m.metadata.message_id:
                m.metadata.__dict__["_message_id"] = f"msg-{self.pushed}"
            self.pushed += 1
        for reply in self.answer(messages):
            self.outbox[reply.metadata.reply_to_message_id] = reply
        return [m.metadata.message_id for m in messages]

    def pull_messages(self, message_ids):  # noqa: ANN001, ANN201
        ids = [i for i in message_ids if i in self.outbox]
        return [self.outbox.pop(i) for i in reversed(ids)]  # arrival order != sending order

    def send_and_receive(self, messages, *, timeout=None):  # noqa: ANN001, ANN201
        raise AssertionError("StableNodeGrid pushes and pulls itself")

    def answer(self, messages: list[Message]) -> list[Message]:
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
        return replies


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


class SuperLinkAnswersForDeadNode(FakeGrid):
    """Like a real grid: sets message ids on push; a dead node is answered for by the SuperLink
    (error reply whose sender is SUPERLINK_NODE_ID = 1, as Flower 1.41 does)."""

    def __init__(self, *args, dead: int, **kwargs) -> None:  # noqa: ANN002, ANN003
        super().__init__(*args, **kwargs)
        self.dead = dead

    def answer(self, messages: list[Message]) -> list[Message]:
        from flwr.app import Error

        alive = [m for m in messages if m.metadata.dst_node_id != self.dead]
        replies = super().answer(alive)
        for m in messages:
            if m.metadata.dst_node_id == self.dead:
                err = Message(Error(code=1, reason="Node Unavailable"), reply_to=m)
                err.metadata.__dict__["_src_node_id"] = 1  # SUPERLINK_NODE_ID
                replies.append(err)
        return replies


def test_superlink_error_reply_is_blamed_on_the_node_that_was_asked() -> None:
    fake = SuperLinkAnswersForDeadNode(
        {FLOWER_IDS[0]: 0, FLOWER_IDS[1]: 1, FLOWER_IDS[2]: 2}, _hists(), dead=FLOWER_IDS[2]
    )
    fake.dead = None  # alive while being profiled
    grid = StableNodeGrid(fake)
    assert list(grid.get_node_ids()) == [1, 2, 3]
    fake.dead = FLOWER_IDS[2]  # stable id 3 dies; stable id 1 (partition 0) is alive
    msgs = [
        Message(RecordDict({"config": ConfigRecord({"x": 1})}), dst_node_id=nid,
                message_type=MessageType.TRAIN)
        for nid in (1, 3)
    ]
    replies = list(grid.send_and_receive(msgs))
    by_src = {r.metadata.src_node_id: r for r in replies}
    assert set(by_src) == {1, 3}
    assert not by_src[1].has_error()  # the live node with stable id 1 is not blamed
    assert by_src[3].has_error()  # the SuperLink's error reply is attributed to node 3


class ScheduledReplies(FakeGrid):
    """Replies that arrive at given pulls (1-based) on a fake clock: ``sleep`` advances it."""

    def __init__(self, arrivals: dict[str, int]) -> None:
        super().__init__({}, {})
        self.arrivals = arrivals
        self.pulls = 0
        self.now = 0.0
        self.sleeps: list[float] = []
        self.pull_times: list[float] = []

    def pull_messages(self, message_ids):  # noqa: ANN001, ANN201
        self.pulls += 1
        self.pull_times.append(self.now)
        due = [i for i in message_ids if self.arrivals.get(i) == self.pulls]
        return [SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=i)) for i in due]

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def pull(self, ids: list[str], timeout: float | None) -> list:  # noqa: ANN001
        return pull_replies(self, ids, timeout, sleep=self.sleep, clock=lambda: self.now)


def test_pull_pauses_grow_while_nothing_arrives_and_restart_after_a_reply() -> None:
    g = ScheduledReplies({"a": 4, "b": 9})
    got = g.pull(["a", "b"], None)
    assert [r.metadata.reply_to_message_id for r in got] == ["a", "b"]
    assert g.pulls == 9  # returns at the pull that brought the last reply
    f, k = POLL_FIRST, POLL_GROWTH
    expected = [f, f * k, f * k * k, f, f * k, f * k**2, f * k**3, f * k**4]
    assert g.sleeps == pytest.approx(expected)


def test_pull_pause_never_exceeds_its_cap() -> None:
    g = ScheduledReplies({"a": 40})
    g.pull(["a"], None)
    assert max(g.sleeps) == pytest.approx(POLL_MAX) and g.sleeps[-1] == pytest.approx(POLL_MAX)
    assert all(b >= a for a, b in zip(g.sleeps, g.sleeps[1:], strict=False))


def test_pull_stops_at_the_timeout_with_a_last_pull_at_the_deadline() -> None:
    g = ScheduledReplies({"a": 2})  # "b" never answers
    got = g.pull(["a", "b"], 0.5)
    assert [r.metadata.reply_to_message_id for r in got] == ["a"]
    assert sum(g.sleeps) == pytest.approx(0.5)  # the last pause is cut at the deadline
    assert g.pull_times[-1] == pytest.approx(0.5)  # and a last pull happened there
    late = ScheduledReplies({"a": 1})
    assert len(late.pull(["a", "b"], 0.0)) == 1  # one pull, no pause
    assert late.sleeps == []


class Registering(FakeGrid):
    """Flower's simulation registers its nodes while the ServerApp starts: each read of the
    node ids shows ``shown[k]`` of them (the last count from then on)."""

    def __init__(self, shown: list[int], n: int = 20) -> None:
        super().__init__({1000 + i: i for i in range(n)}, {1000 + i: [1.0, 1.0] for i in range(n)})
        self.shown, self.reads = shown, 0

    def get_node_ids(self) -> Iterable[int]:
        k = self.shown[min(self.reads, len(self.shown) - 1)]
        self.reads += 1
        return list(self.partitions)[:k]


class FakeClock:
    def __init__(self) -> None:
        self.t, self.sleeps = 0.0, []

    def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.t += s

    def __call__(self) -> float:
        return self.t


def test_first_node_ids_wait_for_the_node_set_to_settle() -> None:
    # a read catches 6 of 20 registered nodes, then 14, then all: the first ids are all 20
    fake, clock = Registering([6, 14, 20]), FakeClock()
    grid = StableNodeGrid(fake, sleep=clock.sleep, clock=clock)
    assert list(grid.get_node_ids()) == list(range(1, 21))
    assert clock.sleeps == [0.1, 0.1, 0.1] and fake.reads == 4  # 20 read twice: settled
    assert sorted(set(fake.sent_to)) == sorted(fake.partitions)  # every node profiled once
    assert len(fake.sent_to) == 20
    assert list(grid.get_node_ids()) == list(range(1, 21)) and len(clock.sleeps) == 3  # once


def test_settling_is_bounded_and_later_nodes_join_as_usual() -> None:
    fake, clock = Registering(list(range(1, 21))), FakeClock()  # one more node every read
    grid = StableNodeGrid(fake, settle=0.1, settle_max=0.5, sleep=clock.sleep, clock=clock)
    first = list(grid.get_node_ids())
    assert clock.t == pytest.approx(0.5) and len(first) == 6  # gave up waiting after 0.5 s
    assert len(list(grid.get_node_ids())) == 7  # a later node: no wait, profiled as it joins
    assert clock.t == pytest.approx(0.5)


def test_the_strategy_does_not_settle_a_stable_grid_a_second_time() -> None:
    # StableNodeGrid settles its first node ids itself; the strategy's node waiter, told so,
    # takes them as they are (with a 10 s settle of its own it would sleep 10 s first)
    fake, clock = Registering([6, 14, 20]), FakeClock()
    grid = StableNodeGrid(fake, sleep=clock.sleep, clock=clock)
    t0 = time.monotonic()
    ids = NodeWaiter(5, timeout=1.0, poll_interval=0.01, settle=10.0).wait(grid)
    assert sorted(ids) == list(range(1, 21)) and time.monotonic() - t0 < 5.0
    assert clock.sleeps == [0.1, 0.1, 0.1]  # the grid's own settle, once
