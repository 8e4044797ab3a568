"""Flower records filled without Flower's per-item checks, for values that pass them.

Flower's ``TypedDict.__setitem__`` checks every key and value it stores (a ``MetricRecord``
value ~5-10 us, a ``RecordDict`` record ~5 us): on the server's per-round path that costs
more than the data it stores. These helpers put values that would pass those checks straight
into the record's storage (``_data``, Flower's dict behind every record type), and assign
anything else item by item, checked, as before (also with a Flower that keeps no such dict).
"""

from __future__ import annotations

from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict

_RECORD_TYPES = (ArrayRecord, MetricRecord, ConfigRecord)


def _storage(record: Any) -> dict[str, Any] | None:
    data = record.__dict__.get("_data")
    return data if type(data) is dict else None


def add_metrics(record: MetricRecord, values: dict[str, float]) -> MetricRecord:
    """``record[k] = v`` for every item of ``values``; returns ``record``. Plain ``float``
    values under ``str`` keys (what :meth:`.record.RoundRecord.metrics` gives, and what
    Flower's check accepts) go in as one update; anything else is assigned item by item."""
    data = _storage(record)
    if data is not None and all(type(k) is str and type(v) is float for k, v in values.items()):
        data.update(values)
        return record
    for key, value in values.items():
        record[key] = value
    return record


def put_records(content: RecordDict, records: dict[str, Any]) -> RecordDict:
    """``content[k] = r`` for every item of ``records``; returns ``content``. A Flower record
    (``ArrayRecord``, ``MetricRecord``, ``ConfigRecord``) under a ``str`` key that is new or
    holds a record of the same type (Flower warns when a record replaces one of another type)
    goes straight in; anything else is assigned item by item, checked."""
    data = _storage(content)
    for key, rec in records.items():
        old = None if data is None else data.get(key)
        if (data is not None and type(key) is str and type(rec) in _RECORD_TYPES
                and (old is None or type(old) is type(rec))):
            data[key] = rec
        else:
            content[key] = rec
    return content
