"""Model, data and parameters (scikit-learn logistic regression by SGD on the bundled digits).

Data as in ../quickstart-pytorch: 80/20 split with a fixed seed, Dirichlet(alpha) label skew
over the nodes. The model's parameters travel as ``coef`` (10 x 64) and ``intercept`` (10).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from flwr.app import Array, ArrayRecord
from sklearn.datasets import load_digits
from sklearn.linear_model import SGDClassifier
from sklearn.metrics import accuracy_score, log_loss

NUM_CLASSES, NUM_FEATURES, SEED = 10, 64, 42


@lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    x, y = load_digits(return_X_y=True)
    x = x / 16.0
    order = np.random.default_rng(SEED).permutation(len(y))
    cut = int(0.8 * len(y))
    return x[order[:cut]], y[order[:cut]], x[order[cut:]], y[order[cut:]]


@lru_cache(maxsize=4)
def _partition(num_partitions: int, alpha: float) -> list[np.ndarray]:
    _, y, _, _ = _digits()
    rng = np.random.default_rng(SEED)
    parts: list[list[int]] = [[] for _ in range(num_partitions)]
    for c in range(NUM_CLASSES):
        idx = rng.permutation(np.flatnonzero(y == c))
        cuts = np.cumsum(rng.dirichlet(np.full(num_partitions, alpha)))[:-1] * len(idx)
        for k, chunk in enumerate(np.split(idx, cuts.astype(int))):
            parts[k].extend(chunk.tolist())
    for k in range(num_partitions):
        if len(parts[k]) < 2:
            parts[k].extend(rng.integers(len(y), size=2).tolist())
    return [np.sort(np.array(p, dtype=np.int64)) for p in parts]


def load_data(partition_id: int, num_partitions: int, alpha: float = 0.3):
    """``(x_train, y_train)`` of this partition."""
    x, y, _, _ = _digits()
    idx = _partition(num_partitions, alpha)[partition_id]
    return x[idx], y[idx]


def test_data():
    _, _, x, y = _digits()
    return x, y


def get_model(local_epochs: int = 5, seed: int = 0) -> SGDClassifier:
    """Multinomial logistic regression trained by SGD (``partial_fit`` keeps all 10 classes
    even on a partition that lacks some)."""
    model = SGDClassifier(loss="log_loss", learning_rate="constant", eta0=0.05, alpha=1e-4,
                          random_state=seed)
    model.local_epochs = local_epochs
    return model


def set_params(model: SGDClassifier, arrays: ArrayRecord) -> SGDClassifier:
    model.classes_ = np.arange(NUM_CLASSES)
    model.coef_ = arrays["coef"].numpy().astype(np.float64).copy()
    model.intercept_ = arrays["intercept"].numpy().astype(np.float64).copy()
    return model


def get_params(model: SGDClassifier) -> ArrayRecord:
    return ArrayRecord({"coef": Array(np.asarray(model.coef_, dtype=np.float64)),
                        "intercept": Array(np.asarray(model.intercept_, dtype=np.float64))})


def initial_params() -> ArrayRecord:
    return ArrayRecord({"coef": Array(np.zeros((NUM_CLASSES, NUM_FEATURES))),
                        "intercept": Array(np.zeros(NUM_CLASSES))})


def fit(model: SGDClassifier, x: np.ndarray, y: np.ndarray) -> SGDClassifier:
    """``local_epochs`` passes of ``partial_fit`` from the received parameters."""
    for _ in range(getattr(model, "local_epochs", 5)):
        model.partial_fit(x, y, classes=np.arange(NUM_CLASSES))
    return model


def evaluate(model: SGDClassifier, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    p = model.predict_proba(x)
    return float(log_loss(y, p, labels=np.arange(NUM_CLASSES))), float(accuracy_score(
        y, p.argmax(1)))
