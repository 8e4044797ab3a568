"""Model, data and training of the digits app (numpy only).

Model: softmax regression ``p(y|x) = softmax(x W + b)`` on the 8x8 sklearn digits (64 features
scaled to [0, 1], 10 classes). Data: the 1,797 digits split 80/20 into train/test with a fixed
seed; the train split is partitioned over the nodes by label skew, Dirichlet(alpha) per class.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from flwr.app import Array, ArrayRecord, Context

NUM_CLASSES = 10
NUM_FEATURES = 64
SEED = 42


@lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits  # bundled with scikit-learn, no download

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    order = np.random.default_rng(SEED).permutation(len(y))
    cut = int(0.8 * len(y))
    tr, te = order[:cut], order[cut:]
    return x[tr], y[tr], x[te], y[te]


@lru_cache(maxsize=4)
def _partition(num_partitions: int, alpha: float) -> list[np.ndarray]:
    """Dirichlet(alpha) label-skew split of the train indices (same on every node)."""
    _, y, _, _ = _digits()
    rng = np.random.default_rng(SEED)
    parts: list[list[int]] = [[] for _ in range(num_partitions)]
    for c in range(NUM_CLASSES):
        idx = rng.permutation(np.flatnonzero(y == c))
        share = rng.dirichlet(np.full(num_partitions, alpha))
        cuts = (np.cumsum(share)[:-1] * len(idx)).astype(int)
        for k, chunk in enumerate(np.split(idx, cuts)):
            parts[k].extend(chunk.tolist())
    for k in range(num_partitions):  # no empty partition: borrow one example
        if not parts[k]:
            parts[k].append(int(rng.integers(len(y))))
    return [np.sort(np.array(p, dtype=np.int64)) for p in parts]


def load_data(context: Context, alpha: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """This node's ``(x, y)`` train partition (``partition-id`` of ``num-partitions``)."""
    pid = int(context.node_config["partition-id"])
    n = int(context.node_config["num-partitions"])
    alpha = float(context.run_config.get("alpha", alpha))
    x, y, _, _ = _digits()
    idx = _partition(n, alpha)[pid]
    return x[idx], y[idx]


def test_data() -> tuple[np.ndarray, np.ndarray]:
    """The held-out test split (server-side evaluation)."""
    _, _, x, y = _digits()
    return x, y


def init_arrays() -> ArrayRecord:
    """Zero-initialised model."""
    return ArrayRecord(
        {
            "w": Array(np.zeros((NUM_FEATURES, NUM_CLASSES), dtype=np.float32)),
            "b": Array(np.zeros(NUM_CLASSES, dtype=np.float32)),
        }
    )


def _probs(w: np.ndarray, b: np.ndarray, x: np.ndarray) -> np.ndarray:
    z = x @ w + b
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def train(
    arrays: ArrayRecord,
    x: np.ndarray,
    y: np.ndarray,
    epochs: int,
    lr: float,
    seed: int | tuple[int, ...],
    steps: int = 0,
) -> tuple[ArrayRecord, float]:
    """Mini-batch SGD (batch 32) on cross-entropy: ``epochs`` passes over the partition, or
    exactly ``steps`` mini-batch steps when ``steps > 0`` (reshuffled after each pass);
    returns new arrays and mean train loss."""
    w = arrays["w"].numpy().astype(np.float64)
    b = arrays["b"].numpy().astype(np.float64)
    rng = np.random.default_rng(seed)
    onehot = np.eye(NUM_CLASSES)[y]
    losses: list[float] = []

    def batches():
        while True:
            yield from np.array_split(rng.permutation(len(y)), max(1, len(y) // 32))

    n_steps = steps if steps > 0 else epochs * max(1, len(y) // 32)
    for _, batch in zip(range(n_steps), batches(), strict=False):
        p = _probs(w, b, x[batch])
        losses.append(float(-np.log(p[np.arange(len(batch)), y[batch]] + 1e-12).mean()))
        g = (p - onehot[batch]) / len(batch)
        w -= lr * x[batch].T @ g
        b -= lr * g.sum(axis=0)
    out = ArrayRecord({"w": Array(w.astype(np.float32)), "b": Array(b.astype(np.float32))})
    return out, float(np.mean(losses))


def evaluate(arrays: ArrayRecord, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """``(cross-entropy, accuracy)`` of the model on ``(x, y)``."""
    p = _probs(arrays["w"].numpy(), arrays["b"].numpy(), x)
    loss = float(-np.log(p[np.arange(len(y)), y] + 1e-12).mean())
    return loss, float((p.argmax(axis=1) == y).mean())
