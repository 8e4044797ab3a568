"""How the accepted replies reach the wrapped strategy's ``aggregate_train``.

Any wrapped strategy gets rewritten replies (:func:`.rewrite.rewrite_replies`) whose weighted
average is the chosen estimate. When its ``aggregate_train`` is FedAvg's own (FedAvg, FedProx,
subclasses that keep it), its arrays are the normalised weighted mean
``a = sum_i w_i x_i / W`` of the replies (Flower's ``aggregate_arrayrecords``), so the HT
estimate ``x_g + sum_i w_i (x_i - x_g) = x_g + W (a - x_g)`` is one affine pass over ``a``
(:func:`.rewrite.affine_ht`): the replies go on unchanged with weights ``w_i``, and no pass
per reply makes ``x_g + W (x_i - x_g)``. FedAvg reads unchanged replies (this path and
``"ratio"`` rounds) as views of their bytes (:func:`.rewrite.view_arrays`). When the reply
screen's pass already summed ``S = sum_i w_i Delta_i`` per floating key
(:func:`.reply_screen.screen_triage` with ``weighted``), the floating arrays are not read again at
all: the estimate is ``x_g + S`` (HT) or ``x_g + S / W`` (ratio: FedAvg's mean), and FedAvg gets
the replies with their other arrays only (integer buffers, if any), for its metrics and the
mean of those; with no other array (the usual float model) its aggregate would average none,
and the wrapper calls FedAvg's ``train_metrics_aggr_fn`` on the replies' rewritten contents
itself, no Message made (:func:`_fedavg_without_arrays`; not when ``aggregate_train`` is set
on the instance).
Server optimizers (FedAdam, FedYogi, ...) and wrappers (DP) act on the mean itself, so they
keep the rewritten replies.
"""

from __future__ import annotations

import logging
from logging import INFO
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg, Strategy

from .array_codec import encode_like
from .reply_screen import consistent_contents, consistent_replies
from .reply_validation import ValidReply
from .rewrite import affine_ht, rewrite_replies, rewritten_contents, view_arrays

log = logging.getLogger("flwr").log


def mean_aggregate(strategy: Any) -> bool:
    """True when ``strategy.aggregate_train`` is :class:`flwr.serverapp.strategy.FedAvg`'s
    own: its arrays are the normalised weighted mean of the replies' arrays."""
    return isinstance(strategy, FedAvg) and (
        type(strategy).aggregate_train is FedAvg.aggregate_train
    )


def aggregate_inner(
    strategy: Strategy,
    server_round: int,
    valid: list[ValidReply],
    weights: np.ndarray,
    global_np: dict[str, np.ndarray],
    estimator: str,
    weighted_by_key: str,
    weighted: dict[str, np.ndarray] | None = None,
    **rewrite: Any,
) -> tuple[ArrayRecord | None, MetricRecord | None, list[str]]:
    """``strategy.aggregate_train`` of the ``valid`` replies weighted ``weights`` as
    ``estimator`` (``rewrite``: the other keywords of :func:`.rewrite.rewrite_replies`:
    ``deltas``, ``controls``, ``offset``, ``prepared``); also the notes of what
    :func:`.reply_screen.consistent_replies` changed.

    ``estimator="ht"`` with a :func:`mean_aggregate` strategy: the replies' arrays are passed
    unchanged and the mean is made the HT estimate by :func:`.rewrite.affine_ht` with
    ``W = sum_i w_i`` (no HT arrays are needed: ``prepared`` is not used). With ``weighted``
    (``sum_i w_i Delta_i`` of these replies and weights per floating key) and estimator
    ``"ht"`` or ``"ratio"``, FedAvg sees only the other arrays (:func:`_with_weighted`)."""
    mean = mean_aggregate(strategy)
    summed = mean and weighted is not None and estimator in ("ht", "ratio") and bool(valid)
    affine = mean and estimator == "ht" and not summed
    passed = "ratio" if affine or summed else estimator
    if summed and weighted is not None:  # FedAvg: metrics and non-floating arrays only
        rewrite["prepared"] = [{k: v.message.content[v.array_key][k] for k in v.arrays
                                if k not in weighted} for v in valid]
    elif passed == "ratio" and mean:  # FedAvg reads the replies' own values, without copies
        rewrite["prepared"] = view_arrays(valid)
    if summed and not any(rewrite["prepared"]) and "aggregate_train" not in vars(strategy):
        contents = rewritten_contents(valid, weights, weighted_by_key, rewrite["prepared"])
        contents, notes = consistent_contents(contents, weighted_by_key)  # no Messages needed
        arrays, metrics = _fedavg_without_arrays(strategy, contents, weighted_by_key)
    else:
        replies = rewrite_replies(valid, weights, global_np, passed, weighted_by_key, **rewrite)
        replies, notes = consistent_replies(replies, weighted_by_key)
        arrays, metrics = strategy.aggregate_train(server_round, replies)
    if arrays is not None and summed and weighted is not None:
        scale = 1.0 if estimator == "ht" else 1.0 / float(weights.sum())
        arrays = _with_weighted(arrays, valid[0], global_np, weighted, scale)
    elif affine and arrays is not None:
        arrays = affine_ht(arrays, global_np, float(weights.sum()))
    return arrays, metrics, notes


def _fedavg_without_arrays(
    strategy: FedAvg, contents: list[RecordDict], weighted_by_key: str
) -> tuple[ArrayRecord, MetricRecord]:
    """What FedAvg's own ``aggregate_train`` returns for replies that carry no array (every
    floating array summed in the screen's pass, no other key): its log line, an empty
    ArrayRecord and ``train_metrics_aggr_fn`` of the replies' contents (the metrics' mean with
    weights ``w_i``), without its checks of replies already screened and made consistent and its
    pass over their empty ArrayRecords."""
    log(INFO, "aggregate_train: Received %s results and %s failures", len(contents), 0)
    metrics = strategy.train_metrics_aggr_fn(contents, weighted_by_key)
    return ArrayRecord(), metrics


def _with_weighted(
    others: ArrayRecord, first: ValidReply, global_np: dict[str, np.ndarray],
    weighted: dict[str, np.ndarray], scale: float,
) -> ArrayRecord:
    """The arrays in the key order of ``global_np``: floating key ``k`` is ``x_g + c S_k``
    (``c = 1``: HT; ``1 / W``: ratio, FedAvg's mean), any other key FedAvg's mean
    (``others``). ``S_k`` is the scan's own buffer, finished in place; encoded with the
    header of ``first``'s array (same dtype and shape)."""
    record = first.message.content[first.array_key]
    arrays = ArrayRecord()
    for k, g in global_np.items():
        if k in weighted:
            total = weighted[k]
            if scale != 1.0:
                total *= scale
            total += g
            arrays[k] = encode_like(record[k], total)
        elif k in others:
            arrays[k] = others[k]
    return arrays
