"""``add_metrics`` and ``put_records``: the same records as item-by-item assignment gives
(fast path for values Flower would accept, its checked assignment otherwise)."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from fedstrat.strategies.record_fill import add_metrics, put_records


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


def test_put_records_same_as_item_by_item() -> None:
    arrays, metrics = ArrayRecord(), MetricRecord({"num-examples": 3})
    base = {"arrays": ArrayRecord(), "metrics": MetricRecord({"num-examples": 1}),
            "config": ConfigRecord({"lr": 0.1})}
    new = {"metrics": metrics, "arrays": arrays, "extra": MetricRecord()}
    got = put_records(RecordDict(dict(base)), new)
    want = RecordDict(dict(base))
    for k, v in new.items():
        want[k] = v
    assert list(got.keys()) == list(want.keys())
    assert all(got[k] is want[k] for k in want)


def test_put_records_checks_what_it_cannot_pass() -> None:
    with pytest.raises(TypeError):
        put_records(RecordDict(), {"x": {"not": "a record"}})
    content = RecordDict({"r": ArrayRecord()})
    put_records(content, {"r": MetricRecord()})  # another type: Flower's own assignment
    assert isinstance(content["r"], MetricRecord)
