r"""Count sketch of update vectors in O(d) time and O(d / 8) bytes of map (no d x k matrix).

A count sketch sends coordinate ``j`` of ``x`` to bucket ``h(j)`` with sign ``s(j)``:

.. math:: (Sx)_b = \sum_{j:\,h(j) = b} s(j)\, x_j, \qquad b = 0, \dots, k-1 .

The signs are iid uniform on ``{-1, +1}`` (independent of ``h``), every ``h(j)`` is uniform on
``0..k-1`` and two coordinates share a bucket with probability ``P(h(j) = h(l)) <= 1/k``. Then,
for every ``x`` and ``y``,

.. math::

    E\,\langle Sx, Sy\rangle = \langle x, y\rangle, \qquad
    \operatorname{Var}\lVert Sx\rVert^2 = 2\sum_{j \ne l} P(h(j) = h(l))\, x_j^2 x_l^2
    \le \tfrac{2}{k}\lVert x\rVert^4 ,

the same bound as a Gaussian projection ``G^T x / sqrt(k)`` (whose variance is exactly
``2 ||x||^4 / k``).

The hash is built so that numpy can apply it with contiguous slices instead of a scatter: the
vector is cut into blocks of ``B`` coordinates (``B`` = ``k * ceil(min(d, 65536) / k)``); block
``r`` is added into a length-``B`` accumulator after a cyclic shift by a random offset ``o_r``
(so coordinate ``c`` of block ``r`` lands in slot ``(c + o_r) mod B``), and the ``B`` slots go to
the ``k`` buckets through a random balanced assignment (a random permutation ``pi`` of the slots,
slot ``pi^{-1}(t)`` -> bucket ``t mod k``). Coordinates of different blocks land in independent
uniform slots, so they collide with probability exactly ``1/k``; two coordinates of the same
block occupy different slots and collide with probability ``(B/k - 1) / (B - 1) < 1/k``.

The map (packed sign bits, block offsets, slot permutation) is drawn from
``numpy.random.default_rng([seed, k, d, 0x5CE7])``, so every call site with the same
``(d, k, seed)`` gets the same sketch; it is cached for the last few ``(d, k, seed)`` and costs
a few milliseconds to regenerate at d = 10M.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from ._validate import as_count

__all__ = ["CountSketchStream", "count_sketch"]

_BLOCK = 1 << 16  # coordinates per block: one block of float32 plus the accumulator fit in L2
_WORK_ELEMS = 1 << 22  # cap on (batch rows x block) elements of the work buffers
_FOLD_TO = 16  # bucket terms folded pairwise in the slots' dtype down to this many
_TAG = 0x5CE7  # separates this map's random stream from the Gaussian projection's


@dataclass(frozen=True)
class _CountSketchMap:
    width: int  # B, slots per block (a multiple of k)
    signs: np.ndarray  # ceil(d / 8) uint8: bit j (numpy's big-endian bit order) set -> s(j) = -1
    offsets: np.ndarray  # (n_blocks,) int64 cyclic shift of each block, uniform on 0..B-1
    order: np.ndarray  # (B,) permutation: position t holds the slot that goes to bucket t % k


@lru_cache(maxsize=8)
def _count_sketch_map(d: int, dim: int, seed: int) -> _CountSketchMap:
    width = dim * -(-min(d, _BLOCK) // dim)
    rng = np.random.default_rng([seed, dim, d, _TAG])
    signs = np.frombuffer(rng.bytes(-(-d // 8)), dtype=np.uint8)
    offsets = rng.integers(0, width, size=-(-d // width), dtype=np.int64)
    order = rng.permutation(width)
    for a in (offsets, order):
        a.setflags(write=False)
    return _CountSketchMap(width, signs, offsets, order)


def _accumulate(v: np.ndarray, mp: _CountSketchMap, z: np.ndarray) -> None:
    """``z[..., (c + o_r) % B] += s(j) v[..., j]`` for every coordinate ``j = r B + c``."""
    d = v.shape[-1]
    width = mp.width
    uint = np.uint32 if v.dtype == np.float32 else np.uint64
    shift = 8 * v.dtype.itemsize - 1  # the IEEE sign bit
    buf = np.empty(z.shape, dtype=uint)
    mask = np.empty(width, dtype=uint)
    for r, a in enumerate(range(0, d, width)):
        n = min(width, d - a)
        bits = np.unpackbits(mp.signs[a >> 3 : ((a + n - 1) >> 3) + 1])[a & 7 : (a & 7) + n]
        np.left_shift(bits, shift, out=mask[:n], dtype=uint)
        # s(j) v_j by flipping the sign bit: no float multiply, no upcast, exact.
        np.bitwise_xor(v[..., a : a + n].view(uint), mask[:n], out=buf[..., :n])
        f = buf[..., :n].view(v.dtype)
        o = int(mp.offsets[r])
        n1 = min(n, width - o)
        z[..., o : o + n1] += f[..., :n1]
        if n > n1:
            z[..., : n - n1] += f[..., n1:]


def _sketch_slots(z: np.ndarray, mp: _CountSketchMap, dim: int, check: bool = True,
                  rows: list[int] | None = None, work: np.ndarray | None = None) -> np.ndarray:
    """Bucket sums (float64) of the slot accumulators ``z`` (..., B) (of its ``rows`` of a 2-D
    ``z``, if given); ValueError if not finite (unless ``check`` is False).

    Bucket ``b`` sums ``z[order[t dim + b]]`` over ``t = 0 .. B/dim - 1``: the ``B/dim`` terms
    are folded pairwise in ``z``'s dtype (the last ``h`` terms added onto the first ``h``,
    ``h = n // 2``, while ``n > 16``), and the at most 16 partial sums added in float64. One
    row at a time through a length-``B`` buffer: no ``(rows, B)`` permuted copy (whose fresh
    pages cost more than the sums at d = 40k); with ``work`` (a caller's 2-D scratch of ``z``'s
    dtype, at least ``(rows, B)``; all rows) every row at once in it, the same sums."""
    flat = z.reshape(-1, mp.width)
    if (work is not None and rows is None and work.dtype == z.dtype and work.ndim == 2
            and work.shape[0] >= flat.shape[0] and work.shape[1] >= mp.width):
        out = _fold_rows(flat, mp, dim, work[: flat.shape[0], : mp.width])
    else:
        picked = range(flat.shape[0]) if rows is None else rows
        out = np.empty((len(picked), dim))
        buf = np.empty((1, mp.width), dtype=z.dtype)
        for i, r in enumerate(picked):
            out[i] = _fold_rows(flat[r : r + 1], mp, dim, buf)[0]
    out = out.reshape((z.shape[:-1] if rows is None else (len(rows),)) + (dim,))
    if check and not np.all(np.isfinite(out)):
        raise ValueError("vector contains NaN or inf (or its sketch overflows)")
    return out


def _fold_rows(flat: np.ndarray, mp: _CountSketchMap, dim: int, buf: np.ndarray) -> np.ndarray:
    """Float64 ``(rows, dim)`` bucket sums of the rows of ``flat`` (:func:`_sketch_slots`),
    gathered into ``buf`` (same shape; overwritten) and folded there."""
    np.take(flat, mp.order, axis=1, out=buf, mode="wrap")  # valid indices; "raise" buffers out
    terms = buf.reshape(flat.shape[0], mp.width // dim, dim)
    n = terms.shape[1]
    while n > _FOLD_TO:
        h = n // 2
        np.add(terms[:, :h], terms[:, n - h : n], out=terms[:, :h])
        n -= h
    return terms[:, :n].sum(axis=1, dtype=np.float64)


class CountSketchStream:
    """:func:`count_sketch` of ``rows`` vectors of length ``d`` fed piece by piece.

    ``add(row, start, values)`` adds coordinates ``start .. start + len(values) - 1`` of vector
    ``row`` (pieces of a row must come in increasing coordinate order, e.g. the arrays of a
    model one after the other, each in chunks). Every slot receives its coordinates in the same
    order as in :func:`count_sketch` of the whole vector, so with ``dtype`` equal to the dtype
    :func:`count_sketch` would work in (float64 for float64 input), :meth:`result` is bit for
    bit ``count_sketch`` of the stacked rows, without the ``(rows, d)`` matrix. ``slots``:
    ``slots(rows, width, dtype)`` gives the buffer of the slot sums (zeroed here; e.g. one kept
    between rounds, whose pages are already mapped) instead of a new one.
    """

    def __init__(self, d: int, dim: int, seed: int, rows: int, dtype: type = np.float64,
                 slots: Callable[[int, int, np.dtype], np.ndarray] | None = None) -> None:
        self.dim = as_count(dim, "dim")
        if d < 1:
            raise ValueError("vectors must be non-empty")
        self.d, self.seed = int(d), int(seed)
        self.map = _count_sketch_map(self.d, self.dim, self.seed)
        if slots is None:
            self.z = np.zeros((rows, self.map.width), dtype=dtype)
        else:  # a caller's (rows, width) buffer, e.g. kept between rounds: zeroed here
            self.z = slots(rows, self.map.width, np.dtype(dtype))
            self.z.fill(0)
        self._uint = np.uint32 if self.z.dtype == np.float32 else np.uint64
        self._shift = 8 * self.z.dtype.itemsize - 1
        self._buf = np.empty(0, dtype=self._uint)

    def mask(self, start: int, n: int) -> np.ndarray:
        """Sign-bit masks (the stream's unsigned dtype) of coordinates ``start .. start + n - 1``:
        compute once, pass to :meth:`add` for every row."""
        a = int(start)
        if a < 0 or a + n > self.d or n < 1:
            raise ValueError("coordinates out of range")
        bits = np.unpackbits(self.map.signs[a >> 3 : ((a + n - 1) >> 3) + 1])[a & 7 : (a & 7) + n]
        return np.left_shift(bits, self._shift, dtype=self._uint)

    def add(self, row: int, start: int, values: np.ndarray, mask: np.ndarray | None = None) -> None:
        """Add ``values`` (1-D; converted to the stream's dtype if not in it) as coordinates
        ``start ..`` of ``row`` (``mask``: :meth:`mask` of the same coordinates, if made)."""
        z = self.z[row]
        if values.dtype != z.dtype:
            values = values.astype(z.dtype)
        n_all = values.shape[0]
        mask = self._checked_mask(start, n_all, mask)
        if self._buf.shape[0] < n_all:
            self._buf = np.empty(n_all, dtype=self._uint)
        # s(j) v_j by flipping the sign bit: no float multiply, no upcast, exact.
        f = np.bitwise_xor(values.view(self._uint), mask, out=self._buf[:n_all]).view(z.dtype)
        self._add_slots(z, start, f)

    def add_block(self, start: int, values: np.ndarray, mask: np.ndarray | None = None,
                  overwrite: bool = False) -> None:
        """Add row ``i`` of the 2-D ``values`` as coordinates ``start ..`` of stream row ``i``
        (rows ``0 .. len(values) - 1``), the same sums as :meth:`add` row by row, in one
        pass per block piece for all rows. ``overwrite``: ``values`` (in the stream's dtype,
        last axis contiguous) is scratch: its signs are flipped in place instead of in a
        copy."""
        rows, n_all = values.shape
        z = self.z[:rows]
        if values.dtype != z.dtype:
            values, overwrite = values.astype(z.dtype), True
        mask = self._checked_mask(start, n_all, mask)
        bits = values.view(self._uint)
        f = np.bitwise_xor(bits, mask, out=bits if overwrite else None).view(z.dtype)
        self._add_slots(z, start, f)

    def _checked_mask(self, start: int, n: int, mask: np.ndarray | None) -> np.ndarray:
        if mask is None:
            return self.mask(start, n)
        if mask.shape[0] != n:
            raise ValueError("mask and values differ in length")
        return mask

    def _add_slots(self, z: np.ndarray, start: int, f: np.ndarray) -> None:
        """``z[..., (c + o_r) % B] += f[..., j - start]`` for coordinates ``j = r B + c``."""
        mp, width = self.map, self.map.width
        a, end = start, start + f.shape[-1]
        while a < end:
            block = a // width
            n = min(end, (block + 1) * width) - a
            o = (a - block * width + int(mp.offsets[block])) % width
            n1 = min(n, width - o)
            piece = f[..., a - start : a - start + n]
            z[..., o : o + n1] += piece[..., :n1]
            if n > n1:
                z[..., : n - n1] += piece[..., n1:]
            a += n

    def result(self, rows: list[int] | None = None, check: bool = True,
               work: np.ndarray | None = None) -> np.ndarray:
        """Float64 ``(len(rows), dim)`` sketches of ``rows`` (all rows by default);
        ValueError if one is not finite (``check=False``: returned as they are). ``work``: a
        scratch ``(>= rows, >= width)`` array of the stream's dtype (its values are
        overwritten) in which all rows are summed at once; the same sketches."""
        return _sketch_slots(self.z, self.map, self.dim, check, rows, work)


def count_sketch(vector: np.ndarray, dim: int = 64, seed: int = 0) -> np.ndarray:
    """Count sketch ``(Sx)_b = sum_{h(j) = b} s(j) x_j`` of ``x`` into ``dim`` buckets.

    ``E <Sx, Sy> = <x, y>`` and ``Var ||Sx||^2 <= 2 ||x||^4 / dim`` for every input (module
    docstring). O(d) time; the map is derived from ``(d, dim, seed)`` (same map on every call
    site). ``vector`` may be 1-D (D,) or a batch (B, D); float32 and float64 inputs are read
    in place (other dtypes are converted to float64) and partial sums are kept in the input's
    precision down to at most 16 per bucket, added in float64 (:func:`_sketch_slots`).
    Returns float64 (dim,) or (B, dim).

    Raises:
        ValueError: ``dim < 1``, an empty or >2-D ``vector``, NaN or inf in ``vector`` (or a
            float32 partial sum that overflows).
    """
    dim = as_count(dim, "dim")
    v = np.asarray(vector)
    if v.dtype != np.float32 and v.dtype != np.float64:
        v = v.astype(np.float64)
    if v.ndim not in (1, 2) or v.shape[-1] == 0:
        raise ValueError("vector must be a non-empty 1-D array or a 2-D batch")
    d = v.shape[-1]
    mp = _count_sketch_map(d, dim, int(seed))
    if v.ndim == 1:
        z = np.zeros(mp.width, dtype=v.dtype)
        _accumulate(v, mp, z)
    else:
        z = np.zeros((v.shape[0], mp.width), dtype=v.dtype)
        step = max(1, _WORK_ELEMS // mp.width)
        for i in range(0, v.shape[0], step):
            _accumulate(v[i : i + step], mp, z[i : i + step])
    return _sketch_slots(z, mp, dim)
