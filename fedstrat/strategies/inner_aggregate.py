"""How the accepted replies reach the wrapped strategy's ``aggregate_train``.

Any wrapped strategy gets rewritten replies (:func:`.rewrite.rewrite_replies`) whose weighted
average is the chosen estimate. When its ``aggregate_train`` is FedAvg's own (FedAvg, FedProx,
subclasses that keep it), its arrays are the normalised weighted mean
``a = sum_i w_i x_i / W`` of the replies (Flower's ``aggregate_arrayrecords``), so the HT
estimate ``x_g + sum_i w_i (x_i - x_g) = x_g + W (a - x_g)`` is one affine pass over ``a``
(:func:`.rewrite.affine_ht`): the replies go on unchanged with weights ``w_i``, and no pass
per reply makes ``x_g + W (x_i - x_g)``. FedAvg reads unchanged replies (this path and
``"ratio"`` rounds) as views of their bytes (:func:`.rewrite.view_arrays`). Server optimizers
(FedAdam, FedYogi, ...) and wrappers (DP) act on the mean itself, so they keep the rewritten
replies.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from flwr.app import ArrayRecord, MetricRecord
from flwr.serverapp.strategy import FedAvg, Strategy

from .reply_screen import consistent_replies
from .reply_validation import ValidReply
from .rewrite import affine_ht, rewrite_replies, view_arrays


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
    **rewrite: Any,
) -> tuple[ArrayRecord | None, MetricRecord | None, list[str]]:
    """``strategy.aggregate_train`` of the ``valid`` replies weighted ``weights`` as
    ``estimator`` (``rewrite``: the other keywords of :func:`.rewrite.rewrite_replies`:
    ``deltas``, ``controls``, ``offset``, ``prepared``); also the notes of what
    :func:`.reply_screen.consistent_replies` changed.

    ``estimator="ht"`` with a :func:`mean_aggregate` strategy: the replies' arrays are passed
    unchanged and the mean is made the HT estimate by :func:`.rewrite.affine_ht` with
    ``W = sum_i w_i`` (no HT arrays are needed: ``prepared`` is not used)."""
    mean = mean_aggregate(strategy)
    affine = mean and estimator == "ht"
    passed = "ratio" if affine else estimator
    if passed == "ratio" and mean:  # FedAvg reads the replies' own values, without copies
        rewrite["prepared"] = view_arrays(valid)
    replies = rewrite_replies(valid, weights, global_np, passed, weighted_by_key, **rewrite)
    replies, notes = consistent_replies(replies, weighted_by_key)
    arrays, metrics = strategy.aggregate_train(server_round, replies)
    if affine and arrays is not None:
        arrays = affine_ht(arrays, global_np, float(weights.sum()))
    return arrays, metrics, notes
