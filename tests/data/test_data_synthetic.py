"""The synthetic dataset: size options, determinism, label skew through the dirichlet partition."""

from __future__ import annotations

import numpy as np
import pytest

from fedstrat.data import load_dataset, partition_dataset
from fedstrat.data.info import dataset_info
from fedstrat.data.synthetic import informative_dims


def small(**kw):
    return load_dataset("synthetic", seed=kw.pop("seed", 0), samples=kw.pop("samples", 3000),
                        features=kw.pop("features", 12), classes=kw.pop("classes", 5), **kw)


def test_sizes_dtypes_and_split():
    ds = small()
    assert ds.task == "classification" and ds.num_classes == 5
    assert ds.num_train + ds.num_test == 3000 and abs(ds.num_test - 300) <= 5  # per-class rounding
    assert ds.x.shape == (ds.num_train, 12) and ds.x.dtype == np.float32 and ds.y.dtype == np.int64
    assert set(np.unique(ds.y)) == set(range(5)) == set(np.unique(ds.y_test))
    np.testing.assert_allclose(ds.x.mean(axis=0), 0.0, atol=1e-4)
    np.testing.assert_allclose(ds.x.std(axis=0), 1.0, atol=1e-3)
    assert not dataset_info("synthetic").local_files


def test_deterministic_given_seed():
    a, b, c = small(seed=3), small(seed=3), small(seed=4)
    np.testing.assert_array_equal(a.x, b.x)
    np.testing.assert_array_equal(a.y_test, b.y_test)
    assert not np.array_equal(a.x, c.x)


def test_classes_are_learnable():
    from sklearn.linear_model import LogisticRegression

    ds = small(samples=4000)
    acc = LogisticRegression(max_iter=300).fit(ds.x, ds.y).score(ds.x_test, ds.y_test)
    assert acc > 0.5  # chance is 0.2


def test_label_skew_through_dirichlet_partition():
    ds = small(samples=20000, classes=10, features=8)
    part = partition_dataset(ds, "dirichlet", 1000, alpha=0.1, seed=0)
    assert part.num_clients == 1000 and part.sizes.min() >= 1
    assert part.sizes.sum() == ds.num_train
    classes_per_client = (part.label_histograms > 0).sum(axis=1).mean()
    assert classes_per_client < 4  # strong label skew (iid would give ~10)


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"classes": 1}, "classes must be an integer >= 2"),
        ({"samples": 5}, "samples"),
        ({"features": 0}, "features must be an integer >= 1"),
        ({"features": 2, "classes": 10}, "need at least 4 features"),
        ({"rows": 10}, "does not take option"),
    ],
)
def test_bad_options_are_one_line_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        small(**kw)


def test_informative_dims():
    assert informative_dims(32, 10) == 16
    assert informative_dims(4, 10) == 4
    assert informative_dims(1, 2) == 1


def test_sizes_come_from_run_config_keys():
    from fedstrat.clients.data import DataSpec, load_partitioned
    from fedstrat.data.registry import run_options

    cfg = {"dataset": "synthetic", "synthetic-samples": 2000, "synthetic_features": 6,
           "synthetic-classes": 3, "num-clients": 20, "partition": "dirichlet"}
    assert run_options("synthetic", cfg) == {"samples": 2000, "features": 6, "classes": 3}
    assert run_options("mnist5k", cfg) == {}
    ds, part = load_partitioned(DataSpec.from_config(cfg))
    assert ds.x.shape[1] == 6 and ds.num_classes == 3 and ds.num_train + ds.num_test == 2000
    assert part.num_clients == 20
