"""Fast decoding / encoding of Flower ``Array`` objects holding ``.npy`` bytes.

``Array.numpy()`` runs ``np.load`` (header parsed with ``ast.literal_eval``) and
``Array(ndarray)`` runs ``np.save``; on the server's per-round path this costs more than the
arithmetic. For C-ordered numeric arrays of the ``numpy.ndarray`` stype the payload is the raw
buffer after the ``.npy`` header, so we read it with ``np.frombuffer`` and write new values by
re-using the header of an array with the same dtype and shape. Anything unusual (Fortran order,
object dtype, unknown format version, size mismatch) falls back to Flower's own methods.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Array

_MAGIC = b"\x93NUMPY"
_NUMPY_STYPE = "numpy.ndarray"


def _header_length(data: bytes) -> int | None:
    """Offset of the raw buffer in ``.npy`` bytes, or None if not a plain C-order array."""
    if len(data) < 10 or data[:6] != _MAGIC:
        return None
    major = data[6]
    if major == 1:
        offset = 10 + int.from_bytes(data[8:10], "little")
    elif major in (2, 3):
        offset = 12 + int.from_bytes(data[8:12], "little")
    else:
        return None
    if b"'fortran_order': False" not in data[:offset]:
        return None
    return offset


def decode_array(arr: Array) -> np.ndarray:
    """The array's values (a read-only view of its bytes when possible)."""
    if arr.stype == _NUMPY_STYPE:
        offset = _header_length(arr.data)
        if offset is not None:
            try:
                dtype = np.dtype(arr.dtype)
            except TypeError:
                dtype = None
            if dtype is not None and dtype.kind in "biufc":
                count = int(np.prod(arr.shape, dtype=np.int64))
                if len(arr.data) - offset == count * dtype.itemsize:
                    flat = np.frombuffer(arr.data, dtype=dtype, count=count, offset=offset)
                    return flat.reshape(arr.shape)
    return arr.numpy()


def encode_like(template: Array, values: np.ndarray) -> Array:
    """An ``Array`` with ``values`` (same dtype and shape as ``template``), re-using the
    template's ``.npy`` header."""
    values = np.ascontiguousarray(values)
    if (
        template.stype == _NUMPY_STYPE
        and str(values.dtype) == template.dtype
        and tuple(values.shape) == tuple(template.shape)
    ):
        offset = _header_length(template.data)
        if offset is not None and len(template.data) - offset == values.nbytes:
            data = b"".join((memoryview(template.data)[:offset], values))  # one copy
            return Array(
                dtype=template.dtype, shape=tuple(template.shape), stype=_NUMPY_STYPE, data=data
            )
    return Array(values)
