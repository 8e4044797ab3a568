"""Strata validation, k-means stratification, LDP histograms, random-projection sketches."""

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from fedstrat.sampling import (
    Strata,
    privatize_histogram,
    sketch_update,
    stratify_by_histograms,
    stratify_by_sketches,
)
from fedstrat.sampling import strata as strata_mod


def test_strata_basics_and_validation():
    s = Strata([1, 0, 1, 2, 2, 2])
    assert s.n_strata == 3 and s.sizes.tolist() == [1, 2, 3]
    assert s.members(2).tolist() == [3, 4, 5]
    np.testing.assert_allclose(s.masses([1, 1, 1, 1, 1, 5]), [1 / 10, 2 / 10, 7 / 10])
    for bad in ([0, 2], [1, 1], [], [[0, 1]], [0.5, 1], [-1, 0]):
        with pytest.raises(ValueError):
            Strata(bad)
    with pytest.raises(ValueError):
        s.members(3)
    assert Strata.from_labels([5, 9, 5]).labels.tolist() == [0, 1, 0]


def test_merge_small():
    s = Strata([0, 0, 0, 0, 1, 2, 2, 2])
    merged = s.merge_small(2)
    assert merged.sizes.min() >= 2 and merged.n_strata == 2
    feats = np.array([[0.0], [0], [0], [0], [9.0], [10], [10], [10]])
    merged = s.merge_small(2, features=feats)
    assert merged.labels[4] == merged.labels[5]  # stratum 1 joins the nearest centroid


def _planted(n_per=20, seed=0):
    rng = np.random.default_rng(seed)
    protos = np.eye(3) * 0.9 + 0.1 / 3
    hist = []
    truth = []
    for g in range(3):
        for _ in range(n_per):
            hist.append(rng.multinomial(200, protos[g]))
            truth.append(g)
    return np.array(hist), np.array(truth)


def test_stratify_recovers_planted_groups():
    hist, truth = _planted()
    s = stratify_by_histograms(hist, n_strata=None, seed=0, max_strata=4)
    assert s.n_strata == 3  # chosen by silhouette
    assert adjusted_rand_score(truth, s.labels) == 1.0
    s2 = stratify_by_histograms(hist, n_strata=3, seed=0, pca_components=2)
    assert adjusted_rand_score(truth, s2.labels) == 1.0
    # Subsampled fit + predict gives the same partition here.
    s3 = stratify_by_histograms(hist, n_strata=3, seed=0, fit_sample=30)
    assert adjusted_rand_score(truth, s3.labels) == 1.0
    # Deterministic under seed.
    np.testing.assert_array_equal(
        s.labels, stratify_by_histograms(hist, seed=0, max_strata=5).labels
    )
    sk = stratify_by_sketches(hist * 5.0, n_strata=3, normalize=True)
    assert adjusted_rand_score(truth, sk.labels) == 1.0


def test_stratify_errors_and_edge_cases():
    with pytest.raises(ValueError):
        stratify_by_histograms(np.array([[1, 0], [0, 0]]), 2)
    with pytest.raises(ValueError):
        stratify_by_histograms(np.array([[1, -1], [0, 2]]), 2)
    with pytest.raises(ValueError):
        stratify_by_histograms(np.ones(5), 2)
    with pytest.raises(ValueError):
        stratify_by_histograms(np.ones((3, 2)), 4)
    # Two clients: no k in 2..N-1 -> one stratum.
    assert stratify_by_histograms(np.array([[1, 0], [0, 1]])).n_strata == 1
    # Identical rows: fewer distinct points than requested strata -> warning, fewer strata.
    with pytest.warns(UserWarning):
        s = stratify_by_histograms(np.array([[1, 0]] * 4 + [[0, 1]] * 4), 3)
    assert s.n_strata == 2


def test_privatize_histogram():
    rng = np.random.default_rng(0)
    counts = np.full(20_000, 1000)
    eps = 0.5
    noisy = privatize_histogram(counts, eps, rng)
    assert noisy.dtype == np.int64
    noise = noisy - counts  # no clipping at this level
    a = np.exp(-eps)
    # Two-sided geometric: mean 0, variance 2a / (1 - a)^2 = 13.8 for eps = 0.5.
    var = 2 * a / (1 - a) ** 2
    assert abs(noise.mean()) < 5 * np.sqrt(var / noise.size)
    assert abs(noise.var() / var - 1) < 0.06
    # P(Z = 0) = (1 - a) / (1 + a).
    p0 = (1 - a) / (1 + a)
    assert abs(np.mean(noise == 0) - p0) < 5 * np.sqrt(p0 * (1 - p0) / noise.size)
    # Clipping at zero, passthrough at inf, errors.
    assert np.all(privatize_histogram(np.zeros(100), 0.1, rng) >= 0)
    np.testing.assert_array_equal(privatize_histogram([3, 0, 5], np.inf), [3, 0, 5])
    for bad_eps in (0.0, -1.0, np.nan):
        with pytest.raises(ValueError):
            privatize_histogram([1, 2], bad_eps, rng)
    for bad in ([1.5, 2], [-1, 2], [[1, 2]]):
        with pytest.raises(ValueError):
            privatize_histogram(bad, 1.0, rng)
    # Deterministic under seed.
    np.testing.assert_array_equal(
        privatize_histogram([5, 5, 5], 1.0, np.random.default_rng(3)),
        privatize_histogram([5, 5, 5], 1.0, np.random.default_rng(3)),
    )


def test_sketch_update(monkeypatch):
    rng = np.random.default_rng(0)
    v = rng.normal(size=300)
    s1 = sketch_update(v, dim=32, seed=5)
    np.testing.assert_array_equal(s1, sketch_update(v, dim=32, seed=5))
    assert not np.allclose(s1, sketch_update(v, dim=32, seed=6))
    # Linear, and batch input agrees with single vectors.
    w = rng.normal(size=300)
    np.testing.assert_allclose(
        sketch_update(2 * v + w, 32, 5), 2 * s1 + sketch_update(w, 32, 5), atol=1e-10
    )
    batch = sketch_update(np.stack([v, w]), 32, 5)
    np.testing.assert_allclose(batch[0], s1)
    # E||s||^2 = ||v||^2: average over 400 seeds, relative sd of one draw is sqrt(2/dim)=0.25,
    # so the mean has sd 0.0125; allow 5 sd.
    ratios = [np.sum(sketch_update(v, 32, k) ** 2) / np.sum(v**2) for k in range(400)]
    assert abs(np.mean(ratios) - 1) < 0.0625
    # Chunked (uncached) path equals the cached path.
    monkeypatch.setattr(strata_mod, "_CACHE_LIMIT", 0)
    np.testing.assert_allclose(sketch_update(v, 32, 5), s1, atol=1e-10)
    with pytest.raises(ValueError):
        sketch_update(np.array([np.nan]), 4)
    with pytest.raises(ValueError):
        sketch_update(v, 0)


def test_distinct_rows_cap_the_strata_exactly_as_a_full_count():
    # Many rows, 3 distinct (the first 40 rows all alike): 3 strata and the warning, as when
    # every row is compared; with enough distinct rows early the requested number stays.
    rng = np.random.default_rng(0)
    x = np.array([[1.0, 0.0]] * 40 + [[0.0, 1.0]] * 30 + [[0.5, 0.5]] * 30)[rng.permutation(100)]
    x = np.concatenate([np.tile([[1.0, 0.0]], (40, 1)), x])
    with pytest.warns(UserWarning, match="only 3 distinct"):
        s = stratify_by_sketches(x, n_strata=5, seed=0)
    assert s.n_strata == 3
    assert stratify_by_sketches(x, seed=0, max_strata=6).n_strata <= 3
    y = rng.dirichlet(np.ones(4), size=200)
    assert stratify_by_sketches(y, n_strata=4, seed=0).n_strata == 4
