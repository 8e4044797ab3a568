"""The ``@xorz`` array codec of the sparse uplink: the one place that writes and reads it.

A float array ``new`` that the client received as ``sent`` travels as the zlib stream of the
byte-planes of ``bits(new) XOR bits(sent)``: weights that moved a little share sign, exponent
and leading mantissa bits with what was sent, so the high byte-planes are mostly zero.
Lossless: the server XORs the same bits back. numpy + zlib only, so both the client side
(:mod:`fedstrat.clients.uplink`) and the server side (:mod:`fedstrat.strategies.sparse_uplink`)
import it, like :mod:`fedstrat.wire`.
"""

from __future__ import annotations

import zlib

import numpy as np

#: zlib level of :func:`xor_compress` (6: zlib's default; 1 is ~2x faster, a few % larger).
XORZ_LEVEL = 6
#: Unsigned integer type with the bits of a float of each item size.
BITS = {2: np.uint16, 4: np.uint32, 8: np.uint64}


def xor_compress(new: np.ndarray, sent: np.ndarray) -> np.ndarray | None:
    """uint8 zlib stream of the byte-planes of ``bits(new) ^ bits(sent)``, or None when the
    arrays are not same-shaped floats of one dtype or the stream is not smaller than ``new``."""
    if (
        new.dtype != sent.dtype
        or new.shape != sent.shape
        or new.dtype.kind != "f"
        or new.dtype.itemsize not in BITS
        or new.size == 0
    ):
        return None
    bits = BITS[new.dtype.itemsize]
    x = np.ascontiguousarray(new).view(bits).ravel() ^ np.ascontiguousarray(sent).view(bits).ravel()
    planes = x.view(np.uint8).reshape(-1, new.dtype.itemsize).T
    payload = np.frombuffer(zlib.compress(planes.tobytes(), XORZ_LEVEL), dtype=np.uint8)
    return payload if payload.nbytes < new.nbytes else None


def xor_decompress(payload: np.ndarray, sent: np.ndarray, name: str = "array") -> np.ndarray | str:
    """The array whose bits are ``bits(sent)`` XOR the inflated byte-planes of ``payload``
    (the inverse of :func:`xor_compress`), or the reason it is malformed; the stream may not
    inflate beyond ``sent.nbytes``."""
    if payload.ndim != 1 or payload.dtype != np.uint8:
        return f"compressed array '{name}': payload must be a 1-D uint8 array"
    k = sent.dtype.itemsize
    if sent.dtype.kind != "f" or k not in BITS:
        return f"compressed array '{name}': the array sent is not a float array"
    inflate = zlib.decompressobj()
    try:
        raw = inflate.decompress(payload.tobytes(), sent.nbytes + 1)
    except zlib.error as exc:
        return f"compressed array '{name}': {exc}"
    if len(raw) != sent.nbytes or not inflate.eof or inflate.unused_data:
        return f"compressed array '{name}': inflates to {len(raw)}+ bytes, expected {sent.nbytes}"
    x = np.frombuffer(raw, dtype=np.uint8).reshape(k, -1).T.copy().view(BITS[k]).ravel()
    bits = x ^ np.ascontiguousarray(sent).view(BITS[k]).ravel()
    return bits.view(sent.dtype).reshape(sent.shape)
