"""The profile protocol of docs/design.md: build ``QUERY`` messages and parse their replies.

Query content: ``RecordDict({"fedstrat-profile": ConfigRecord({"epsilon": float, "seed": int})})``.
Reply content: ``RecordDict({"fedstrat-profile": MetricRecord({"num-examples": int,
"label-hist": list[float]})})``.
"""

from __future__ import annotations

import math

from flwr.app import ConfigRecord, Message, MessageType, MetricRecord, RecordDict

from fedstrat.wire import (
    NUM_EXAMPLES,
    PROFILE_EPSILON,
    PROFILE_KEY,
    PROFILE_LABEL_HIST,
    PROFILE_SEED,
)


def make_profile_messages(
    node_ids: list[int], epsilon: float, seed: int, group_id: str = ""
) -> list[Message]:
    """One ``MessageType.QUERY`` message per node asking for its profile.

    ``epsilon`` > 0 asks the node to privatise its label histogram (epsilon-LDP); 0 = exact.
    """
    if epsilon < 0 or not math.isfinite(epsilon):
        raise ValueError(f"profile epsilon must be finite and >= 0, got {epsilon}")
    content = RecordDict(
        {PROFILE_KEY: ConfigRecord({PROFILE_EPSILON: float(epsilon), PROFILE_SEED: int(seed)})}
    )
    return [
        Message(
            content=content, dst_node_id=int(n), message_type=MessageType.QUERY, group_id=group_id
        )
        for n in node_ids
    ]


def parse_profile_reply(reply: Message) -> tuple[float, list[float]] | str:
    """``(num_examples, label_histogram)`` from a profile reply, or the reason it is unusable."""
    if reply.has_error():
        return f"error reply: {reply.error.reason}"
    # one lookup of the record (``content.metric_records`` builds and checks a new mapping of
    # every MetricRecord on each access: the most expensive step at 100k nodes)
    rec = reply.content.get(PROFILE_KEY)
    if not isinstance(rec, MetricRecord):
        return f"reply has no MetricRecord '{PROFILE_KEY}'"
    n = rec.get(NUM_EXAMPLES)
    hist = rec.get(PROFILE_LABEL_HIST)
    if isinstance(n, list) or n is None:
        return "missing or non-scalar 'num-examples'"
    n = float(n)
    if not math.isfinite(n) or n <= 0:
        return f"'num-examples' must be a positive number, got {rec.get(NUM_EXAMPLES)}"
    if not isinstance(hist, list) or len(hist) == 0:
        return "missing or empty 'label-hist'"
    values = list(map(float, hist))
    total = sum(values)  # finite only without NaN / inf; then min >= 0: none negative
    if not (math.isfinite(total) and min(values) >= 0.0) and not all(
        0.0 <= v < math.inf for v in values  # False for NaN, inf and negatives
    ):
        return "'label-hist' has negative or non-finite entries"
    if total <= 0:
        return "'label-hist' sums to zero"
    return n, values
