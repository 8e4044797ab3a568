"""``StratumVarianceTracker.update_many``: the same state as ``update`` row by row, bit for bit."""

import numpy as np
import pytest

from fedstrat.sampling import StratumVarianceTracker


def _state(t: StratumVarianceTracker) -> dict:
    out = t.state_dict()
    cov = t.covariances()
    return {**out, "cov": None if cov is None else cov.copy()}


def _assert_same(a: StratumVarianceTracker, b: StratumVarianceTracker) -> None:
    sa, sb = _state(a), _state(b)
    assert sa.keys() == sb.keys()
    for k in sa:
        if isinstance(sa[k], np.ndarray):
            assert np.array_equal(sa[k], sb[k]), k  # exact, not allclose
        else:
            assert sa[k] == sb[k], k


@pytest.mark.parametrize("dim,covariance,ema", [(10, False, None), (64, True, None),
                                                (3, True, 0.9), (10, False, 0.8)])
def test_update_many_equals_row_by_row_updates(dim, covariance, ema):
    rng = np.random.default_rng(dim)
    n_strata, n = 7, 1500
    a = StratumVarianceTracker(n_strata, dim, covariance=covariance, ema=ema)
    b = StratumVarianceTracker(n_strata, dim, covariance=covariance, ema=ema)
    for _ in range(4):  # some state before the batch
        h, x, w = int(rng.integers(n_strata)), rng.normal(size=dim), float(rng.uniform(0.1, 2))
        a.update(h, x, w)
        b.update(h, x, w)
    strata = rng.choice(n_strata - 1, size=n, p=rng.dirichlet(np.full(n_strata - 1, 0.5)))
    x = rng.normal(size=(n, dim)) * rng.uniform(0, 5, size=(n, 1)) + 3.0
    w = rng.uniform(1e-3, 3.0, size=n)
    before = b.counts()[-1]
    for h, row, wi in zip(strata, x, w, strict=True):
        a.update(int(h), row, float(wi))
    b.update_many(strata, x, w)
    _assert_same(a, b)
    assert b.counts()[-1] == before  # the stratum without rows is untouched


def test_update_many_checks_every_row_before_adding():
    t = StratumVarianceTracker(3, 2)
    x = np.ones((3, 2))
    with pytest.raises(ValueError, match="NaN or inf"):
        t.update_many([0, 1, 2], np.array([[1.0, 2.0], [np.nan, 0.0], [1.0, 1.0]]), np.ones(3))
    with pytest.raises(ValueError, match="out of range"):
        t.update_many([0, 3, 1], x, np.ones(3))
    with pytest.raises(ValueError, match="finite and positive"):
        t.update_many([0, 1, 2], x, np.array([1.0, 0.0, 1.0]))
    assert t.counts().tolist() == [0, 0, 0]
    t.update_many([], np.zeros((0, 2)), [])
    assert t.counts().tolist() == [0, 0, 0]
