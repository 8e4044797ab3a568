"""Sparse uplink: a train reply sends only the rows of its tables that changed.

For an embedding table ``E`` (``V x d``) a client touches only the rows of the ids in its data
(Adam and SGD leave a row with zero gradient exactly where it was). With the run option
``sparse-uplink`` the reply replaces ``E`` by ``E@rows`` (int64 indices ``r`` of the rows that
differ from the array received) and ``E@values`` (``E[r]``) whenever that is smaller; the
server (:mod:`fedstrat.strategies.sparse_uplink`) rebuilds ``E`` from the array it sent, so the
dense update and everything computed from it (HT / ratio / difference weights) are bit for bit
those of a dense reply.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord

from fedstrat.wire import SPARSE_ROWS, SPARSE_VALUES

#: Bytes of one row index on the wire (int64).
INDEX_BYTES = 8


def changed_rows(new: np.ndarray, old: np.ndarray) -> np.ndarray:
    """Sorted int64 indices ``r`` with ``new[r] != old[r]`` anywhere in the row (NaN differs)."""
    flat_new = new.reshape(new.shape[0], -1)
    flat_old = old.reshape(old.shape[0], -1)
    return np.flatnonzero((flat_new != flat_old).any(axis=1)).astype(np.int64)


def sparse_arrays(reply: ArrayRecord, received: ArrayRecord) -> ArrayRecord:
    """``reply`` with every floating array of rank >= 2 whose changed rows are cheaper to send
    (``r * (8 + row bytes) < array bytes``) replaced by its ``@rows`` / ``@values`` pair.

    ``reply`` has the keys, shapes and dtypes of ``received`` (what the server sent); arrays
    that are not cheaper sparse, and all others, are passed through unchanged, in order.
    """
    out = ArrayRecord()
    for key, arr in reply.items():
        new = arr.numpy()
        old = received[key].numpy() if key in received else None
        if (
            old is not None
            and new.ndim >= 2
            and new.dtype.kind == "f"
            and new.shape == old.shape
            and new.dtype == old.dtype
            and new.shape[0] > 0
        ):
            rows = changed_rows(new, old)
            row_bytes = new.nbytes // new.shape[0]
            if rows.size * (INDEX_BYTES + row_bytes) < new.nbytes:
                out[key + SPARSE_ROWS] = Array(rows)
                out[key + SPARSE_VALUES] = Array(np.ascontiguousarray(new[rows]))
                continue
        out[key] = arr
    return out


def record_bytes(record: ArrayRecord) -> int:
    """Payload bytes of an ArrayRecord (the serialized arrays, headers included)."""
    return int(sum(len(a.data) for a in record.values()))
