"""The pure reply rewrite that makes the wrapped strategy's weighted average the HT, ratio or
difference (control-variate) estimate."""

from __future__ import annotations

import copy

import numpy as np
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict

from .array_codec import encode_like
from .reply_validation import ValidReply


def flat_deltas(valid: list[ValidReply], global_np: dict[str, np.ndarray]) -> np.ndarray | None:
    """``(R, D)`` float64 matrix of flattened floating-point updates ``x_i - x_g`` (keys in the
    order of the global arrays; integer arrays left out); None without replies or floats."""
    keys = [k for k, v in global_np.items() if v.dtype.kind == "f"]
    if not valid or not keys:
        return None
    g = np.concatenate([global_np[k].ravel() for k in keys]).astype(np.float64)
    out = np.empty((len(valid), g.size))
    for r, v in enumerate(valid):
        out[r] = np.concatenate([v.arrays[k].ravel() for k in keys])
    out -= g
    return out


def rewrite_replies(
    valid: list[ValidReply],
    weights: np.ndarray,
    global_np: dict[str, np.ndarray],
    estimator: str,
    weighted_by_key: str,
    deltas: np.ndarray | None = None,
    controls: np.ndarray | None = None,
    offset: np.ndarray | None = None,
) -> list[Message]:
    """Copies of the replies for the wrapped strategy; the originals are untouched.

    Each reply's weight metric ``weighted_by_key`` becomes ``w_i``. With ``estimator="ht"``
    its floating arrays become ``x_g + W (x_i - x_g)``, ``W = sum_i w_i`` (float64 from
    ``deltas`` = :func:`flat_deltas`, cast back to each array's dtype), so that a normalised
    weighted average returns ``x_g + sum_i w_i (x_i - x_g)`` exactly. With ``"ratio"`` the
    arrays are kept: the average is ``sum_i w_i x_i / sum_i w_i``. With ``"difference"`` the
    arrays become ``x_g + A + W (Delta_i - c_i)`` (``controls`` the ``(R, D)`` rows ``c_i`` of
    the replies, ``offset`` ``A = sum_{i in U} p_i c_i``), so the average is
    ``x_g + A + sum_i w_i (Delta_i - c_i)``; the number of replies is unchanged either way.
    """
    rewrite = estimator in ("ht", "difference")
    big_w = float(weights.sum())
    float_keys = [k for k, a in global_np.items() if a.dtype.kind == "f"]
    if rewrite and float_keys and deltas is None:
        deltas = flat_deltas(valid, global_np)
    bounds: dict[str, tuple[int, int]] = {}
    start = 0
    for k in float_keys:
        bounds[k] = (start, start + global_np[k].size)
        start += global_np[k].size
    g_flat = (
        np.concatenate([global_np[k].ravel() for k in float_keys]).astype(np.float64)
        if float_keys
        else None
    )
    out = []
    for r, (v, w) in enumerate(zip(valid, weights, strict=True)):
        content = RecordDict()
        for key, rec in v.message.content.items():
            content[key] = rec
        if rewrite:
            record = v.message.content[v.array_key]
            new: dict[str, Array] = {}
            flat = None
            if g_flat is not None and deltas is not None:
                if estimator == "difference":
                    if controls is None or offset is None:
                        raise ValueError("estimator 'difference' needs controls and offset")
                    flat = g_flat + offset + big_w * (deltas[r] - controls[r])
                else:
                    flat = g_flat + big_w * deltas[r]
            for k, x in v.arrays.items():
                if k in bounds and flat is not None:
                    a, b = bounds[k]
                    new[k] = encode_like(record[k], flat[a:b].reshape(x.shape).astype(x.dtype))
                else:
                    new[k] = record[k]
            content[v.array_key] = ArrayRecord(new)
        metrics = MetricRecord(dict(v.metrics))
        metrics[weighted_by_key] = float(w)
        content[v.metric_key] = metrics
        out.append(Message(content=content, metadata=copy.copy(v.message.metadata)))
    return out
