"""DeferredArray: an Array whose values are computed when read; otherwise a plain Array."""

from __future__ import annotations

import copy

import numpy as np
from flwr.app import Array, ArrayRecord

from fedstrat.strategies.array_codec import DeferredArray, decode_array


def _deferred(values: np.ndarray) -> tuple[DeferredArray, list[int]]:
    calls: list[int] = []

    def compute() -> np.ndarray:
        calls.append(1)
        return values.copy()

    return DeferredArray(Array(np.zeros_like(values)), compute), calls


def test_values_are_computed_when_read_and_fresh_each_time():
    values = np.arange(12, dtype=np.float32).reshape(3, 4)
    arr, calls = _deferred(values)
    assert (arr.dtype, tuple(arr.shape), arr.stype) == ("float32", (3, 4), "numpy.ndarray")
    assert calls == []  # nothing computed yet
    first = arr.numpy()
    first += 100  # a reader may change what it got (Flower's DP clipping does)
    assert np.array_equal(arr.numpy(), values) and len(calls) == 2
    assert np.array_equal(decode_array(arr), values)


def test_bytes_are_plain_npy_made_once():
    values = np.linspace(-1, 1, 7)
    arr, calls = _deferred(values)
    plain = Array(values)
    assert arr.data == plain.data and arr == plain and plain == arr
    assert len(calls) == 1
    assert np.array_equal(arr.numpy(), values) and len(calls) == 1  # from the bytes now
    assert np.array_equal(Array(dtype=arr.dtype, shape=arr.shape, stype=arr.stype,
                                data=arr.data).numpy(), values)
    assert arr != Array(values + 1)


def test_records_keep_it_deferred_item_by_item_and_copies_work():
    values = np.ones(5, dtype=np.float32)
    arr, calls = _deferred(values)
    rec = ArrayRecord()
    rec["x"] = arr
    assert rec["x"] is arr and calls == []
    assert np.array_equal(rec.to_numpy_ndarrays()[0], values)
    twin = copy.deepcopy(arr)
    assert np.array_equal(twin.numpy(), values)
    assert np.array_equal(ArrayRecord({"x": arr})["x"].numpy(), values)  # copied as bytes
