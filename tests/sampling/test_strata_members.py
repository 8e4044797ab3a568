"""Strata members: every client in exactly its stratum, in increasing id order, for few and
for many strata (the radix-sorted 16-bit path and the 64-bit path)."""

from __future__ import annotations

import numpy as np
import pytest

from fedstrat.sampling import Strata


@pytest.mark.parametrize("n_strata", [1, 3, 40_000])
def test_members_are_the_sorted_ids_of_each_stratum(n_strata):
    rng = np.random.default_rng(n_strata)
    labels = np.concatenate([np.arange(n_strata), rng.integers(0, n_strata, 3 * n_strata)])
    rng.shuffle(labels)
    st = Strata(labels)
    assert st.n_strata == n_strata
    for h in {0, n_strata // 2, n_strata - 1}:
        np.testing.assert_array_equal(st.members(h), np.flatnonzero(labels == h))
    every = np.concatenate([st.members(h) for h in range(n_strata)])
    np.testing.assert_array_equal(np.sort(every), np.arange(len(labels)))
