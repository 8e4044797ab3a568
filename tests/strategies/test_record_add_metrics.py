"""``add_metrics``: the round's metrics added to a Flower MetricRecord, the same record as
item-by-item assignment gives (fast path for plain floats, checked assignment otherwise)."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import MetricRecord

from fedstrat.strategies.record import add_metrics


def assigned(record: MetricRecord, values: dict) -> MetricRecord:
    for k, v in values.items():
        record[k] = v
    return record


@pytest.mark.parametrize("values", [
    {"fedstrat-a": 1.0, "train-loss": 2.5, "fedstrat-b": -0.0},
    {"fedstrat-a": np.float64(1.5), "fedstrat-n": 3},  # not plain floats: checked path
    {},
])
def test_same_record_as_item_by_item(values: dict) -> None:
    base = {"train-loss": 0.5, "num-examples": 10}
    got = add_metrics(MetricRecord(dict(base)), values)
    want = assigned(MetricRecord(dict(base)), values)
    assert list(got.items()) == list(want.items())
    assert [type(v) for v in got.values()] == [type(v) for v in want.values()]


def test_returns_the_record_it_was_given() -> None:
    rec = MetricRecord()
    assert add_metrics(rec, {"x": 1.0}) is rec
    assert rec["x"] == 1.0


def test_invalid_values_are_still_refused() -> None:
    with pytest.raises(TypeError):
        add_metrics(MetricRecord(), {"x": "text"})
    with pytest.raises(TypeError):
        add_metrics(MetricRecord(), {"x": True})
