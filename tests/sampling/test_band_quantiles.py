"""satterthwaite_band's chi-square quantiles are scipy.stats.chi2.ppf's, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import chi2

from fedstrat.sampling.baseline import satterthwaite_band


@pytest.mark.parametrize("level", [0.5, 0.8, 0.95])
def test_band_equals_the_chi2_ppf_formula(level):
    rng = np.random.default_rng(int(level * 100))
    for _ in range(50):
        terms = rng.exponential(size=4) * 10.0 ** rng.uniform(-6, 3)
        dfs = np.append(rng.uniform(0.5, 500.0, size=3), np.inf)
        band = satterthwaite_band(terms, dfs, level)
        v, noisy = float(terms.sum()), np.isfinite(dfs)
        df = v * v / float(np.sum(terms[noisy] ** 2 / np.maximum(dfs[noisy], 1.0)))
        tail = (1.0 - level) / 2.0
        assert band.value == v and band.df == df
        assert band.lo == df * v / float(chi2.ppf(1.0 - tail, df))
        assert band.hi == df * v / float(chi2.ppf(tail, df))
