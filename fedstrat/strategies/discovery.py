"""Node discovery: wait for enough connected nodes, profile the new ones."""

from __future__ import annotations

import logging
import time
from logging import INFO, WARNING

from flwr.serverapp import Grid

from .node_registry import NodeRegistry
from .profiling import make_profile_messages, parse_profile_reply

log = logging.getLogger("flwr").log


def wait_for_nodes(grid: Grid, want: int, timeout: float, poll_interval: float) -> list[int]:
    """Connected node ids, waiting up to ``timeout`` s for ``want`` of them.

    Returns the available nodes at the deadline (WARNING if fewer than wanted); raises
    RuntimeError if none is connected.
    """
    deadline = time.monotonic() + timeout
    while True:
        ids = list(grid.get_node_ids())
        if len(ids) >= want:
            return ids
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        log(INFO, "Waiting for nodes: %d of %d connected (%.0fs left)", len(ids), want, remaining)
        time.sleep(min(poll_interval, remaining))
    if not ids:
        raise RuntimeError(
            f"No node connected after waiting {timeout:.1f}s "
            "(node_wait_timeout); start SuperNodes or raise the timeout."
        )
    log(
        WARNING,
        "Only %d nodes connected after %.1fs (wanted %d): using all of them",
        len(ids),
        timeout,
        want,
    )
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
    for reply in replies:
        node = int(reply.metadata.src_node_id)
        if node not in node_ids or node in answered:
            continue
        answered.add(node)
        parsed = parse_profile_reply(reply)
        if isinstance(parsed, str):
            registry.set_profile_failed(node, parsed)
            failed[parsed] = failed.get(parsed, 0) + 1
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
        log(WARNING, "Profiling failed for %d nodes: %s", count, reason[:200])
