"""parse_profile_reply: which label histograms are refused, and why (entries at any position)."""

import math

import pytest
from flwr.app import Message, MessageType, MetricRecord, RecordDict

from fedstrat.strategies.local_grid import ensure_task_identity
from fedstrat.strategies.profiling import make_profile_messages, parse_profile_reply
from fedstrat.wire import NUM_EXAMPLES, PROFILE_KEY, PROFILE_LABEL_HIST

BAD = "'label-hist' has negative or non-finite entries"


def _reply(hist: list[float]) -> Message:
    ensure_task_identity()
    query = make_profile_messages([7], 0.0, 0)[0]
    assert query.metadata.message_type == MessageType.QUERY
    rec = MetricRecord({NUM_EXAMPLES: 10, PROFILE_LABEL_HIST: hist})
    return Message(RecordDict({PROFILE_KEY: rec}), reply_to=query)


@pytest.mark.parametrize("hist,why", [
    ([math.nan, 1.0, 2.0], BAD), ([1.0, math.nan, 2.0], BAD), ([1.0, 2.0, math.nan], BAD),
    ([1.0, math.inf, 2.0], BAD), ([math.inf, -math.inf, 1.0], BAD), ([3.0, -1.0, 4.0], BAD),
    ([1.0, -0.5, math.nan], BAD), ([0.0, 0.0], "'label-hist' sums to zero"),
])
def test_refused_histograms_name_the_reason(hist, why):
    assert parse_profile_reply(_reply(hist)) == why


def test_accepted_histograms_keep_their_values():
    assert parse_profile_reply(_reply([3.0, 0.0, 7.0])) == (10.0, [3.0, 0.0, 7.0])
    big = [1e308, 1e308]  # finite entries whose sum overflows: accepted, as entry by entry
    assert parse_profile_reply(_reply(big)) == (10.0, big)
