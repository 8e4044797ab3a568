"""Evaluation metrics (numpy in, float out); nan where a metric is undefined."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def _as_1d(name: str, a: Sequence[float] | np.ndarray) -> np.ndarray:
    arr = np.asarray(a)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-d, got shape {arr.shape}")
    return arr


def accuracy(y_true: np.ndarray, logits_or_pred: np.ndarray) -> float:
    """Fraction of correct predictions; ``logits_or_pred`` is (N, K) scores or (N,) labels."""
    y = _as_1d("y_true", y_true)
    pred = np.asarray(logits_or_pred)
    if pred.ndim == 2:
        pred = pred.argmax(axis=1)
    if pred.shape != y.shape:
        raise ValueError(f"shape mismatch: y_true {y.shape} vs predictions {pred.shape}")
    return float(np.mean(pred == y)) if y.size else math.nan


def sigmoid(z: np.ndarray) -> np.ndarray:
    """Numerically stable ``1 / (1 + exp(-z))``."""
    z = np.asarray(z, dtype=np.float64)
    out = np.empty_like(z)
    pos = z >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-z[pos]))
    ez = np.exp(z[~pos])
    out[~pos] = ez / (1.0 + ez)
    return out


def binary_auc(y_true: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC = P(score of a random positive > score of a random negative) (ties count 1/2).

    nan when ``y_true`` holds only one class (AUC undefined).
    """
    y = _as_1d("y_true", y_true)
    s = _as_1d("scores", scores)
    if y.shape != s.shape:
        raise ValueError(f"shape mismatch: y_true {y.shape} vs scores {s.shape}")
    if np.unique(y).size < 2:
        return math.nan
    from sklearn.metrics import roc_auc_score  # lazy: sklearn.metrics costs ~1 s per process

    return float(roc_auc_score(y, s))


def binary_logloss(y_true: np.ndarray, probs: np.ndarray, eps: float = 1e-7) -> float:
    """``-mean(y log p + (1 - y) log(1 - p))`` with ``p`` clipped to ``[eps, 1 - eps]``."""
    y = _as_1d("y_true", y_true)
    p = _as_1d("probs", probs).astype(np.float64)
    if y.shape != p.shape:
        raise ValueError(f"shape mismatch: y_true {y.shape} vs probs {p.shape}")
    if y.size == 0:
        return math.nan
    p = np.clip(p, eps, 1.0 - eps)
    from sklearn.metrics import log_loss  # lazy, as above

    return float(log_loss(y, p, labels=[0, 1]))


def weighted_mean(values: Sequence[float], weights: Sequence[float]) -> float:
    """``sum_i w_i v_i / sum_i w_i`` ignoring nan values; nan when no weight remains."""
    v = np.asarray(values, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    if v.shape != w.shape:
        raise ValueError(f"values {v.shape} and weights {w.shape} differ in shape")
    if np.any(w < 0):
        raise ValueError("weights must be non-negative")
    ok = ~np.isnan(v)
    total = w[ok].sum()
    return float((w[ok] * v[ok]).sum() / total) if total > 0 else math.nan
