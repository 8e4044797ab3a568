"""An in-process :class:`flwr.serverapp.Grid` for tests, benchmarks and notebooks.

``LocalGrid`` delivers each message to a Python handler ``handler(message) -> Message | None``
on the spot (no SuperLink, no Ray). A handler that raises produces an error reply (as a
ClientApp that raises does in Flower); a handler that returns ``None`` produces no reply (a node
that times out).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any
from uuid import uuid4

from flwr.app import Context, Error, Message, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

Handler = Callable[[Message], Message | None]


def ensure_task_identity(run_id: int = 1) -> None:
    """Give this process a Flower task identity if it has none (outside a ServerApp), so that
    ``Message(...)`` can be constructed."""
    try:
        TaskIdentity.run_id  # noqa: B018 - raises when unset
    except RuntimeError:
        TaskIdentity.run_id = run_id
    try:
        TaskIdentity.task_id  # noqa: B018
    except RuntimeError:
        TaskIdentity.task_id = 1
    try:
        TaskIdentity.node_id  # noqa: B018
    except RuntimeError:
        TaskIdentity.node_id = 0


def client_app_handler(
    client_app: Callable[[Message, Context], Message],
    node_ids: Sequence[int],
    run_config: Mapping[str, Any],
    on_reply: Callable[[Message, Message], None] | None = None,
) -> Handler:
    """A handler that answers each message with ``client_app(message, context)``, the context
    being what Flower's simulation gives node ``node_ids[i]``: ``node_config =
    {"partition-id": i, "num-partitions": len(node_ids)}`` and ``run_config``.
    ``on_reply(message, reply)`` sees every reply (e.g. to count uplink bytes)."""
    contexts = {
        int(nid): Context(
            run_id=1,
            node_id=int(nid),
            node_config={"partition-id": pid, "num-partitions": len(node_ids)},
            state=RecordDict(),
            run_config=dict(run_config),
        )
        for pid, nid in enumerate(node_ids)
    }

    def handler(msg: Message) -> Message:
        reply = client_app(msg, contexts[int(msg.metadata.dst_node_id)])
        if on_reply is not None:
            on_reply(msg, reply)
        return reply

    return handler


class LocalGrid(Grid):
    """Grid whose nodes are Python callables, answered synchronously.

    Parameters
    ----------
    node_ids : list[int] | Callable[[], list[int]]
        Connected node ids, or a callable returning the ids connected now (to simulate nodes
        joining or leaving).
    handler : Callable[[Message], Message | None]
        Produces the reply to one instruction message (``msg.metadata.dst_node_id`` is the
        node). Exceptions become error replies; ``None`` means no reply.

    ``nodes_settled`` (True for a list of ids): every node is connected from the start, so
    the strategy need not wait for the first population to settle
    (:func:`~fedstrat.strategies.discovery.settled_ids`).
    """

    def __init__(
        self,
        node_ids: list[int] | Callable[[], list[int]],
        handler: Handler,
    ) -> None:
        self._node_ids = node_ids
        self.nodes_settled = not callable(node_ids)
        self.handler = handler
        self._run = Run.create_empty(run_id=1)
        ensure_task_identity(run_id=1)
        self._pending: dict[str, Message | None] = {}
        self.sent: list[Message] = []  # every instruction message pushed, in order
        self.send_calls: list[tuple[int, float | None]] = []  # (number of messages, timeout)

    def set_run(self, run: Run) -> None:
        """Store the run (unused)."""
        self._run = run

    @property
    def run(self) -> Run:
        """The run set with :meth:`set_run`."""
        return self._run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        """Create an instruction message."""
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        """Connected node ids."""
        ids = self._node_ids() if callable(self._node_ids) else self._node_ids
        return list(ids)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Deliver the messages to the handler now; return their ids."""
        ids: list[str] = []
        for msg in messages:
            msg_id = str(uuid4())
            msg.metadata.__dict__["_message_id"] = msg_id
            self.sent.append(msg)
            try:
                reply = self.handler(msg)
            except Exception as exc:  # noqa: BLE001 - mirror Flower: exception -> error reply
                reply = Message(Error(code=0, reason=f"{type(exc).__name__}: {exc}"), reply_to=msg)
            self._pending[msg_id] = reply
            ids.append(msg_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        """Return the replies available for ``message_ids`` (and forget them)."""
        out = []
        for mid in message_ids:
            reply = self._pending.pop(mid, None)
            if reply is not None:
                out.append(reply)
        return out

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Push, then pull every reply at once (no waiting: replies are immediate)."""
        msgs = list(messages)
        self.send_calls.append((len(msgs), timeout))
        ids = list(self.push_messages(msgs))
        return list(self.pull_messages(ids))
