"""Balanced uniform draws: similarity order, blocks, and their variance against SRS."""

from __future__ import annotations

import numpy as np
import pytest

from fedstrat.sampling import Strata, StratifiedSampler, fedavg_variance
from fedstrat.sampling.ordering import WARD_MAX, block_labels, similarity_order
from fedstrat.sampling.variance import estimator_variance


def balanced_variance(updates, sizes, order, m):
    """Exact MSE of one srswor draw per block with equal sizes (HT = FedAvg's weights)."""
    res = updates - (sizes / sizes.sum()) @ updates
    st = Strata(block_labels(order, m))
    return estimator_variance(res, sizes, st, np.ones(st.n_strata, dtype=np.int64), "srswor")


@pytest.mark.parametrize("n,m", [(100, 10), (103, 10), (7, 3), (5, 5)])
def test_blocks_are_consecutive_and_differ_in_size_by_at_most_one(n, m):
    order = np.random.default_rng(0).permutation(n)
    lab = block_labels(order, m)
    counts = np.bincount(lab, minlength=m)
    assert len(counts) == m and counts.max() - counts.min() <= 1 and counts.sum() == n
    assert np.all(np.diff(lab[order]) >= 0)  # consecutive in the order
    with pytest.raises(ValueError):
        block_labels(order, n + 1)


@pytest.mark.parametrize("n", [60, WARD_MAX + 300])
def test_order_is_a_permutation_that_keeps_clusters_together(n):
    rng = np.random.default_rng(1)
    m = 6
    cluster = rng.permutation(np.arange(n) % m)
    centres = rng.normal(size=(m, 5)) * 10
    x = centres[cluster] + rng.normal(size=(n, 5))
    order = similarity_order(x, m)
    assert sorted(order.tolist()) == list(range(n))
    # cut into m blocks, each block is (almost) one cluster
    lab = block_labels(order, m)
    purity = sum(np.bincount(cluster[lab == h]).max() for h in range(m)) / n
    assert purity > 0.95


def test_inclusion_is_fedavgs_when_m_divides_n():
    sizes = np.random.default_rng(2).integers(10, 90, size=40).astype(float)
    order = similarity_order(np.random.default_rng(3).normal(size=(40, 4)), 8)
    smp = StratifiedSampler(sizes, Strata(block_labels(order, 8)), np.ones(8, dtype=np.int64),
                            "srswor", seed=0)
    sel = smp.sample(np.random.default_rng(4))
    assert len(sel.ids) == 8 and np.allclose(sel.inclusion, 8 / 40)
    # every block gives exactly one client
    assert sorted(block_labels(order, 8)[sel.ids].tolist()) == list(range(8))


def test_informative_order_cuts_the_variance_and_an_uninformative_one_matches_srs():
    rng = np.random.default_rng(5)
    n, m, d = 100, 10, 12
    sizes = np.full(n, 50.0)
    persistent = rng.normal(size=(n, d))  # client-specific part the features reveal
    updates = persistent + 0.5 * rng.normal(size=(n, d))
    srs = fedavg_variance(updates, sizes, m)
    informed = balanced_variance(updates, sizes, similarity_order(persistent, m), m)
    assert informed < 0.85 * srs
    # features unrelated to the updates: the mean over 200 random feature sets equals SRS's
    # variance within 2% (the exact expectation is SRS's up to O(1/N))
    ratios = [balanced_variance(updates, sizes, similarity_order(rng.normal(size=(n, 3)), m), m)
              / srs for _ in range(200)]
    assert abs(np.mean(ratios) - 1.0) < 0.02


def test_constant_features_keep_the_given_order():
    assert similarity_order(np.ones((9, 3)), 3).tolist() == list(range(9))
