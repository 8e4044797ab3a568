"""No single accepted reply can stop or blow up a round.

:func:`screen_magnitudes` rejects updates whose finite values would overflow the aggregate
after weighting (or the server's sketch statistics); :func:`consistent_replies` makes the
replies handed to the wrapped strategy agree on record names and metric keys (Flower's
weighted average raises ``InconsistentMessageReplies`` otherwise, and the job dies).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
from collections import Counter
from dataclasses import dataclass
from logging import WARNING
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict

from .plan import RoundPlan
from .reply_validation import ValidReply, nonfinite_reason
from .rewrite import ScanScratch, UpdateScan, flat_deltas, float_keys, ht_arrays, scan_updates
from .triage import ReplyProblem, Triage, reply_weights

log = logging.getLogger("flwr").log

#: bound on ``sqrt(D) max_j |Delta_ij|`` (>= the update's L2 norm): the update sketch (norm
#: about ``||Delta_i||``) and the variance tracker's squared sketch distances, summed with
#: weights over many rounds, then stay far inside float64 (``sqrt(finfo.max)`` ~ 1.3e154).
STAT_LIMIT = math.sqrt(float(np.finfo(np.float64).max)) * 1e-6


@dataclass(frozen=True)
class Screened:
    """The replies kept by :func:`screen_magnitudes` (in order), those it rejected, the kept
    replies' responder weights and notes (:func:`.triage.reply_weights`), their rows of the
    update matrix (None without floating-point arrays, or when :func:`screen_triage` was not
    asked for the matrix), their count sketches, their HT-rewritten arrays and their weighted
    update sums ``sum_i w_i Delta_i`` per floating key when :func:`screen_triage` made them
    in its pass (else None)."""

    valid: list[ValidReply]
    rejected: list[ReplyProblem]
    weights: np.ndarray
    notes: list[str]
    deltas: np.ndarray | None
    sketches: np.ndarray | None = None
    rewritten: list[Any] | None = None
    weighted: dict[str, np.ndarray] | None = None


def _float_limit(valid: list[ValidReply], key: str) -> float:
    """Largest magnitude of the narrowest floating dtype the replies use for ``key``."""
    dtypes = {v.arrays[key].dtype for v in valid
              if key in v.arrays and v.arrays[key].dtype.kind == "f"}  # finfo once per dtype
    return (float(min(np.finfo(d).max for d in dtypes)) if dtypes
            else float(np.finfo(np.float64).max))


def _peaks(deltas: np.ndarray, sizes: list[int]) -> np.ndarray:
    """``(R, K)`` ``max |Delta_i,k|`` of the matrix rows per key (``inf`` if not finite)."""
    amax = np.zeros((deltas.shape[0], len(sizes)))
    for r in range(deltas.shape[0]):
        a = 0
        for j, size in enumerate(sizes):
            if size:
                hi, lo = float(deltas[r, a:a + size].max()), float(deltas[r, a:a + size].min())
                finite = math.isfinite(hi) and math.isfinite(lo)
                amax[r, j] = max(hi, -lo) if finite else math.inf
            a += size
    return amax


def screen_magnitudes(
    plan: RoundPlan,
    valid: list[ValidReply],
    global_np: dict[str, np.ndarray],
    deltas: np.ndarray | UpdateScan | None,
    weights: tuple[np.ndarray, list[str]] | None = None,
) -> Screened:
    """Reject replies with finite values too large to aggregate; weight the rest.

    ``deltas``: :func:`.rewrite.flat_deltas` of ``valid`` (floating keys of ``global_np`` in
    order), or their :func:`.rewrite.scan_updates` (the same per-key peaks without the
    matrix). With ``R`` kept replies, responder weight total ``W`` (of :func:`reply_weights` on
    the kept replies) and, per floating array ``k``, ``M_k`` the largest finite value of the
    narrowest dtype the replies use for it, reply ``i`` is kept when for every ``k``
    ``max|x_g,k| + max(W, 1) max|Delta_i,k| <= M_k / R``: every rewritten HT value
    ``x_g + W Delta_i`` (or raw value, ratio) and every partial sum of a weighted average with
    weights summing to 1 are then finite. Also ``sqrt(D) max|Delta_i| <= STAT_LIMIT`` (update
    sketches). Rejecting a reply changes ``W``, so this repeats until nothing is rejected.
    A reply whose own values hold NaN or Inf (``UpdateScan.nonfinite``) is rejected first, with
    that reason (the triage leaves this check to the scan, ``check_finite=False``).
    The returned ``deltas`` are the kept rows of a matrix ``deltas`` (None for a scan).
    ``weights``: :func:`reply_weights` of ``valid`` if already made.
    """
    weights, notes = reply_weights(plan, valid) if weights is None else weights
    keys = float_keys(global_np)
    matrix = deltas if isinstance(deltas, np.ndarray) else None
    if deltas is None or not keys or not valid:
        return Screened(valid, [], weights, notes, matrix)
    nonfinite: dict[int, str] = {}
    if isinstance(deltas, UpdateScan):
        amax, n_coords, nonfinite = deltas.amax, deltas.d, deltas.nonfinite
    else:
        amax, n_coords = _peaks(deltas, [global_np[k].size for k in keys]), deltas.shape[1]
    gmax = np.array([max(float(global_np[k].max()), -float(global_np[k].min()))
                     if global_np[k].size else 0.0 for k in keys])  # max |x_g|, no |x_g| copy
    limits = np.array([_float_limit(valid, k) for k in keys])
    rows = list(range(len(valid)))
    rejected: list[ReplyProblem] = []

    def drop(r: int, reason: str) -> None:
        rejected.append(ReplyProblem(valid[r].node_id, reason))
        log(WARNING, "aggregate_train: rejected reply of node %d: %s", valid[r].node_id, reason)
        rows.remove(r)

    root_d = math.sqrt(float(n_coords))
    for r in list(rows):
        peak = float(amax[r].max())
        if r in nonfinite:
            drop(r, nonfinite_reason(nonfinite[r]))
        elif not math.isfinite(peak) or peak * root_d > STAT_LIMIT:
            drop(r, f"update too large for the server's statistics (max |x_i - x_g| = {peak:.3g})")
    while rows:
        if len(rows) < len(valid):
            weights, notes = reply_weights(plan, [valid[r] for r in rows])
        big_w = max(float(weights.sum()), 1.0)
        cap = limits / len(rows)
        bad = [r for r in rows if np.any(gmax + big_w * amax[r] > cap)]
        if not bad:
            break
        n_before = len(rows)
        for r in bad:
            j = int(np.argmax(gmax + big_w * amax[r] - cap))
            drop(r, f"update would overflow the aggregate: max |x_i - x_g| = {amax[r, j]:.3g} "
                    f"in '{keys[j]}' times W = {big_w:.4g} exceeds {cap[j]:.3g} "
                    f"(largest value / {n_before} replies)")
    if not rows:
        weights, notes = reply_weights(plan, [])
    if len(rows) == len(valid):
        return Screened(valid, rejected, weights, notes, matrix)
    kept = None if matrix is None else matrix[rows]
    return Screened([valid[r] for r in rows], rejected, weights, notes, kept)


def screen_triage(
    plan: RoundPlan,
    triage: Triage,
    global_np: dict[str, np.ndarray],
    *,
    sketch: tuple[int, int] | None = None,
    matrix: bool = True,
    rewrite: bool = False,
    weighted: bool = False,
    scratch: ScanScratch | None = None,
) -> tuple[Triage, Screened]:
    """:func:`screen_magnitudes` of the triaged replies: the triage with the screened-out
    replies moved to ``rejected``, and the screen (weights, notes, update rows).

    One :func:`.rewrite.scan_updates` pass over the replies gives the peaks; with
    ``sketch=(dim, seed)`` also the kept replies' count sketches (``Screened.sketches``), with
    ``rewrite`` their HT arrays ``x_g + W Delta_i`` with the kept replies' ``W``
    (``Screened.rewritten``: :func:`.rewrite.ht_arrays`, computed when read). ``matrix``: also
    the ``(R, D)`` float64
    update rows (``Screened.deltas``; the difference estimator and Gaussian sketches need
    them). ``weighted``: also ``sum_i w_i Delta_i`` per floating key with the replies' weights
    (``Screened.weighted``, accumulated in the pass), when every reply array has its global
    array's dtype (float32 or float64) and the screen keeps every reply (else None: a
    rejection changes the weights). ``scratch``: the scan's work blocks, kept by the caller.
    """
    valid = triage.valid
    first = reply_weights(plan, valid) if weighted and _summable(valid, global_np) else None
    scan = scan_updates(valid, global_np, sketch=sketch,
                        weights=None if first is None else first[0], scratch=scratch)
    deltas = flat_deltas(valid, global_np) if matrix else None
    screened = screen_magnitudes(plan, valid, global_np, scan, weights=first)
    kept = [valid.index(v) for v in screened.valid] if screened.rejected else None
    extra: dict[str, Any] = {}
    if deltas is not None:
        extra["deltas"] = deltas if kept is None else deltas[kept]
    if scan is not None and scan.sketch is not None:
        extra["sketches"] = scan.sketches(valid, global_np, kept)
    if rewrite and scan is not None and screened.valid:
        extra["rewritten"] = ht_arrays(screened.valid, global_np, float(screened.weights.sum()))
    if scan is not None and kept is None and screened.valid:
        extra["weighted"] = scan.weighted
    screened = dataclasses.replace(screened, **extra)
    if not screened.rejected:
        return triage, screened
    return dataclasses.replace(triage, valid=screened.valid,
                               rejected=triage.rejected + screened.rejected), screened


def _summable(valid: list[ValidReply], global_np: dict[str, np.ndarray]) -> bool:
    """Every floating global array is float32 or float64 and every reply's array of that key
    has its dtype: the weighted sums are then in the dtype FedAvg's mean would have."""
    keys = float_keys(global_np)
    return all(global_np[k].dtype in (np.float32, np.float64) for k in keys) and all(
        v.arrays[k].dtype == global_np[k].dtype for v in valid for k in keys)


def _majority(names: list[str]) -> str:
    """The most frequent name (ties: the one seen first)."""
    counts = Counter(names)
    best = max(counts.values())
    return next(n for n in names if counts[n] == best)


def _kind(value: object) -> tuple[str, int]:
    return ("list", len(value)) if isinstance(value, list) else ("scalar", 0)


def _first_records(content: RecordDict) -> tuple[str, str, MetricRecord]:
    """Name of the first ArrayRecord ("" if none), name and record of the first MetricRecord,
    in one pass over ``content`` (Flower's ``array_records`` / ``metric_records`` build and
    check a new mapping on every access)."""
    arr, met, rec = "", "", None
    for key, value in content.items():
        if not arr and isinstance(value, ArrayRecord):
            arr = key
        elif rec is None and isinstance(value, MetricRecord):
            met, rec = key, value
    if rec is None:
        raise ValueError("reply without a MetricRecord")
    return arr, met, rec


def consistent_replies(
    replies: list[Message], weighted_by_key: str
) -> tuple[list[Message], list[str]]:
    """Replies the wrapped strategy accepts as consistent, and notes of what was changed.

    Every reply has one MetricRecord and at most one ArrayRecord (training replies: exactly
    one, validated). Records named unlike the majority are renamed to the majority's name;
    metric keys that are not in every reply, or whose values differ in kind (scalar vs list,
    list lengths), are dropped (the weight metric ``weighted_by_key`` is in every reply).
    Replies that need no change are returned as they are (the same objects).
    """
    if len(replies) < 2:
        return replies, []
    contents, notes = consistent_contents([m.content for m in replies], weighted_by_key)
    if not notes:
        return replies, []
    return [Message(content=c, metadata=copy.copy(m.metadata))
            for m, c in zip(replies, contents, strict=True)], notes


def consistent_contents(
    contents: list[RecordDict], weighted_by_key: str
) -> tuple[list[RecordDict], list[str]]:
    """:func:`consistent_replies` of the replies' contents: the same contents (the same
    objects) when nothing needs a change, else a new RecordDict per reply; notes (logged)."""
    if len(contents) < 2:
        return contents, []
    arr_names, met_names, metrics = zip(*(_first_records(c) for c in contents), strict=True)
    arr_name = _majority([a for a in arr_names if a] or [""])
    met_name = _majority(list(met_names))
    common = set(metrics[0])
    for rec in metrics[1:]:
        common &= set(rec)
    keep = {k for k in common if len({_kind(rec[k]) for rec in metrics}) == 1}
    keep.add(weighted_by_key)
    dropped = sorted(set().union(*(set(rec) for rec in metrics)) - keep)
    notes: list[str] = []
    renamed = sum((a and a != arr_name) or b != met_name
                  for a, b in zip(arr_names, met_names, strict=True))
    if renamed:
        notes.append(f"{renamed} replies' records renamed to '{arr_name}' / '{met_name}'")
    if dropped:
        notes.append(f"metrics not in every reply (or of differing kinds) left out of the "
                     f"aggregate: {dropped}")
    if not notes:
        return contents, []
    for note in notes:
        log(WARNING, "aggregate_train: %s", note)
    out = []
    for old, a, b, rec in zip(contents, arr_names, met_names, metrics, strict=True):
        content = RecordDict()
        for key, value in old.items():
            if a and key == a:
                content[arr_name] = value
            elif key == b:
                content[met_name] = MetricRecord({k: v for k, v in rec.items() if k in keep})
            else:
                content[key] = value
        out.append(content)
    return out, notes


def screen_evaluate_replies(
    replies: list[Message], weighted_by_key: str
) -> tuple[list[Message], list[str]]:
    """Evaluation replies the wrapped strategy can aggregate, and notes of what was changed.

    Error replies pass (the wrapped strategy counts them as failures). A reply without exactly
    one MetricRecord, or whose ``weighted_by_key`` is missing, a list, not finite or negative,
    is left out (WARNING with the reason), and all are when the weights sum to 0 (nothing to
    average); the rest go through :func:`consistent_replies`.
    """
    ok: list[Message] = []
    errors: list[Message] = []
    notes: list[str] = []
    for msg in replies:
        if msg.has_error():
            errors.append(msg)
            continue
        records = msg.content.metric_records
        w = next(iter(records.values())).get(weighted_by_key) if len(records) == 1 else None
        if len(records) != 1:
            reason = f"expected exactly one MetricRecord, got {len(records)}"
        elif w is None or isinstance(w, list) or not math.isfinite(float(w)) or float(w) < 0:
            reason = f"metric '{weighted_by_key}' must be finite and >= 0, got {w}"
        else:
            ok.append(msg)
            continue
        node = int(msg.metadata.src_node_id)
        notes.append(f"evaluation reply of node {node} left out: {reason}")
        log(WARNING, "aggregate_evaluate: %s", notes[-1])
    total = sum(float(next(iter(m.content.metric_records.values()))[weighted_by_key])
                for m in ok)
    if ok and total <= 0:
        notes.append(f"evaluation replies' '{weighted_by_key}' sum to 0: nothing to average")
        log(WARNING, "aggregate_evaluate: %s", notes[-1])
        return errors, notes
    ok, fixed = consistent_replies(ok, weighted_by_key)
    return ok + errors, notes + fixed
