"""Densify sparse train replies (run option ``sparse-uplink``) before anything reads them.

A client may send a table ``K`` as ``K@rows`` (sorted unique int64 row indices ``r``) and
``K@values`` (``x_i[K][r]``); every other row equals the global array the server sent, so

    densify(x_i)[K] = x_g[K] (cast to the values' dtype) with rows r set to the values

is exactly the dense reply, and the HT / ratio / difference rewrite, the sketches and the inner
strategy see the same numbers as without the sparse uplink. Pure functions of the records.

A float array ``K`` (or ``K@values``) may also come as ``K@xorz`` (``K@values@xorz``): the zlib
stream of the byte-planes of its bits XOR the bits of what the server sent (those rows);
:func:`fedstrat.xorz.xor_decompress` XORs them back first (lossless; the stream may not
inflate beyond the expected size).
"""

from __future__ import annotations

import copy

import numpy as np
from flwr.app import Array, ArrayRecord, Message, RecordDict

from fedstrat.wire import SPARSE_ROWS, SPARSE_VALUES, SPARSE_XORZ
from fedstrat.xorz import xor_decompress

from .array_codec import decode_array


def has_sparse_arrays(record: ArrayRecord) -> bool:
    """Whether ``record`` holds any ``@rows`` / ``@values`` / ``@xorz`` entry."""
    return any(k.endswith((SPARSE_ROWS, SPARSE_VALUES, SPARSE_XORZ)) for k in record)


def _rows_reason(rows: np.ndarray, n_rows: int, name: str) -> str | None:
    """Why ``rows`` are not 1-D sorted unique integer indices in ``[0, n_rows)``, or None."""
    if rows.ndim != 1 or rows.dtype.kind not in "iu":
        return f"sparse array '{name}': row indices must be a 1-D integer array"
    if rows.size and (rows[0] < 0 or rows[-1] >= n_rows):
        return f"sparse array '{name}': row index out of range [0, {n_rows})"
    if rows.size > 1 and not bool(np.all(np.diff(rows) > 0)):
        return f"sparse array '{name}': row indices must be sorted and unique"
    return None


def _inflate(record: ArrayRecord, base: ArrayRecord) -> ArrayRecord | str:
    """``record`` with each ``X@xorz`` entry replaced by ``X`` (same position), decoded
    against ``base`` (rows of it for ``K@values``); a reason string if malformed."""
    if not any(k.endswith(SPARSE_XORZ) for k in record):
        return record
    out = ArrayRecord()
    for key, arr in record.items():
        if not key.endswith(SPARSE_XORZ):
            out[key] = arr
            continue
        name = key[: -len(SPARSE_XORZ)]
        table = name.removesuffix(SPARSE_VALUES)
        if name in record:
            return f"array '{name}' was sent both plain and compressed"
        if table not in base:
            return f"compressed array '{name}' is not one of the arrays sent"
        sent = decode_array(base[table])
        if name != table:
            if table + SPARSE_ROWS not in record:
                return f"sparse array '{table}': values without rows"
            rows = decode_array(record[table + SPARSE_ROWS])
            if sent.ndim < 1 or (reason := _rows_reason(rows, sent.shape[0], table)):
                return reason or f"sparse array '{table}': the array sent is a scalar"
            sent = sent[rows]
        dense = xor_decompress(decode_array(arr), sent, name)
        if isinstance(dense, str):
            return dense
        out[name] = Array(np.ascontiguousarray(dense))
    return out


def densify_array(
    global_array: np.ndarray, rows: np.ndarray, values: np.ndarray, name: str = "array"
) -> np.ndarray | str:
    """``global_array`` (as ``values.dtype``, a copy) with ``rows`` set to ``values``; or the
    reason the pair is malformed (indices not 1-D sorted unique integers in range, or values not
    shaped ``(len(rows),) + global_array.shape[1:]``)."""
    if rows.ndim != 1 or rows.dtype.kind not in "iu":
        return f"sparse array '{name}': row indices must be a 1-D integer array"
    if global_array.ndim < 1 or values.shape != (rows.size, *global_array.shape[1:]):
        return (
            f"sparse array '{name}': values of shape {values.shape} do not fit {rows.size} rows "
            f"of {global_array.shape}"
        )
    if reason := _rows_reason(rows, global_array.shape[0], name):
        return reason
    dense = global_array.astype(values.dtype, copy=True)
    dense[rows] = values
    return dense


def densify(record: ArrayRecord, base: ArrayRecord) -> ArrayRecord | str:
    """The dense record: each ``K@rows`` / ``K@values`` pair becomes ``K`` (at the position of
    ``K@rows``) from ``base[K]``; other entries pass through. ``@xorz`` entries are inflated
    first (:func:`_inflate`). A reason string if malformed."""
    inflated = _inflate(record, base)
    if isinstance(inflated, str):
        return inflated
    record = inflated
    out = ArrayRecord()
    for key, arr in record.items():
        if key.endswith(SPARSE_VALUES):
            if key[: -len(SPARSE_VALUES)] + SPARSE_ROWS not in record:
                return f"sparse array '{key[: -len(SPARSE_VALUES)]}': values without rows"
            continue
        if not key.endswith(SPARSE_ROWS):
            out[key] = arr
            continue
        name = key[: -len(SPARSE_ROWS)]
        if name + SPARSE_VALUES not in record:
            return f"sparse array '{name}': rows without values"
        if name in record:
            return f"array '{name}' was sent both dense and sparse"
        if name not in base:
            return f"sparse array '{name}' is not one of the arrays sent"
        dense = densify_array(
            decode_array(base[name]),
            decode_array(arr),
            decode_array(record[name + SPARSE_VALUES]),
            name,
        )
        if isinstance(dense, str):
            return dense
        out[name] = Array(dense)
    return out


def densify_reply(reply: Message, array_key: str, base: ArrayRecord) -> Message | str:
    """A copy of ``reply`` whose ArrayRecord ``array_key`` is :func:`densify`-ed (same metadata,
    other records shared); the reply itself when it has no sparse arrays."""
    record = reply.content.array_records[array_key]
    if not has_sparse_arrays(record):
        return reply
    dense = densify(record, base)
    if isinstance(dense, str):
        return dense
    content = RecordDict()
    for key, rec in reply.content.items():
        content[key] = dense if key == array_key else rec
    return Message(content=content, metadata=copy.copy(reply.metadata))
