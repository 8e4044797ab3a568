"""The pure reply rewrite that makes the wrapped strategy's weighted average the HT, ratio or
difference (control-variate) estimate, and the one chunked pass over each accepted update
(:func:`scan_updates`) that feeds the magnitude screen, the update sketches and the HT rewrite
without an ``(R, D)`` matrix."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from functools import partial

import numpy as np
from flwr.app import Array, ArrayRecord, Message, RecordDict

from fedstrat.sampling.sketch import CountSketchStream, count_sketch

from .array_codec import DeferredArray, decode_array, encode_like
from .record_fill import add_metrics, put_records
from .reply_validation import ValidReply, all_finite

#: coordinates per step of :func:`scan_updates` (float32: 256 KB work buffers, near L2 size);
#: large steps keep the per-step Python overhead small next to the arithmetic
CHUNK = 1 << 16
#: replies whose count-sketch slots :func:`scan_updates` accumulates at once (16 x 256 KB of
#: float32 slots at most: the replies of a group share each step's masks while in cache)
GROUP = 16


def float_keys(global_np: dict[str, np.ndarray]) -> list[str]:
    """The floating-point keys of the global arrays, in their order."""
    return [k for k, v in global_np.items() if v.dtype.kind == "f"]


def flat_deltas(valid: list[ValidReply], global_np: dict[str, np.ndarray]) -> np.ndarray | None:
    """``(R, D)`` float64 matrix of flattened floating-point updates ``x_i - x_g`` (keys in the
    order of the global arrays; integer arrays left out); None without replies or floats.
    Only the difference estimator and the Gaussian sketch need it (see :func:`scan_updates`)."""
    keys = float_keys(global_np)
    if not valid or not keys:
        return None
    out = np.empty((len(valid), sum(global_np[k].size for k in keys)))
    start = 0
    for k in keys:
        b = start + global_np[k].size
        for r, v in enumerate(valid):
            out[r, start:b] = v.arrays[k].ravel()
        out[:, start:b] -= global_np[k].ravel().astype(np.float64)
        start = b
    return out


def work_dtype(valid: list[ValidReply], global_np: dict[str, np.ndarray], key: str) -> np.dtype:
    """The precision :func:`scan_updates` computes key ``key`` in: float32 when the global array
    and every reply's array are floats of at most 32 bits, else float64 (a float64 array, or an
    integer reply standing for a floating global array)."""
    dtypes = {global_np[key].dtype} | {v.arrays[key].dtype for v in valid}
    return np.dtype(np.result_type(np.float32, *dtypes))


@dataclass
class UpdateScan:
    """What :func:`scan_updates` learned of each reply ``i`` (rows aligned with the replies).

    ``amax[i, j]``: ``max |x_i - x_g|`` over floating key ``keys[j]`` (float64; ``inf`` if not
    finite); ``sketch``: the count-sketch stream the updates ``x_i - x_g`` were accumulated in,
    :data:`GROUP` rows at a time (or None; its map, ``dim`` and ``seed`` serve
    :meth:`sketches`); ``sums``: their ``(R, dim)`` float64 bucket sums as accumulated (not
    finite where float32 slot sums overflowed; see :meth:`sketches`);
    ``d``: floating coordinates per update; ``work``: :func:`work_dtype` per key;
    ``nonfinite``: reply ``i`` -> the first key (in ``keys`` order) whose reply array ``x_i``
    itself holds NaN or Inf (checked only where ``x_i - x_g`` was not finite); ``weighted``:
    per key ``sum_i w_i (x_i - x_g)`` in its work dtype, shaped like ``x_g`` (when asked for
    with weights ``w``; its values are meaningful only if every ``x_i - x_g`` was finite).
    """

    keys: list[str]
    amax: np.ndarray
    d: int
    sketch: CountSketchStream | None = None
    work: dict[str, np.dtype] = field(default_factory=dict)
    nonfinite: dict[int, str] = field(default_factory=dict)
    sums: np.ndarray | None = None
    weighted: dict[str, np.ndarray] | None = None

    def sketches(self, valid: list[ValidReply], global_np: dict[str, np.ndarray],
                 rows: list[int] | None = None) -> np.ndarray:
        """Float64 count sketches of ``rows`` (indices into the scanned ``valid``; all by
        default). A row whose float32 slot sums overflowed is sketched again from its float64
        update (:func:`~fedstrat.sampling.sketch.count_sketch` with the stream's map)."""
        if self.sketch is None or self.sums is None:
            raise ValueError("the scan made no sketches")
        stream = self.sketch
        idx = list(range(len(valid))) if rows is None else list(rows)
        out = self.sums.copy() if rows is None else self.sums[idx]
        for i in np.flatnonzero(~np.isfinite(out).all(axis=1)):
            v = valid[idx[i]]
            delta = np.concatenate([v.arrays[k].ravel().astype(np.float64)
                                    - global_np[k].ravel() for k in self.keys])
            out[i] = count_sketch(delta, stream.dim, stream.seed)  # ValueError if not finite
        return out


def _peaks64(x: np.ndarray, g: np.ndarray) -> tuple[float, float]:
    """Largest and smallest ``x - g`` in float64 (for a piece whose narrower difference was not
    finite)."""
    delta = x.astype(np.float64) - g.astype(np.float64)
    return float(delta.max()), float(delta.min())


def _ht_values(x: np.ndarray, g: np.ndarray, big_w: float, work: np.dtype) -> np.ndarray:
    """``x_g + W (x_i - x_g)`` in ``work`` precision, as a new array of ``x``'s dtype and
    shape. In steps of :data:`CHUNK` coordinates, so that the three operations of a step work
    in cache (one read of ``x_i`` and ``x_g`` and one write, not three passes over memory)."""
    y = np.empty(x.shape, dtype=work)
    xf, gf, yf = x.reshape(-1), g.reshape(-1), y.reshape(-1)
    for a in range(0, yf.size, CHUNK):
        ys, gs = yf[a : a + CHUNK], gf[a : a + CHUNK]
        np.subtract(xf[a : a + CHUNK], gs, out=ys, dtype=work)
        ys *= big_w
        np.add(ys, gs, out=ys, dtype=work)
    return y if y.dtype == x.dtype else y.astype(x.dtype)


def ht_arrays(
    valid: list[ValidReply], global_np: dict[str, np.ndarray], big_w: float
) -> list[dict[str, Array]]:
    """Per reply, its arrays with every floating key ``k`` replaced by the HT values
    ``x_g + W (x_i - x_g)`` (arithmetic in :func:`work_dtype`, cast to the reply array's
    dtype), as :class:`~.array_codec.DeferredArray`: computed when the wrapped strategy reads
    them (``Array.numpy()``), once per read, without ``.npy`` bytes written and parsed again.
    Integer arrays are the reply's own."""
    keys = float_keys(global_np)
    work = {k: work_dtype(valid, global_np, k) for k in keys}
    out = []
    for v in valid:
        record = v.message.content[v.array_key]
        new: dict[str, Array] = {}
        for k, x in v.arrays.items():
            if k in work:
                new[k] = DeferredArray(record[k], partial(_ht_values, x, global_np[k],
                                                          float(big_w), work[k]))
            else:
                new[k] = record[k]
        out.append(new)
    return out


def view_arrays(valid: list[ValidReply]) -> list[dict[str, Array]]:
    """Per reply, its arrays as :class:`~.array_codec.DeferredArray` whose ``numpy()`` is the
    read-only view of the reply's own values (``ValidReply.arrays``, decoded once): no
    ``.npy`` parse and copy per read. Only for a reader that does not write into the arrays
    (FedAvg's weighted mean, :func:`.inner_aggregate.mean_aggregate`)."""
    out = []
    for v in valid:
        record = v.message.content[v.array_key]
        out.append({k: DeferredArray(record[k], partial(_same, x)) for k, x in v.arrays.items()})
    return out


def _same(x: np.ndarray) -> np.ndarray:
    return x


def affine_ht(mean: ArrayRecord, global_np: dict[str, np.ndarray], big_w: float) -> ArrayRecord:
    """The HT estimate from the normalised weighted mean ``a = sum_i w_i x_i / W`` of the
    unchanged replies: ``x_g + W (a - x_g) = x_g + sum_i w_i (x_i - x_g)`` on the floating
    keys of ``global_np`` (work dtype of ``a`` and ``x_g``, at least float32; in steps of
    :data:`CHUNK`); other keys as they are. One pass over the aggregate instead of one
    :func:`ht_arrays` pass per reply."""
    out = ArrayRecord()
    for k, arr in mean.items():
        g = global_np.get(k)
        a = decode_array(arr) if g is not None and g.dtype.kind == "f" else None
        if a is None or a.dtype.kind != "f" or a.shape != g.shape:
            out[k] = arr
            continue
        work = np.dtype(np.result_type(np.float32, a.dtype, g.dtype))
        out[k] = encode_like(arr, _ht_values(a, g, float(big_w), work))
    return out


class ScanScratch:
    """The work blocks of :func:`scan_updates`, kept between calls: per work dtype one
    ``(rows, cols)`` block, grown to the largest asked for (at most :data:`GROUP` x
    :data:`CHUNK` values: 4 MB in float32), so that a round's scan writes into pages already
    mapped instead of faulting in fresh ones; after a group's steps the block of the count
    sketch's dtype is where its bucket sums are made, all rows at once
    (``CountSketchStream.result(work=...)``). One per caller (not shared between threads)."""

    def __init__(self) -> None:
        self._blocks: dict[tuple[np.dtype, bool], np.ndarray] = {}

    def block(self, rows: int, cols: int, dtype: np.dtype, slots: bool = False) -> np.ndarray:
        """A ``(rows, cols)`` view of the block of ``dtype`` (its values are garbage);
        ``slots``: another one, for the count sketch's slot sums (``CountSketchStream(slots=)``)."""
        key = (np.dtype(dtype), slots)
        b = self._blocks.get(key)
        if b is None or b.shape[0] < rows or b.shape[1] < cols:
            shape = (rows, cols) if b is None else (max(rows, b.shape[0]), max(cols, b.shape[1]))
            b = self._blocks[key] = np.empty(shape, dtype=key[0])
        return b[:rows, :cols]

    def slots(self, rows: int, cols: int, dtype: np.dtype) -> np.ndarray:
        """:meth:`block` ``(slots=True)``."""
        return self.block(rows, cols, dtype, slots=True)


def scan_updates(
    valid: list[ValidReply],
    global_np: dict[str, np.ndarray],
    *,
    sketch: tuple[int, int] | None = None,
    weights: np.ndarray | None = None,
    scratch: ScanScratch | None = None,
) -> UpdateScan | None:
    """One pass over every reply's floating arrays, in steps of :data:`CHUNK` coordinates.

    Per key the arithmetic is in :func:`work_dtype` (float32 for float32 models: the replies'
    own precision, no float64 round trip). Per step and reply: ``Delta = x_i - x_g``, its
    largest and smallest value (a float32 difference that overflows is recomputed in float64,
    so the peaks are those of the exact update) and, with ``sketch=(dim, seed)``, its count
    sketch (:class:`~fedstrat.sampling.sketch.CountSketchStream`, float32 slot sums when every
    key works in float32: bit for bit :func:`~fedstrat.sampling.count_sketch` of the stacked
    ``Delta`` rows). Step-major: the replies (at most :data:`GROUP` at a time) are the rows of
    one block per step, so the step of ``x_g``, its sign masks (made once) and of the weighted
    sums stay in cache, only the replies' own values are read from memory, and the peaks, the
    weighted sum and the sketch's slot sums are one operation each for the block. The HT arrays are
    :func:`ht_arrays` (values computed when read, after the screen). Replies are decoded once
    (views of their bytes); no ``(R, D)`` matrix. None without replies or floating arrays. A
    piece whose peaks are not finite even in float64 is checked for NaN / Inf in the reply's
    own values (``UpdateScan.nonfinite``): finite peaks of ``x_i - x_g`` imply a finite
    ``x_i`` when ``x_g`` is finite, so the replies need no separate finiteness pass
    (``check_finite=False`` of :func:`.triage.triage_replies`). With ``weights`` (aligned with
    ``valid``), also ``UpdateScan.weighted`` = ``sum_i w_i Delta_i`` per key, accumulated in
    the same step (the weighted mean of FedAvg without another pass over the replies).
    ``scratch``: the caller's :class:`ScanScratch` (default: blocks made for this call).
    """
    keys = float_keys(global_np)
    if not valid or not keys:
        return None
    d = sum(global_np[k].size for k in keys)
    work = {k: work_dtype(valid, global_np, k) for k in keys}
    narrow = all(w == np.float32 for w in work.values())
    stream = None
    scratch = ScanScratch() if scratch is None else scratch
    if sketch is not None:
        stream = CountSketchStream(d, sketch[0], sketch[1], min(len(valid), GROUP),
                                   dtype=np.float32 if narrow else np.float64,
                                   slots=scratch.slots)
    sums = None if stream is None else np.empty((len(valid), stream.dim))
    amax = np.zeros((len(valid), len(keys)))
    acc = None if weights is None else {k: np.empty(global_np[k].shape, work[k]) for k in keys}
    nonfinite: dict[int, str] = {}
    cols, rows = min(CHUNK, max(global_np[k].size for k in keys)), min(len(valid), GROUP)
    wide = None  # the bucket sums' scratch: the work block of the slots' dtype, >= B wide
    if stream is not None:
        wide = scratch.block(rows, max(cols, stream.map.width), stream.z.dtype)
    blocks = {w: scratch.block(rows, cols, w) for w in set(work.values())}
    with np.errstate(all="ignore"):
        for g0 in range(0, len(valid), GROUP):
            group = range(g0, min(g0 + GROUP, len(valid)))
            if stream is not None and g0:
                stream.z.fill(0)
            _scan_group(valid, global_np, keys, work, group, amax, nonfinite, stream,
                        acc, weights, blocks)
            if stream is not None and sums is not None:
                sums[g0 : group.stop] = stream.result(check=False, work=wide)[: len(group)]
    return UpdateScan(keys, amax, d, stream, work, nonfinite, sums, acc)


def _scan_group(
    valid: list[ValidReply],
    global_np: dict[str, np.ndarray],
    keys: list[str],
    work: dict[str, np.dtype],
    group: range,
    amax: np.ndarray,
    nonfinite: dict[int, str],
    stream: CountSketchStream | None,
    acc: dict[str, np.ndarray] | None,
    weights: np.ndarray | None,
    blocks: dict[np.dtype, np.ndarray],
) -> None:
    """:func:`scan_updates` of the replies ``group`` (stream row ``r - group.start``): fills
    their ``amax`` rows and ``nonfinite`` entries, adds to the stream and to ``acc``.

    Per step the group's differences are rows of its work dtype's block (``blocks``), so the
    peaks, the weighted sum (``einsum``: one pass for all rows, no product per reply) and the
    sketch's sign flip and slot sums are one operation each for the whole group."""
    n_rows = len(group)
    summing = acc is not None and weights is not None
    w_rows = {w: np.asarray(weights[group.start : group.stop], dtype=w)
              for w in blocks} if summing else {}
    spare = {w: np.empty(CHUNK, dtype=w) for w in blocks} if summing and group.start else {}
    start = 0
    for j, k in enumerate(keys):
        flat_g, wd, size = global_np[k].ravel(), work[k], global_np[k].size
        xs = [valid[r].arrays[k].ravel() for r in group]
        hi, lo = np.full(n_rows, -math.inf), np.full(n_rows, math.inf)
        finite = np.ones(n_rows, dtype=bool)
        for a in range(0, size, CHUNK):
            b = min(a + CHUNK, size)
            gc, dc = flat_g[a:b], blocks[wd][:n_rows, : b - a]
            for i, x in enumerate(xs):
                np.subtract(x[a:b], gc, out=dc[i], dtype=wd)
            if summing and acc is not None:  # sum_i w_i Delta_i
                part = acc[k].reshape(-1)[a:b]
                if group.start:
                    part += np.einsum("r,rc->c", w_rows[wd], dc, out=spare[wd][: b - a])
                else:
                    np.einsum("r,rc->c", w_rows[wd], dc, out=part)
            top, bottom = dc.max(axis=1).astype(np.float64), dc.min(axis=1).astype(np.float64)
            ok = np.isfinite(top) & np.isfinite(bottom)
            for i in np.flatnonzero(~ok):  # an overflow measured in float64, NaN stays NaN
                xc = xs[i][a:b]
                top[i], bottom[i] = _peaks64(xc, gc)
                ok[i] = math.isfinite(top[i]) and math.isfinite(bottom[i])
                r = group.start + int(i)
                if not ok[i] and r not in nonfinite and not all_finite(xc):
                    nonfinite[r] = k
            finite &= ok
            np.maximum(hi, top, out=hi, where=ok)
            np.minimum(lo, bottom, out=lo, where=ok)
            if stream is not None:  # last: flips the block's signs in place
                stream.add_block(start + a, dc, overwrite=True)
        if size:
            amax[group.start : group.stop, j] = np.where(finite, np.maximum(hi, -lo), math.inf)
        start += size


def rewrite_replies(
    valid: list[ValidReply],
    weights: np.ndarray,
    global_np: dict[str, np.ndarray],
    estimator: str,
    weighted_by_key: str,
    deltas: np.ndarray | None = None,
    controls: np.ndarray | None = None,
    offset: np.ndarray | None = None,
    prepared: list[dict[str, Array]] | None = None,
) -> list[Message]:
    """Copies of the replies for the wrapped strategy; the originals are untouched.

    Each reply's weight metric ``weighted_by_key`` becomes ``w_i``. With ``estimator="ht"``
    its floating arrays become ``x_g + W (x_i - x_g)``, ``W = sum_i w_i`` (``prepared``: these
    arrays already made with this ``W``, else :func:`ht_arrays`: arithmetic in
    :func:`work_dtype`, computed when read; with ``deltas`` and no ``prepared``: float64 from
    the matrix rows, cast back to each array's dtype), so that a normalised weighted average returns
    ``x_g + sum_i w_i (x_i - x_g)`` (up to the rounding of the arrays' dtype). With
    ``"ratio"`` the arrays are kept (``prepared``: :func:`view_arrays` of them): the average
    is ``sum_i w_i x_i / sum_i w_i``. With
    ``"difference"`` the arrays become
    ``x_g + A + W (Delta_i - c_i)`` (``deltas`` the :func:`flat_deltas` rows, ``controls`` the
    ``(R, D)`` rows ``c_i`` of the replies, ``offset`` ``A = sum_{i in U} p_i c_i``), so the
    average is ``x_g + A + sum_i w_i (Delta_i - c_i)``; the number of replies is unchanged.
    """
    big_w = float(weights.sum())
    keys = float_keys(global_np)
    arrays: list[dict[str, Array]] | None = None
    if estimator == "ht" and keys and valid:
        arrays = prepared
        if arrays is None and deltas is not None:
            arrays = _from_rows(valid, global_np, keys, deltas, big_w)
        if arrays is None:
            arrays = ht_arrays(valid, global_np, big_w)
    elif estimator == "ratio":
        arrays = prepared  # None: the replies' own arrays
    elif estimator == "difference" and keys and valid:
        if controls is None or offset is None:
            raise ValueError("estimator 'difference' needs controls and offset")
        if deltas is None:
            deltas = flat_deltas(valid, global_np)
        rows = big_w * (deltas - controls)  # type: ignore[operator]
        arrays = _from_rows(valid, global_np, keys, rows, 1.0, offset)
    contents = rewritten_contents(valid, weights, weighted_by_key, arrays)
    return [Message(content=c, metadata=copy.copy(v.message.metadata))
            for v, c in zip(valid, contents, strict=True)]


def rewritten_contents(
    valid: list[ValidReply],
    weights: np.ndarray,
    weighted_by_key: str,
    arrays: list[dict[str, Array]] | None = None,
) -> list[RecordDict]:
    """The contents of :func:`rewrite_replies`' copies: each reply's records with the weight
    metric ``weighted_by_key`` set to ``w_i`` and, with ``arrays``, its ArrayRecord holding
    ``arrays[i]`` instead (no Message: for a reader of the contents only, e.g. FedAvg's
    ``train_metrics_aggr_fn``)."""
    out, empty = [], ArrayRecord()
    for r, (v, w) in enumerate(zip(valid, weights, strict=True)):
        # Flower's shallow ``copy()``: the same items, without re-checking each one
        content = v.message.content.copy()
        if arrays is not None:
            record = empty.copy()  # no __init__ parsing; filled item by item: ArrayRecord(dict)
            # would copy every Array
            for k, a in arrays[r].items():
                record[k] = a
            put_records(content, {v.array_key: record})
        metrics = add_metrics(v.metrics.copy(), {weighted_by_key: float(w)})
        put_records(content, {v.metric_key: metrics})
        out.append(content)
    return out


def _from_rows(
    valid: list[ValidReply],
    global_np: dict[str, np.ndarray],
    keys: list[str],
    rows: np.ndarray,
    scale: float,
    offset: np.ndarray | None = None,
) -> list[dict[str, Array]]:
    """Per reply, its arrays with floating key ``k`` replaced by ``x_g + [offset] + scale *
    rows[i]`` (float64 over that key's columns), cast to the reply array's dtype."""
    bounds, start = {}, 0
    for k in keys:
        bounds[k] = (start, start + global_np[k].size)
        start += global_np[k].size
    out = []
    for r, v in enumerate(valid):
        record = v.message.content[v.array_key]
        new: dict[str, Array] = {}
        for k, x in v.arrays.items():
            if k not in bounds:
                new[k] = record[k]
                continue
            a, b = bounds[k]
            value = global_np[k].ravel().astype(np.float64)
            if offset is not None:
                value = value + offset[a:b]
            value = value + scale * rows[r, a:b]
            new[k] = encode_like(record[k], value.reshape(x.shape).astype(x.dtype))
        out.append(new)
    return out
