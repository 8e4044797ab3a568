"""What the server learns from accepted replies: sizes, update sketches, losses, costs."""

from __future__ import annotations

import contextlib
import time
from typing import Any

import numpy as np

from fedstrat.sampling import sketch_update

from .node_registry import NodeRegistry
from .reply_validation import ValidReply

_BLAS: Any = None


def single_thread_blas() -> Any:
    """Context limiting BLAS to one thread: the sketch product (m x D) @ (D x dim) is small,
    and a multi-threaded BLAS on a loaded machine can be 10-100x slower (spin-waiting)."""
    global _BLAS
    if _BLAS is None:
        try:
            from threadpoolctl import ThreadpoolController

            _BLAS = ThreadpoolController()
        except ImportError:  # pragma: no cover - threadpoolctl ships with scikit-learn
            _BLAS = False
    if _BLAS is False:
        return contextlib.nullcontext()
    return _BLAS.limit(limits=1, user_api="blas")


def observe_replies(
    registry: NodeRegistry,
    valid: list[ValidReply],
    deltas: np.ndarray | None,
    sent_at: dict[int, float],
    sketch_dim: int,
    sketch_seed: int,
    cost_key: str,
    sketch_method: str = "gaussian",
    sketches: np.ndarray | None = None,
) -> np.ndarray | None:
    """Record each accepted reply in ``registry``; return the update sketches (or None).

    Sketch: :func:`fedstrat.sampling.sketch_update` of ``Delta_i`` (``deltas`` rows) with
    ``sketch_method`` (``sketches``: those sketches, made already in the reply screen's
    pass; ``deltas`` is then not used). Cost: the
    reply metric ``cost_key`` (seconds), else the reply's creation time minus the
    instruction's. Loss: the ``train-loss`` metric.
    """
    if sketches is None and deltas is not None:
        with single_thread_blas():
            sketches = sketch_update(deltas, sketch_dim, sketch_seed, method=sketch_method)
    now = time.time()
    for r, v in enumerate(valid):
        loss = v.metrics.get("train-loss")
        cost = v.metrics.get(cost_key)
        if cost is None or isinstance(cost, list):
            sent = sent_at.get(v.node_id)
            created = v.message.metadata.created_at
            cost = (created or now) - sent if sent else None
        registry.observe_train(
            v.node_id,
            num_examples=v.num_examples,
            sketch=None if sketches is None else sketches[r],
            loss=None if loss is None or isinstance(loss, list) else float(loss),
            cost=None if cost is None else float(cost),
        )
    return sketches


def residual_sketches(
    sketches: np.ndarray | None,
    controls: np.ndarray | None,
    sketch_dim: int,
    sketch_seed: int,
    sketch_method: str = "gaussian",
) -> np.ndarray | None:
    """``sketch(Delta_i) - sketch(c_i)`` = ``sketch(Delta_i - c_i)`` (sketches are linear):
    the residual sketches of the difference estimator (None without sketches or controls)."""
    if sketches is None or controls is None or len(controls) != len(sketches):
        return None
    with single_thread_blas():
        sc = sketch_update(np.asarray(controls, dtype=np.float64), sketch_dim, sketch_seed,
                           method=sketch_method)
    return np.asarray(sketches, dtype=np.float64) - sc
