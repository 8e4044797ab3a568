"""Synthetic classification data of any size, for runs with many clients.

``load_synthetic`` draws ``samples`` rows with scikit-learn's ``make_classification``: each class
is one Gaussian cluster around a vertex of a hypercube in ``informative`` dimensions (side
``2 * class_sep``), the remaining ``features - informative`` columns are independent N(0, 1)
noise, and a fraction ``flip_y`` of the labels is replaced by random ones. Features are
standardised with the train split's mean and std. Label skew across clients comes from the
partition (``dirichlet``), as for the real datasets; nothing is read from disk.
"""

from __future__ import annotations

import math

import numpy as np

from fedstrat.data.base import Dataset, stratified_split

#: Default size: 200,000 rows x 32 features (25.6 MB float32), 10 classes.
DEFAULT_SAMPLES = 200_000
DEFAULT_FEATURES = 32
DEFAULT_CLASSES = 10


def informative_dims(features: int, classes: int) -> int:
    """``max(ceil(log2 classes), features // 2)`` informative columns, at most ``features``.

    ``make_classification`` needs ``classes <= 2 ** informative`` (one hypercube vertex per
    class); ``ValueError`` when ``features`` is too small for that.
    """
    need = max(1, math.ceil(math.log2(classes)))
    if need > features:
        raise ValueError(
            f"synthetic: {classes} classes need at least {need} features (one hypercube vertex "
            f"per class), got {features}"
        )
    return max(need, features // 2)


def load_synthetic(
    seed: int = 0,
    samples: int = DEFAULT_SAMPLES,
    features: int = DEFAULT_FEATURES,
    classes: int = DEFAULT_CLASSES,
    test_fraction: float = 0.1,
    class_sep: float = 1.0,
    flip_y: float = 0.01,
) -> Dataset:
    """``samples`` rows (train + test) of ``features`` float32 columns and ``classes`` labels.

    Deterministic given ``seed`` (data and the stratified train/test split). ``x`` has shape
    ``(n, features)``; the test split is ``round(test_fraction * n_c)`` rows of each class c.
    """
    from sklearn.datasets import make_classification

    for name, value, low in (("samples", samples, 2), ("features", features, 1),
                             ("classes", classes, 2)):
        if int(value) != value or value < low:
            raise ValueError(f"synthetic: {name} must be an integer >= {low}, got {value!r}")
    samples, features, classes = int(samples), int(features), int(classes)
    if samples < 2 * classes:
        raise ValueError(f"synthetic: samples ({samples}) must be >= 2 x classes ({classes})")
    informative = informative_dims(features, classes)
    x, y = make_classification(
        n_samples=samples,
        n_features=features,
        n_informative=informative,
        n_redundant=0,
        n_repeated=0,
        n_classes=classes,
        n_clusters_per_class=1,
        class_sep=class_sep,
        flip_y=flip_y,
        shuffle=True,
        random_state=seed,
    )
    train, test = stratified_split(y, test_fraction, seed)
    x = x.astype(np.float32)
    mean = x[train].mean(axis=0)
    std = x[train].std(axis=0) + np.float32(1e-6)
    x -= mean
    x /= std
    y = y.astype(np.int64)
    return Dataset(
        name="synthetic",
        task="classification",
        x=np.ascontiguousarray(x[train]),
        y=y[train],
        num_classes=classes,
        x_test=np.ascontiguousarray(x[test]),
        y_test=y[test],
        meta={
            "samples": samples, "features": features, "classes": classes,
            "informative": informative, "class_sep": class_sep, "flip_y": flip_y,
        },
    )
