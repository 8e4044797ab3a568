"""The "unknown" (out-of-vocabulary) id per CTR field."""

from __future__ import annotations

import numpy as np
import pytest

from fedstrat.data import load_dataset
from fedstrat.data.base import package_dir
from fedstrat.data.ctr import add_oov_slot

needs_recbole = pytest.mark.skipif(package_dir("recbole") is None, reason="recbole not installed")


def test_unseen_test_id_maps_to_the_oov_index():
    x_train = np.array([[0, 1], [1, 1], [0, 0]])
    x_test = np.array([[2, 1], [1, 2], [0, 0]])
    tr, te, dims = add_oov_slot(x_train, x_test, [3, 3], [0, 1])
    assert dims == [4, 4]
    assert te.tolist() == [[3, 1], [1, 3], [0, 0]]  # id 2 never occurs in train: OOV = 3
    assert np.array_equal(tr, x_train)
    assert x_test[0, 0] == 2  # inputs are not modified


def test_oov_only_for_the_chosen_fields_and_min_count():
    x_train = np.array([[0, 0], [0, 1], [1, 1]])
    x_test = np.array([[1, 0], [2, 2]])
    tr, te, dims = add_oov_slot(x_train, x_test, [3, 3], [0], min_count=2)
    assert dims == [4, 3]
    assert tr[:, 0].tolist() == [0, 0, 3]  # id 1 seen once < min_count: unknown in train too
    assert te.tolist() == [[3, 0], [3, 2]]
    with pytest.raises(ValueError, match="min_count"):
        add_oov_slot(x_train, x_test, [3, 3], [0], min_count=0)


@pytest.mark.ctr
@needs_recbole
@pytest.mark.parametrize("split", ["random", "temporal"])
def test_movielens_test_ids_unseen_in_train_are_oov(split):
    ds = load_dataset("movielens-100k", split=split)
    oov = np.array(ds.field_dims) - 1
    assert (ds.x < oov).all()  # train rows never use the unknown id
    for f in range(ds.x.shape[1]):
        seen = np.isin(ds.x_test[:, f], ds.x[:, f])
        assert (ds.x_test[~seen, f] == oov[f]).all()
        assert (ds.x_test[seen, f] < oov[f]).all()
    assert (ds.x_test[:, 1] == oov[1]).sum() > 0  # some items occur only in test
    hashed = load_dataset("movielens-100k", split=split, hashing=True, hash_buckets=97)
    assert hashed.field_dims == [97] * 8  # hashed fields get no unknown slot
