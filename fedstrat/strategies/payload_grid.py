"""The wrapped strategy's payload: a Grid view so that its own node sampling cannot block, and
the copy of its training message to every selected node."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from flwr.supercore.run import Run


class PayloadGrid(Grid):
    """Forward everything to ``grid`` but report a short list of node ids.

    :class:`~fedstrat.strategies.StratifiedSelection` calls the wrapped strategy's
    ``configure_train`` / ``configure_evaluate`` only to obtain the message payload. Flower's
    strategies wait (forever) until ``min_available_nodes`` nodes are connected and build one
    message per sampled node; this view reports ``node_ids`` (padded with ``-1, -2, ...`` up to
    ``min_count``) so that the wait returns at once and only a handful of messages are built.
    """

    def __init__(self, grid: Grid, node_ids: list[int], min_count: int = 1) -> None:
        self.grid = grid
        ids = [int(n) for n in node_ids]
        k = 1
        while len(ids) < min_count:
            ids.append(-k)
            k += 1
        self._ids = ids

    def set_run(self, run: Run) -> None:
        """Forward to the real grid."""
        self.grid.set_run(run)

    @property
    def run(self) -> Run:
        """The real grid's run."""
        return self.grid.run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        """Forward to the real grid."""
        return self.grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        """The short list of node ids given at construction."""
        return list(self._ids)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Forward to the real grid."""
        return self.grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        """Forward to the real grid."""
        return self.grid.pull_messages(message_ids)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Forward to the real grid."""
        return self.grid.send_and_receive(messages, timeout=timeout)


def find_attr(strategy: Any, name: str, default: Any = None) -> Any:
    """``strategy.<name>``, looking through wrappers' ``.strategy`` (e.g. Flower's DP wrappers)."""
    seen = 0
    obj: Any = strategy
    while obj is not None and seen < 16:
        if hasattr(obj, name):
            return getattr(obj, name)
        obj = getattr(obj, "strategy", None)
        seen += 1
    return default


def inner_payload(
    strategy: Strategy,
    server_round: int,
    arrays: ArrayRecord,
    config: ConfigRecord,
    grid: Grid,
    selected: list[int],
) -> Message:
    """The wrapped strategy's training message (content + type) for this round.

    The wrapped strategy sees a :class:`PayloadGrid` listing only the selected nodes (padded
    to its ``min_available_nodes`` / ``min_train_nodes``), so its own node wait returns at
    once and it builds only a few messages; its first message is the payload.
    """
    need = max(
        1,
        int(find_attr(strategy, "min_available_nodes", 0) or 0),
        int(find_attr(strategy, "min_train_nodes", 0) or 0),
    )
    view = PayloadGrid(grid, selected, min_count=need)
    msgs = list(strategy.configure_train(server_round, arrays, config, view))
    if not msgs:
        raise RuntimeError(
            f"The wrapped strategy {type(strategy).__name__} configured no training "
            "message (e.g. fraction_train=0.0); StratifiedSelection needs one to copy its "
            "payload. Use fraction_train > 0 in the wrapped strategy."
        )
    return msgs[0]


def fan_out(payload: Message, selected: list[int], server_round: int) -> list[Message]:
    """One copy of the payload's content and type per selected node."""
    return [
        Message(
            content=payload.content,
            dst_node_id=node,
            message_type=payload.metadata.message_type,
            group_id=payload.metadata.group_id or str(server_round),
            ttl=payload.metadata.ttl,
        )
        for node in selected
    ]
