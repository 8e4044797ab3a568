"""Partition properties: coverage, disjointness, determinism, sizes, skew, summaries."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedstrat.data import (
    Dataset,
    format_summary,
    load_dataset,
    partition_dataset,
    partition_summary,
)


def toy(labels: np.ndarray, num_classes: int, keys: dict | None = None) -> Dataset:
    n = len(labels)
    return Dataset(
        name="toy",
        task="classification",
        x=np.arange(n, dtype=np.float32).reshape(n, 1, 1, 1),
        y=np.asarray(labels, dtype=np.int64),
        num_classes=num_classes,
        x_test=np.zeros((1, 1, 1, 1), np.float32),
        y_test=np.zeros(1, np.int64),
        keys=keys or {},
    )


def check_valid(ds: Dataset, p, num_clients: int, min_size: int) -> None:
    assert p.num_clients == num_clients == len(p.sizes) == len(p.label_histograms)
    allidx = np.concatenate(p.indices)
    # coverage + disjointness: every train row in exactly one client
    assert len(allidx) == ds.num_train
    np.testing.assert_array_equal(np.sort(allidx), np.arange(ds.num_train))
    assert (p.sizes >= min_size).all()
    np.testing.assert_array_equal(p.label_histograms.sum(axis=1), p.sizes)
    for i, idx in enumerate(p.indices):
        np.testing.assert_array_equal(
            p.label_histograms[i], np.bincount(ds.y[idx], minlength=ds.num_classes)
        )


@settings(max_examples=40, deadline=None)
@given(
    labels=st.lists(st.integers(0, 4), min_size=20, max_size=300),
    scheme=st.sampled_from(["iid", "shard", "dirichlet"]),
    num_clients=st.integers(1, 10),
    alpha=st.sampled_from([0.05, 0.5, 5.0]),
    seed=st.integers(0, 2**16),
    min_size=st.integers(0, 2),
)
def test_partition_properties(labels, scheme, num_clients, alpha, seed, min_size) -> None:
    ds = toy(np.array(labels), 5)
    kw = dict(alpha=alpha, shards_per_client=2, seed=seed, min_size=min_size)
    p = partition_dataset(ds, scheme, num_clients, **kw)
    check_valid(ds, p, num_clients, min_size)
    q = partition_dataset(ds, scheme, num_clients, **kw)
    for a, b in zip(p.indices, q.indices, strict=True):
        np.testing.assert_array_equal(a, b)


def test_different_seeds_differ_and_iid_is_near_equal() -> None:
    ds = toy(np.repeat(np.arange(10), 50), 10)
    a = partition_dataset(ds, "iid", 7, seed=0)
    b = partition_dataset(ds, "iid", 7, seed=1)
    assert any(not np.array_equal(x, y) for x, y in zip(a.indices, b.indices, strict=True))
    assert a.sizes.max() - a.sizes.min() <= 1


def test_shard_clients_hold_at_most_shards_per_client_labels() -> None:
    # 10 classes x 100 rows, 50 clients x 2 shards of 10 rows: each shard is one label
    ds = toy(np.repeat(np.arange(10), 100), 10)
    p = partition_dataset(ds, "shard", 50, shards_per_client=2, seed=3)
    check_valid(ds, p, 50, 1)
    assert ((p.label_histograms > 0).sum(axis=1) <= 2).all()
    assert (p.sizes == 20).all()


def test_dirichlet_min_size_enforced_and_sizes_vary() -> None:
    ds = load_dataset("mnist5k")
    p = partition_dataset(ds, "dirichlet", 100, alpha=0.1, seed=0, min_size=10)
    check_valid(ds, p, 100, 10)
    assert partition_summary(p)["size_cv"] > 0.5  # sizes are not equalised


def test_dirichlet_small_alpha_more_skewed_than_large() -> None:
    ds = load_dataset("mnist5k")
    for seed in range(3):
        s_small = partition_summary(partition_dataset(ds, "dirichlet", 50, alpha=0.1, seed=seed))
        s_large = partition_summary(partition_dataset(ds, "dirichlet", 50, alpha=100.0, seed=seed))
        assert s_small["mean_tv"] > s_large["mean_tv"] + 0.3
        assert s_small["mean_classes"] < s_large["mean_classes"]
        assert s_small["size_cv"] > s_large["size_cv"]


def test_dirichlet_class_shares_have_mean_one_over_n() -> None:
    # Seeded Monte Carlo: E[share of class c at client k] = 1/N under Dir(alpha 1_N).
    # N=5, alpha=1: sd of one share = sqrt((1/5)(4/5)/6) = 0.163; 300 seeds x 2 classes ->
    # standard error 0.0067 per client; tolerance 0.03 (> 4 standard errors).
    ds = toy(np.repeat([0, 1], 1000), 2)
    shares = np.zeros(5)
    reps = 300
    for seed in range(reps):
        p = partition_dataset(ds, "dirichlet", 5, alpha=1.0, seed=seed, min_size=0)
        shares += p.label_histograms.sum(axis=1) / 2000
    np.testing.assert_allclose(shares / reps, 0.2, atol=0.03)


def test_natural_groups_and_merging() -> None:
    rng = np.random.default_rng(0)
    users = rng.integers(0, 30, size=500)
    ds = toy(rng.integers(0, 2, size=500), 2, keys={"user": users, "city": users % 4})
    p = partition_dataset(ds, "natural", None, key="user")
    check_valid(ds, p, len(np.unique(users)), 1)
    for idx in p.indices:
        assert len(np.unique(users[idx])) == 1
    # client i holds the i-th smallest key value
    assert [int(users[idx[0]]) for idx in p.indices] == sorted(np.unique(users).tolist())
    merged = partition_dataset(ds, "natural", 7, key="user", seed=2)
    check_valid(ds, merged, 7, 1)
    owner = {}
    for i, idx in enumerate(merged.indices):
        for u in np.unique(users[idx]):
            assert owner.setdefault(int(u), i) == i  # a group is never split
    again = partition_dataset(ds, "natural", 7, key="user", seed=2)
    assert all(np.array_equal(a, b) for a, b in zip(merged.indices, again.indices, strict=True))
    with pytest.raises(ValueError, match="only 4 groups") as exc:
        partition_dataset(ds, "natural", 10, key="city")
    assert "at most 4" in str(exc.value) and "or 0" not in str(exc.value)  # the CLI needs >= 1
    with pytest.raises(ValueError, match="user"):
        partition_dataset(ds, "natural", None, key="country")
    with pytest.raises(ValueError, match="key="):
        partition_dataset(ds, "natural", None)


def test_partition_errors() -> None:
    ds = toy(np.repeat(np.arange(3), 10), 3)
    with pytest.raises(ValueError, match="iid, shard, dirichlet, natural"):
        partition_dataset(ds, "powerlaw", 3)
    with pytest.raises(ValueError, match="min_size"):
        partition_dataset(ds, "iid", 10, min_size=4)
    with pytest.raises(ValueError, match="alpha"):
        partition_dataset(ds, "dirichlet", 3, alpha=0.0)
    with pytest.raises(ValueError, match="shards"):
        partition_dataset(ds, "shard", 20, shards_per_client=2)
    with pytest.raises(ValueError, match="shard: a client got 2 rows"):
        # 30 rows, 20 shards (10 of 2 rows, 10 of 1 row): with seed 0 a client gets two 1-row
        # shards although 10 clients x 3 rows fit into 30 rows
        partition_dataset(toy(np.arange(30) % 3, 3), "shard", 10, shards_per_client=2, min_size=3)
    with pytest.raises(ValueError, match="num_clients"):
        partition_dataset(ds, "iid", 0)
    with pytest.raises(ValueError, match="natural partition keys"):
        partition_dataset(ds, "natural", None)


def test_summary_values_by_hand() -> None:
    # client 0: labels [0, 0], client 1: labels [0, 1, 1, 1]; global = (1/2, 1/2)
    ds = toy(np.array([0, 0, 0, 1, 1, 1]), 2)
    p = partition_dataset(ds, "shard", 2, shards_per_client=1, seed=0)
    # shard sorted by label: shards [0,0,0] and [1,1,1] -> each client one class
    s = partition_summary(p)
    assert s["num_clients"] == 2 and s["num_examples"] == 6
    assert s["size_min"] == s["size_max"] == 3 and s["size_cv"] == 0.0
    assert s["mean_classes"] == 1.0
    assert s["mean_tv"] == pytest.approx(0.5)
    text = format_summary(p)
    assert "2 clients" in text and "TV" in text and "CV 0.00" in text


def test_ctr_partition_histograms_use_click_classes() -> None:
    y = np.array([0, 1, 1, 0, 1, 1, 1, 0], dtype=np.float32)
    ds = Dataset(
        name="ctr-toy",
        task="ctr",
        x=np.zeros((8, 3), np.int64),
        y=y,
        num_classes=2,
        x_test=np.zeros((1, 3), np.int64),
        y_test=np.zeros(1, np.float32),
        field_dims=[1, 1, 1],
        field_names=["a", "b", "c"],
    )
    p = partition_dataset(ds, "iid", 3, seed=0)
    assert p.label_histograms.shape == (3, 2)
    np.testing.assert_array_equal(p.label_histograms.sum(axis=0), [3, 5])
    x, yy = p.client_data(ds, 1)
    assert len(x) == len(yy) == p.sizes[1]
