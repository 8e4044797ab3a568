"""choose_design's k-means on a subsample (large populations) finds the strata of the full
fit when the clusters are clear."""

from __future__ import annotations

import numpy as np

from fedstrat.sampling import choose_design


def test_subsampled_kmeans_recovers_the_full_fit_strata():
    rng = np.random.default_rng(0)
    centres = np.eye(3)
    group = rng.integers(0, 3, size=3000)
    feats = centres[group] + rng.normal(scale=0.02, size=(3000, 3))
    sizes = rng.integers(10, 100, size=3000)
    full = choose_design(sizes, feats, 12, candidate_strata=(3,), normalize=False,
                         fit_sample=None)
    sub = choose_design(sizes, feats, 12, candidate_strata=(3,), normalize=False,
                        fit_sample=300)
    a, b = full.best[0].labels, sub.best[0].labels
    # the same partition (labels may be permuted)
    pairs = set(zip(a.tolist(), b.tolist(), strict=True))
    assert len(pairs) == 3 and len({p[0] for p in pairs}) == 3
    assert sub.design == full.design
    assert np.array_equal(sub.best[2], full.best[2])  # the same allocation
    assert abs(sub.predicted_variance - full.predicted_variance) <= (
        1e-9 * full.predicted_variance)
