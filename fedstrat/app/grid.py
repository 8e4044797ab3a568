"""A Grid view with stable node ids, so that runs are reproducible and resumable.

Flower draws node ids at random when nodes register (in simulation: anew for every run). The
selection strategy draws clients by node id, and its checkpointed state (profiles, strata) is
keyed by node id, so with raw ids the same seed would pick different data partitions in two runs
and a resumed run could not reuse its state. :class:`StableNodeGrid` asks every new node once
(the profile query of docs/design.md) and gives it the id ``1 + partition-id`` when every reply
carries ``partition-id`` (optional field of the profile reply: the node's
``node_config["partition-id"]``). Otherwise, for the first nodes, the ids are ``1 + rank`` of
the replies' exact ``(num-examples, label-hist)``, which depends only on the data partition
(with ``profile-epsilon = 0``). Nodes left over (no reply, duplicate profiles, late joiners
without a partition id) keep their Flower id, with a warning: such runs are not reproducible
across restarts.

Everything above the grid (the strategy) sees only stable ids: ``get_node_ids`` returns them,
outgoing messages are re-addressed to the Flower id and replies are re-labelled with the stable
id of their sender. Replies are returned sorted by sender, so aggregation order (and hence the
floating-point result) does not depend on arrival order. The strategy's own profile query (same
epsilon and seed) is answered from the stored replies, so nodes are asked only once.

Replies are collected by this grid's own pull loop (:func:`pull_replies`): Flower's grids sleep
a fixed interval between two pulls (0.1 s in simulation, 3 s against a SuperLink), so a round
ended up to that long after its last reply; here the pause starts at :data:`POLL_FIRST`, grows
by :data:`POLL_GROWTH` while nothing arrives, resets when a reply does and never exceeds
:data:`POLL_MAX`.

The first node ids are read once the node set has stayed the same for ``SETTLE_S`` (at most
``SETTLE_MAX_S``, :func:`fedstrat.strategies.discovery.settled_ids`): Flower's simulation starts
the ServerApp before it has registered its nodes, so a first read could catch part of them, and
only the first nodes get ids from the rank of their profiles (no partition-id reported).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from fedstrat.strategies.discovery import SETTLE_MAX_S, SETTLE_S, settled_ids
from fedstrat.wire import (
    NUM_EXAMPLES,
    PROFILE_EPSILON,
    PROFILE_KEY,
    PROFILE_LABEL_HIST,
    PROFILE_PARTITION_ID,
    PROFILE_SEED,
)

log = logging.getLogger("fedstrat.app")

#: first pause between two pulls of replies (s), its growth per empty pull, and its largest
#: value (Flower's in-memory grid pauses 0.1 s, its SuperLink grid 3 s)
POLL_FIRST, POLL_GROWTH, POLL_MAX = 0.005, 1.5, 0.1


def pull_replies(
    grid: Grid,
    message_ids: Iterable[str],
    timeout: float | None,
    *,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> list[Message]:
    """Pull ``grid``'s replies to ``message_ids`` until all arrived or ``timeout`` seconds
    passed (``None``: no limit), with one last pull at the deadline. Pause ``k`` after the
    last pull that brought a reply (or the first pull) is ``min(POLL_MAX, POLL_FIRST *
    POLL_GROWTH^k)``."""
    pending = set(message_ids)
    end = None if timeout is None else clock() + timeout
    out: list[Message] = []
    pause = POLL_FIRST
    while pending:
        got = list(grid.pull_messages(pending))
        out.extend(got)
        pending.difference_update(r.metadata.reply_to_message_id for r in got)
        left = None if end is None else end - clock()
        if not pending or (left is not None and left <= 0):
            break
        if got:
            pause = POLL_FIRST
        sleep(pause if left is None else min(pause, left))
        pause = min(POLL_MAX, pause * POLL_GROWTH)
    return out


class StableNodeGrid(Grid):
    """Wrap ``grid`` so that node ids are ``1 + partition-id`` (see the module docstring).

    ``epsilon``/``seed`` fill the profile query's ConfigRecord; ``timeout`` bounds the wait for
    profile replies (seconds); ``settle``/``settle_max``: the first node set must stay unchanged
    ``settle`` seconds, waiting at most ``settle_max`` (``sleep``/``clock`` for that wait).
    ``nodes_settled``: so the strategy's node waiter does not settle them a second time.
    """

    nodes_settled = True

    def __init__(
        self, grid: Grid, *, epsilon: float = 0.0, seed: int = 0, timeout: float = 60.0,
        settle: float = SETTLE_S, settle_max: float = SETTLE_MAX_S,
        sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._grid = grid
        self._settle, self._settle_max = float(settle), float(settle_max)
        self._sleep, self._clock = sleep, clock
        self._epsilon = float(epsilon)
        self._seed = int(seed)
        self._timeout = float(timeout)
        self._to_real: dict[int, int] = {}
        self._to_stable: dict[int, int] = {}
        self.unstable: set[int] = set()
        self._profiles: dict[int, RecordDict] = {}  # Flower id -> profile reply content
        self.profiles_served = 0
        self._sent_to: dict[str, int] = {}  # instruction message id -> stable destination id

    # -------------------------------------------------------------------- id mapping
    @property
    def mapping(self) -> dict[int, int]:
        """Stable id -> Flower node id of every node seen so far."""
        return dict(self._to_real)

    def _real(self, node_id: int) -> int:
        return self._to_real.get(node_id, node_id)

    def _stable(self, node_id: int) -> int:
        return self._to_stable.get(node_id, node_id)

    def _register(self, new: list[int]) -> None:
        content = RecordDict(
            {PROFILE_KEY: ConfigRecord({PROFILE_EPSILON: self._epsilon, PROFILE_SEED: self._seed})}
        )
        msgs = [
            Message(content, nid, MessageType.QUERY, group_id="fedstrat-node-ids") for nid in new
        ]
        replies = self._exchange(msgs, self._timeout)
        for rep in replies:
            if not rep.has_error() and PROFILE_KEY in rep.content:
                self._profiles[rep.metadata.src_node_id] = rep.content
        pid_of: dict[int, int] = {}
        content_key: dict[int, tuple[float, ...]] = {}
        for rep in replies:
            if rep.has_error() or PROFILE_KEY not in rep.content:
                continue
            rec = rep.content[PROFILE_KEY]
            src = rep.metadata.src_node_id
            pid = rec.get(PROFILE_PARTITION_ID)
            if isinstance(pid, int | float) and float(pid).is_integer() and pid >= 0:
                pid_of[src] = int(pid)
            n, hist = rec.get(NUM_EXAMPLES), rec.get(PROFILE_LABEL_HIST)
            if isinstance(n, int | float) and isinstance(hist, list):
                content_key[src] = (float(n), *(float(h) for h in hist))
        stable_of: dict[int, int] = {}
        if len(pid_of) == len(new):
            stable_of = {nid: pid + 1 for nid, pid in pid_of.items()}
        elif not self._to_real and len(content_key) == len(new):
            # No partition ids reported: order the first nodes by their (exact) profile, which
            # is a function of the data partition only; ties leave the order undetermined.
            keys = sorted(content_key.values())
            if len(set(keys)) == len(keys):
                stable_of = {nid: keys.index(k) + 1 for nid, k in content_key.items()}
        for nid in sorted(new):
            stable = stable_of.get(nid)
            if stable is not None and stable not in self._to_real and stable not in self._to_stable:
                self._to_real[stable] = nid
                self._to_stable[nid] = stable
            else:
                self._to_real[nid] = nid
                self._to_stable[nid] = nid
                self.unstable.add(nid)
        if self.unstable:
            log.warning(
                "%d node(s) reported no (or a duplicate) partition-id; they keep Flower's "
                "random node ids, so this run is not reproducible across restarts",
                len(self.unstable),
            )

    def _refresh(self) -> list[int]:
        real = [int(n) for n in self._grid.get_node_ids()]
        if real and not self._to_stable:
            real = self._settled(real)
        new = [n for n in real if n not in self._to_stable]
        if new:
            self._register(new)
        return real

    def _settled(self, real: list[int]) -> list[int]:
        """The first node ids (:func:`~fedstrat.strategies.discovery.settled_ids`): the
        first ones get the profile-rank ids when no partition-id is reported."""
        return settled_ids(lambda: [int(n) for n in self._grid.get_node_ids()], real,
                           self._settle, self._settle_max, sleep=self._sleep, clock=self._clock)

    # -------------------------------------------------------------------- Grid API
    def set_run(self, run: Any) -> None:  # noqa: D102 - delegated
        self._grid.set_run(run)

    @property
    def run(self) -> Any:  # noqa: D102 - delegated
        return self._grid.run

    def get_node_ids(self) -> Iterable[int]:
        """Stable ids of the connected nodes, sorted."""
        return sorted(self._stable(n) for n in self._refresh())

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        """Like ``Grid.create_message``; ``dst_node_id`` is a stable id."""
        real = self._real(dst_node_id)
        return self._grid.create_message(content, message_type, real, group_id, ttl)

    def _readdress(self, messages: Iterable[Message]) -> list[tuple[Message, int]]:
        out = []
        for m in messages:
            original = m.metadata.dst_node_id
            m.metadata.dst_node_id = self._real(original)
            out.append((m, original))
        return out

    def _relabel(self, replies: Iterable[Message]) -> list[Message]:
        """Label each reply with the stable id of the node its instruction was sent to.

        The instruction is found through ``reply_to_message_id``: when a node is down, the
        SuperLink itself answers with an error reply whose sender is ``SUPERLINK_NODE_ID`` (1),
        which must be blamed on the node that was asked, not on whichever node has that id.
        Replies to unknown instructions fall back to their sender's stable id.
        """
        out = list(replies)
        for r in out:
            dst = self._sent_to.pop(r.metadata.reply_to_message_id, None)
            src = dst if dst is not None else self._stable(r.metadata.src_node_id)
            r.metadata.__dict__["_src_node_id"] = src
        out.sort(key=lambda r: (r.metadata.src_node_id, r.metadata.reply_to_message_id))
        return out

    def _remember(self, sent: list[tuple[Message, int]]) -> None:
        """After a push: message id (set by the grid) -> stable destination id."""
        for m, original in sent:
            if m.metadata.message_id:
                self._sent_to[m.metadata.message_id] = original

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Push messages addressed with stable ids."""
        sent = self._readdress(messages)
        try:
            return self._grid.push_messages([m for m, _ in sent])
        finally:
            self._remember(sent)
            for m, original in sent:
                m.metadata.dst_node_id = original

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        """Pull replies; their senders carry stable ids."""
        return self._relabel(self._grid.pull_messages(message_ids))

    def _cached_profiles(self, messages: list[Message]) -> list[Message] | None:
        """Replies to a profile query identical to ours, from the answers we already have."""
        if not messages:
            return None
        for m in messages:
            if m.metadata.message_type != MessageType.QUERY or not m.has_content():
                return None
            cfg = m.content.config_records.get(PROFILE_KEY)
            if cfg is None or set(m.content.keys()) != {PROFILE_KEY}:
                return None
            eps, seed = cfg.get(PROFILE_EPSILON, -1.0), cfg.get(PROFILE_SEED)
            if float(eps) != self._epsilon or seed != self._seed:
                return None
            if self._real(m.metadata.dst_node_id) not in self._profiles:
                return None
        replies = []
        for m in messages:
            content = self._profiles[self._real(m.metadata.dst_node_id)]
            replies.append(Message(content, reply_to=m))
        self.profiles_served += len(replies)
        return replies

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Send messages addressed with stable ids; replies sorted by stable sender id.

        A profile query identical to the one this grid already sent is answered from the
        stored replies (profiles are fixed per node), so nodes are profiled only once.
        """
        messages = list(messages)
        cached = self._cached_profiles(messages)
        if cached is not None:
            return sorted(cached, key=lambda r: r.metadata.src_node_id)
        sent = self._readdress(messages)
        try:
            replies = self._exchange([m for m, _ in sent], timeout)
        finally:  # the pushed messages keep Flower's ids while they may still be delivered
            self._remember(sent)
            for m, original in sent:
                m.metadata.dst_node_id = original
        return self._relabel(replies)

    def _exchange(self, messages: list[Message], timeout: float | None) -> list[Message]:
        """Push ``messages`` (Flower ids) to the wrapped grid and pull their replies."""
        ids = list(self._grid.push_messages(messages))
        return pull_replies(self._grid, ids, timeout)
