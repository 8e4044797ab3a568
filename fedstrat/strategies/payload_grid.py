"""A Grid view handed to the wrapped strategy so that its own node sampling cannot block."""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid
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
