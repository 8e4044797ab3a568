"""Sparse uplink: a train reply sends only the rows of its tables that changed.

For an embedding table ``E`` (``V x d``) a client touches only the rows of the ids in its data
(Adam and SGD leave a row with zero gradient exactly where it was). With the run option
``sparse-uplink`` the reply replaces ``E`` by ``E@rows`` (int64 indices ``r`` of the rows that
differ from the array received) and ``E@values`` (``E[r]``) whenever that is smaller; the
server (:mod:`fedstrat.strategies.sparse_uplink`) rebuilds ``E`` from the array it sent, so the
dense update and everything computed from it (HT / ratio / difference weights) are bit for bit
those of a dense reply.

Then every float array (dense, or the ``@values`` of a table) whose changed BITS compress
travels as ``K@xorz``: the zlib stream of the byte-planes of ``bits(new) XOR bits(sent)``
(:func:`fedstrat.xorz.xor_compress`; for ``@values`` against those rows of the array sent).
Weights that moved a little share sign, exponent and leading mantissa bits with what was sent,
so the XOR's high byte-planes are mostly zero. Lossless: the server XORs back the same bits.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord

from fedstrat.wire import SPARSE_ROWS, SPARSE_VALUES, SPARSE_XORZ
from fedstrat.xorz import xor_compress

#: Bytes of one row index on the wire (int64).
INDEX_BYTES = 8
def changed_rows(new: np.ndarray, old: np.ndarray) -> np.ndarray:
    """Sorted int64 indices ``r`` with ``new[r] != old[r]`` anywhere in the row (NaN differs)."""
    flat_new = new.reshape(new.shape[0], -1)
    flat_old = old.reshape(old.shape[0], -1)
    return np.flatnonzero((flat_new != flat_old).any(axis=1)).astype(np.int64)


def sparse_arrays(
    reply: ArrayRecord, received: ArrayRecord, *, rows: bool = True, compress: bool = True
) -> ArrayRecord:
    """``reply`` with every floating array of rank >= 2 whose changed rows are cheaper to send
    (``r * (8 + row bytes) < array bytes``) replaced by its ``@rows`` / ``@values`` pair, then
    every float array or ``@values`` whose :func:`xor_compress` stream is smaller by its
    ``@xorz`` entry (same position); when a quarter or more of the rows changed, the whole
    array's stream replaces rows + values if it is smaller.

    ``reply`` has the keys, shapes and dtypes of ``received`` (what the server sent); arrays
    that are not cheaper sparse, and all others, are passed through unchanged, in order.
    ``rows=False`` / ``compress=False`` turn either step off (the benchmark's parts).
    """
    out = ArrayRecord()
    for key, arr in reply.items():
        new = arr.numpy()
        old = received[key].numpy() if key in received else None
        if (
            rows
            and old is not None
            and new.ndim >= 2
            and new.dtype.kind == "f"
            and new.shape == old.shape
            and new.dtype == old.dtype
            and new.shape[0] > 0
        ):
            idx = changed_rows(new, old)
            row_bytes = new.nbytes // new.shape[0]
            if idx.size * (INDEX_BYTES + row_bytes) < new.nbytes:
                values = np.ascontiguousarray(new[idx])
                payload = xor_compress(values, old[idx]) if compress else None
                size = idx.nbytes + (values.nbytes if payload is None else payload.nbytes)
                # most rows changed (a dense layer with a few dead units): the whole array's
                # XOR stream may be smaller than rows + values
                whole = xor_compress(new, old) if compress and 4 * idx.size >= len(new) else None
                if whole is not None and whole.nbytes < size:
                    out[key + SPARSE_XORZ] = Array(whole)
                    continue
                out[key + SPARSE_ROWS] = Array(idx)
                if payload is None:
                    out[key + SPARSE_VALUES] = Array(values)
                else:
                    out[key + SPARSE_VALUES + SPARSE_XORZ] = Array(payload)
                continue
        payload = xor_compress(new, old) if compress and old is not None else None
        if payload is None:
            out[key] = arr
        else:
            out[key + SPARSE_XORZ] = Array(payload)
    return out


def record_bytes(record: ArrayRecord) -> int:
    """Payload bytes of an ArrayRecord (the serialized arrays, headers included)."""
    return int(sum(len(a.data) for a in record.values()))
