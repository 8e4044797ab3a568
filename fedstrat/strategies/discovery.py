"""Node discovery: wait for enough connected nodes, profile the new ones."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from logging import INFO, WARNING

from flwr.serverapp import Grid

from .node_registry import NodeRegistry
from .profiling import make_profile_messages, parse_profile_reply
from .reply_validation import error_reason

log = logging.getLogger("flwr").log

#: what Flower's ClientApp answers to a message type it has no handler for
NO_HANDLER = "No query function registered"
#: a run's first population: node ids unchanged for SETTLE_S seconds, re-read for at most
#: SETTLE_MAX_S (Flower's simulation starts the ServerApp before it registers its nodes)
SETTLE_S, SETTLE_MAX_S = 0.1, 5.0


def settled_ids(
    read: Callable[[], list[int]],
    ids: list[int],
    settle: float = SETTLE_S,
    settle_max: float = SETTLE_MAX_S,
    *,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> list[int]:
    """``ids`` (a read of ``read()``) once two reads ``settle`` s apart agree, re-reading for
    at most ``settle_max`` s (then the last read): a run's first population, which Flower's
    simulation may still be registering (one run's first read saw 6 of 20 nodes)."""
    end = clock() + settle_max
    while settle > 0 and clock() < end:
        sleep(settle)
        again = read()
        if set(again) == set(ids):
            break
        ids = again
    return ids


def wait_for_nodes(grid: Grid, want: int, timeout: float, poll_interval: float) -> list[int]:
    """Connected node ids, waiting up to ``timeout`` s for ``want`` of them.

    Returns the available nodes at the deadline (WARNING if fewer than wanted); raises
    RuntimeError if none is connected.
    """
    return NodeWaiter(want, timeout, poll_interval).wait(grid)


@dataclass
class NodeWaiter:
    """Wait for ``want`` connected nodes once; after a short wait, use what is connected.

    The first call waits up to ``timeout`` s (one INFO line when it starts waiting). If fewer
    than ``want`` nodes are connected at the deadline it says so once (WARNING) and remembers
    that count: later calls with no more nodes than that return at once; only when more nodes
    connect (but still fewer than ``want``) does it wait again. The first population is taken
    once it stops changing (:func:`settled_ids`, ``settle`` s apart), unless the grid says its
    first answer needs no settling (an attribute ``nodes_settled = True``: all its nodes are
    there from the start, :class:`~fedstrat.strategies.local_grid.LocalGrid` built with a list
    of ids, or it settles them itself, :class:`fedstrat.app.grid.StableNodeGrid`).
    """

    want: int
    timeout: float
    poll_interval: float
    settled: int | None = None  # node count accepted after a short wait
    settle: float = SETTLE_S
    _first: bool = field(default=True, init=False, repr=False)
    _raw: list[int] | None = field(default=None, init=False, repr=False)
    _sorted: tuple[int, ...] = field(default=(), init=False, repr=False)
    #: bumped whenever :meth:`available` may answer other nodes than the time before (a key
    #: for callers' per-population caches, cheaper than comparing N ids again)
    revision: int = field(default=0, init=False)

    def available(self, grid: Grid) -> tuple[int, ...]:
        """:meth:`wait`'s node ids as sorted ints; the sort is reused while the grid reports
        the same ids in the same order (O(N log N) once, not every round). One tuple while
        :attr:`revision` is unchanged: immutable, so it is shared, and the garbage collector
        untracks a tuple of ints (a fresh N-item list each round would be traversed by every
        young-generation collection of the round: ~3-5 ms each at 100,000 nodes)."""
        ids = self.wait(grid)
        if ids != self._raw:
            self._raw = ids  # wait() returns a new list
            self._sorted = tuple(sorted(int(n) for n in ids))
            self.revision += 1
        return self._sorted

    def wait(self, grid: Grid) -> list[int]:
        """Connected node ids (see the class docstring); RuntimeError if none."""
        ids = self._connected(grid)
        if self._first:
            self._first = False
            if not getattr(grid, "nodes_settled", False):
                ids = settled_ids(lambda: list(grid.get_node_ids()), ids, self.settle)
        return ids

    def _connected(self, grid: Grid) -> list[int]:
        ids = list(grid.get_node_ids())
        if len(ids) >= self.want or (
            ids and self.settled is not None and len(ids) <= self.settled
        ):
            return ids
        deadline = time.monotonic() + self.timeout
        log(INFO, "Waiting up to %.0fs for %d nodes (%d connected)", self.timeout, self.want,
            len(ids))
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            time.sleep(min(self.poll_interval, remaining))
            ids = list(grid.get_node_ids())
            if len(ids) >= self.want:
                return ids
        if not ids:
            raise RuntimeError(
                f"No node connected after waiting {self.timeout:.1f}s "
                "(node_wait_timeout); start SuperNodes or raise the timeout."
            )
        log(
            WARNING,
            "Only %d nodes connected after %.1fs (wanted %d): using all of them from now on, "
            "without waiting again unless more nodes connect",
            len(ids),
            self.timeout,
            self.want,
        )
        self.settled = len(ids)
        return ids


def profile_nodes(
    registry: NodeRegistry,
    grid: Grid,
    node_ids: list[int],
    *,
    server_round: int,
    epsilon: float,
    seed: int,
    timeout: float,
) -> None:
    """Send the profile ``QUERY`` to ``node_ids``; record sizes and label histograms.

    Nodes that answer with an error, an unusable reply or not at all are marked failed
    (logged); they are never queried again.
    """
    msgs = make_profile_messages(node_ids, epsilon, seed, group_id=f"profile-{server_round}")
    replies = list(grid.send_and_receive(msgs, timeout=timeout))
    answered: set[int] = set()
    failed: dict[str, int] = {}
    asked = set(node_ids)  # a set: O(1) membership (a list made this O(N^2) at 100k nodes)
    for reply in replies:
        node = int(reply.metadata.src_node_id)
        if node not in asked or node in answered:
            continue
        answered.add(node)
        parsed = parse_profile_reply(reply)
        if isinstance(parsed, str):  # one line; nodes with the same cause counted together
            why = NO_HANDLER if NO_HANDLER in parsed else error_reason(parsed)
            registry.set_profile_failed(node, why)
            failed[why] = failed.get(why, 0) + 1
        else:
            registry.set_profile(node, *parsed)
    for node in node_ids:
        if node not in answered:
            registry.set_profile_failed(node, "no profile reply")
            failed["no profile reply"] = failed.get("no profile reply", 0) + 1
    n_failed = sum(failed.values())
    log(
        INFO,
        "Profiled %d new nodes: %d ok, %d failed",
        len(node_ids),
        len(node_ids) - n_failed,
        n_failed,
    )
    for reason, count in failed.items():
        if NO_HANDLER in reason:
            log(INFO, "%d nodes have no profiling handler (register_profiling in the ClientApp "
                "adds one); they are sampled by size and update sketches", count)
        else:
            log(WARNING, "Profiling failed for %d nodes: %s", count, reason[:200])
