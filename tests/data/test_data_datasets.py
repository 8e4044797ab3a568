"""Real embedded datasets: shapes, dtypes, label ranges, splits; registry errors."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from fedstrat.data import DataError, Dataset, list_datasets, load_dataset

HAS_RECBOLE = importlib.util.find_spec("recbole") is not None
needs_recbole = pytest.mark.skipif(not HAS_RECBOLE, reason="recbole wheel (MovieLens-100k) absent")


def test_digits_shapes_and_split() -> None:
    from sklearn.datasets import load_digits

    ref = load_digits()
    ds = load_dataset("digits")
    # same images and labels as scikit-learn's loader (as a multiset of (image, label) rows)
    ours = np.concatenate([ds.x, ds.x_test]).reshape(1797, 64) * 16
    both = np.concatenate([ours, np.concatenate([ds.y, ds.y_test])[:, None]], axis=1)
    theirs = np.concatenate([ref.data, ref.target[:, None]], axis=1)
    np.testing.assert_array_equal(np.unique(both, axis=0), np.unique(theirs, axis=0))
    assert ds.task == "classification" and ds.num_classes == 10
    assert ds.x.dtype == np.float32 and ds.x.shape[1:] == (1, 8, 8)
    assert ds.y.dtype == np.int64
    assert ds.num_train + ds.num_test == 1797
    assert ds.num_test == pytest.approx(0.2 * 1797, abs=10)
    assert 0.0 <= ds.x.min() and ds.x.max() <= 1.0 and ds.x.max() == 1.0
    assert set(np.unique(ds.y)) == set(range(10)) == set(np.unique(ds.y_test))
    # stratified: every class's test share is ~20%
    for c in range(10):
        n_c = (ds.y == c).sum() + (ds.y_test == c).sum()
        assert abs((ds.y_test == c).sum() - 0.2 * n_c) <= 0.5 + 1e-9


def test_mnist5k_shapes_split_and_determinism() -> None:
    ds = load_dataset("mnist5k")
    assert ds.x.shape == (4000, 1, 28, 28) and ds.x_test.shape == (1000, 1, 28, 28)
    assert ds.x.dtype == np.float32 and ds.y.dtype == np.int64
    assert 0.0 <= ds.x.min() and ds.x.max() <= 1.0
    assert np.bincount(ds.y_test).tolist() == [100] * 10
    assert np.bincount(ds.y).tolist() == [400] * 10
    # MNIST images are mostly background: mean pixel ~0.13
    assert 0.08 < float(ds.x.mean()) < 0.2
    same = load_dataset("mnist5k", seed=0)
    other = load_dataset("mnist5k", seed=1)
    np.testing.assert_array_equal(same.x, ds.x)
    np.testing.assert_array_equal(same.y_test, ds.y_test)
    assert not np.array_equal(other.x_test, ds.x_test)
    # train and test are disjoint images: no test image equals a train image of seed 0's split
    train_set = {row.tobytes() for row in ds.x.reshape(len(ds.x), -1)}
    assert sum(row.tobytes() in train_set for row in ds.x_test.reshape(1000, -1)) < 5
    # callers may modify their copy without corrupting the in-process cache
    ds.x[:] = 0.0
    assert load_dataset("mnist5k").x.max() == 1.0


def test_mnist5k_normalize() -> None:
    raw = load_dataset("mnist5k")
    norm = load_dataset("mnist5k", normalize=True)
    np.testing.assert_allclose(norm.x, (raw.x - 0.1307) / 0.3081, rtol=1e-5, atol=1e-5)


@pytest.mark.ctr
@needs_recbole
def test_movielens100k_fields_labels_keys() -> None:
    ds = load_dataset("movielens-100k")
    assert ds.task == "ctr" and ds.num_classes == 2
    assert ds.num_train == 80_000 and ds.num_test == 20_000
    assert ds.x.dtype == np.int64 and ds.y.dtype == np.float32
    assert ds.field_names == ["user", "item", "gender", "age", "occupation", "zip", "genre", "year"]
    # vocabulary sizes + 1 "unknown" id per field
    assert ds.field_dims is not None and ds.field_dims[:2] == [943 + 1, 1682 + 1]
    assert ds.field_dims[2] == 2 + 1 and ds.field_dims[4] == 21 + 1
    assert (ds.x >= 0).all() and (ds.x < np.array(ds.field_dims)).all()
    assert (ds.x_test < np.array(ds.field_dims)).all()
    assert set(np.unique(ds.y)) == {0.0, 1.0}
    pos = (ds.y.sum() + ds.y_test.sum()) / 100_000
    assert pos == pytest.approx(0.55375, abs=1e-9)  # share of ratings >= 4 in ml-100k
    assert set(ds.keys) == {"user", "occupation", "zip"}
    assert len(np.unique(ds.keys["occupation"])) == 21
    # the user key is exact (vocabulary ids of users), matching the user field
    np.testing.assert_array_equal(ds.keys["user"], ds.x[:, 0])
    # integer ids are ordered numerically: user "1" -> 0, user "943" -> 942
    from fedstrat.data.ctr import vocab_ids

    ids, size = vocab_ids(np.array(["10", "9", "100", "9"]))
    assert ids.tolist() == [1, 0, 2, 0] and size == 3
    ids, size = vocab_ids(np.array(["b", "a", "10", "a"]))
    assert ids.tolist() == [2, 1, 0, 1] and size == 3


@pytest.mark.ctr
@needs_recbole
def test_movielens100k_hashing_and_temporal_split() -> None:
    buckets = {
        "user": 97,
        "item": 101,
        "gender": 5,
        "age": 11,
        "occupation": 13,
        "zip": 17,
        "genre": 19,
        "year": 23,
    }
    ds = load_dataset("movielens-100k", hashing=True, hash_buckets=buckets)
    assert ds.field_dims == [97, 101, 5, 11, 13, 17, 19, 23]
    assert (ds.x < np.array(ds.field_dims)).all() and (ds.x >= 0).all()
    again = load_dataset("movielens-100k", hashing=True, hash_buckets=dict(buckets), seed=0)
    np.testing.assert_array_equal(ds.x, again.x)
    # keys stay exact under hashing
    assert len(np.unique(ds.keys["user"])) == 943
    temporal = load_dataset("movielens-100k", split="temporal")
    assert temporal.num_test == pytest.approx(20_000, rel=0.02)
    with pytest.raises(ValueError, match="'genre'"):
        load_dataset("movielens-100k", hashing=True, hash_buckets={"user": 10, "item": 10})
    with pytest.raises(ValueError, match="split"):
        load_dataset("movielens-100k", split="bogus")


def test_registry_lists_and_rejects() -> None:
    names = list_datasets()
    assert {
        "digits",
        "mnist5k",
        "movielens-100k",
        "mnist",
        "fashion-mnist",
        "cifar10",
        "movielens-1m",
        "criteo",
        "synthetic",
    } <= set(names)
    assert {"digits", "mnist5k", "movielens-100k", "synthetic"} == set(
        list_datasets(local_only=False)
    )
    with pytest.raises(ValueError, match="mnist5k") as err:
        load_dataset("imagenet")
    assert "criteo" in str(err.value) and "imagenet" in str(err.value)
    with pytest.raises(ValueError, match="hashing"):
        load_dataset("mnist5k", hashing=True)
    assert not issubclass(ValueError, DataError) and issubclass(DataError, ValueError)


def test_dataset_validates_lengths() -> None:
    x = np.zeros((4, 1, 2, 2), np.float32)
    y = np.zeros(4, np.int64)
    with pytest.raises(ValueError, match="y has 3"):
        Dataset("t", "classification", x, y[:3], 2, x, y)
    with pytest.raises(ValueError, match="y_test has 2"):
        Dataset("t", "classification", x, y, 2, x, y[:2])
    with pytest.raises(ValueError, match="key 'user'"):
        Dataset("t", "classification", x, y, 2, x, y, keys={"user": np.zeros(3, np.int64)})
