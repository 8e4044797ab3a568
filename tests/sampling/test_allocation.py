"""Allocation: sums, bounds, textbook example, exact optimality vs brute force, errors."""

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedstrat.sampling import (
    design_neyman_allocation,
    neyman_allocation,
    proportional_allocation,
)


def _all_allocations(lower, upper, m):
    ranges = [range(lo, up + 1) for lo, up in zip(lower, upper, strict=True)]
    for combo in itertools.product(*ranges):
        if sum(combo) == m:
            yield np.array(combo)


def test_cochran_style_example():
    # N_h = (100, 200, 300), S_h = (10, 20, 5), m = 30.
    # a_h = N_h S_h = (1000, 4000, 1500), sum 6500; continuous m_h = 30 a_h / 6500
    # = (4.615, 18.462, 6.923).  Objective sum a_h^2 / m_h at integer neighbours:
    # (5,18,7): 200000 + 888888.9 + 321428.6 = 1410317.5   <- minimum
    # (4,19,7): 250000 + 842105.3 + 321428.6 = 1413533.8
    # (5,19,6): 200000 + 842105.3 + 375000.0 = 1417105.3
    # (4,18,8): 250000 + 888888.9 + 281250.0 = 1420138.9
    alloc = neyman_allocation([100, 200, 300], [10, 20, 5], 30)
    assert alloc.tolist() == [5, 18, 7]
    # Proportional: 30 * (100, 200, 300) / 600 = (5, 10, 15) exactly.
    assert proportional_allocation([100, 200, 300], 30).tolist() == [5, 10, 15]


def test_costs_shift_allocation():
    base = neyman_allocation([100, 100], [1, 1], 20)
    assert base.tolist() == [10, 10]
    # c = (1, 4): a = (100, 50) -> m_h ∝ (2, 1): 20 * 2/3 = 13.3 -> 13, 7
    costly = neyman_allocation([100, 100], [1, 1], 20, costs=[1, 4])
    assert costly.tolist() == [13, 7]


def test_capacity_and_zero_std():
    # Stratum 0 would want everything but only holds 3 clients.
    alloc = neyman_allocation([3, 100], [1000, 1], 10)
    assert alloc.tolist() == [3, 7]
    # Zero-std strata get the minimum.
    alloc = neyman_allocation([50, 50, 50], [0, 1, 0], 10)
    assert alloc.tolist() == [1, 8, 1]
    # All zero: ties broken proportionally to sizes.
    alloc = neyman_allocation([100, 300], [0, 0], 8)
    assert alloc.tolist() == [2, 6]


def test_masses_need_capacity():
    with pytest.raises(ValueError, match="capacity"):
        neyman_allocation([0.25, 0.75], [1, 1], 4)
    alloc = neyman_allocation([0.25, 0.75], [1, 1], 4, capacity=[10, 2])
    assert alloc.tolist() == [2, 2]


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(sizes=[10, 10], stds=[1, 1], m=21),  # m > N
        dict(sizes=[10, 10, 10], stds=[1, 1, 1], m=2),  # m < sum of minimums
        dict(sizes=[10, 10], stds=[1], m=5),  # length mismatch
        dict(sizes=[10, 10], stds=[-1, 1], m=5),
        dict(sizes=[10, 10], stds=[np.nan, 1], m=5),
        dict(sizes=[10, np.inf], stds=[1, 1], m=5),
        dict(sizes=[10, 0], stds=[1, 1], m=5),
        dict(sizes=[10, 10], stds=[1, 1], m=5, costs=[0, 1]),
        dict(sizes=[10, 10], stds=[1, 1], m=2.5),
    ],
)
def test_neyman_errors(kwargs):
    with pytest.raises(ValueError):
        neyman_allocation(**kwargs)


def test_proportional_errors():
    with pytest.raises(ValueError):
        proportional_allocation([5, 5], 11)
    with pytest.raises(ValueError):
        proportional_allocation([5, 5, 5], 2)
    with pytest.raises(ValueError):
        proportional_allocation([5, -1], 2)


def test_large_allocation_is_fast_and_valid():
    rng = np.random.default_rng(0)
    sizes = rng.integers(1, 10_000, 200)
    stds = rng.random(200)
    alloc = neyman_allocation(sizes, stds, 100_000)
    assert alloc.sum() == 100_000 and np.all(alloc >= 1) and np.all(alloc <= sizes)


sizes_st = st.lists(st.integers(1, 6), min_size=1, max_size=4)


@settings(max_examples=100, deadline=None)
@given(data=st.data(), sizes=sizes_st, min_per=st.integers(0, 2))
def test_neyman_is_exact_optimum(data, sizes, min_per):
    h = len(sizes)
    stds = data.draw(st.lists(st.integers(0, 5), min_size=h, max_size=h))
    lower = np.minimum(min_per, sizes)
    m = data.draw(st.integers(int(lower.sum()), int(sum(sizes))))
    alloc = neyman_allocation(sizes, stds, m, min_per_stratum=min_per)
    a2 = (np.array(sizes, float) * np.array(stds, float)) ** 2
    assert alloc.sum() == m
    assert np.all(alloc >= lower) and np.all(alloc <= sizes)

    def obj(x):
        with np.errstate(divide="ignore", invalid="ignore"):
            terms = np.where(a2 > 0, a2 / x, 0.0)
        return float(np.sum(terms))

    best = min(obj(x) for x in _all_allocations(lower, sizes, m))
    assert obj(alloc) <= best * (1 + 1e-12) + 1e-12


@settings(max_examples=100, deadline=None)
@given(data=st.data(), sizes=sizes_st, min_per=st.integers(0, 2))
def test_proportional_is_exact_optimum(data, sizes, min_per):
    lower = np.minimum(min_per, sizes)
    m = data.draw(st.integers(int(lower.sum()), int(sum(sizes))))
    alloc = proportional_allocation(sizes, m, min_per_stratum=min_per)
    n = np.array(sizes, float)
    q = m * n / n.sum()
    assert alloc.sum() == m and np.all(alloc >= lower) and np.all(alloc <= sizes)

    def obj(x):
        return float(np.sum((x - q) ** 2 / n))

    best = min(obj(x) for x in _all_allocations(lower, sizes, m))
    assert obj(alloc) <= best + 1e-12


def test_design_neyman_allocation():
    counts = np.array([10, 10])
    masses = np.array([0.8, 0.2])
    stds = np.array([1.0, 1.0])
    # pps: m_h ∝ P_h sigma_h = (0.8, 0.2) -> (4, 1) for m = 5
    assert design_neyman_allocation(counts, masses, stds, 5, "pps").tolist() == [4, 1]
    # srswor: S_y,h ∝ P_h / N_h sigma_h -> same ratio with equal N_h
    assert design_neyman_allocation(counts, masses, stds, 5, "srswor").tolist() == [4, 1]
    with pytest.raises(ValueError):
        design_neyman_allocation(counts, masses, stds, 5, "bogus")
