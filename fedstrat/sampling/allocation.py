"""Sample-size allocation across strata (Cochran ch. 5).

Both allocations are computed as the EXACT integer optimum of a separable convex objective
over ``lower_h <= m_h <= upper_h`` and ``sum_h m_h = m``. For separable convex objectives the
greedy "marginal allocation" (start at the lower bounds, repeatedly give one unit to the stratum
with the largest marginal decrease) is exact. We accelerate it by a threshold search: all units
whose marginal gain exceeds a bisected threshold ``t`` are taken at once (one unit per stratum is
given back to absorb floating-point error, which keeps the taken set inside an optimal set), and
the few remaining units are added greedily with a heap.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable

import numpy as np

from ._validate import all_at_least, as_count, as_nonneg

__all__ = ["proportional_allocation", "neyman_allocation", "design_neyman_allocation"]


def _integral(x: np.ndarray) -> bool:
    """``np.allclose(x, np.round(x))``, with the exact comparison first (the usual case)."""
    r = np.round(x)
    return bool((x == r).all()) or np.allclose(x, r)


def _bounds(
    sizes: np.ndarray, m: int, min_per_stratum: int, capacity: np.ndarray | list | None
) -> tuple[np.ndarray, np.ndarray]:
    if capacity is None:
        if not _integral(sizes):
            raise ValueError(
                "capacity (stratum counts N_h) is required when sizes are not integers "
                "(e.g. masses P_h for the pps design)"
            )
        upper = np.round(sizes).astype(np.int64)
    else:
        cap = as_nonneg(capacity, "capacity")
        if cap.shape != sizes.shape:
            raise ValueError("capacity must have the same length as sizes")
        if not _integral(cap):
            raise ValueError("capacity must contain integers")
        upper = np.round(cap).astype(np.int64)
    min_per_stratum = as_count(min_per_stratum, "min_per_stratum", minimum=0)
    lower = np.minimum(min_per_stratum, upper)
    if m > upper.sum():
        raise ValueError(f"m={m} exceeds the population size {int(upper.sum())}")
    if m < lower.sum():
        raise ValueError(
            f"m={m} is smaller than the sum of per-stratum minimums {int(lower.sum())}"
        )
    return lower, upper


def _greedy(
    lower: np.ndarray,
    upper: np.ndarray,
    m: int,
    count_above: Callable[[float], np.ndarray],
    gain: Callable[[int, int], float],
    t_lo: float,
    t_hi: float,
    tie: np.ndarray,
) -> np.ndarray:
    """Exact marginal allocation.

    ``count_above(t)`` returns, per stratum, the number of units ``k in [lower, upper)`` with
    marginal gain ``gain(h, k) > t`` (may be off by one through rounding). ``gain`` is
    non-increasing in ``k``. Ties are broken by ``tie[h] / (k + 1)`` (largest first), a
    d'Hondt-style proportional rule.
    """
    r = m - int(lower.sum())
    alloc = lower.astype(np.int64).copy()
    if r == 0:
        return alloc
    room = upper - lower
    # Bisection: keep count_above(t_hi).sum() <= r.
    for _ in range(100):
        mid = 0.5 * (t_lo + t_hi)
        if not (t_lo < mid < t_hi):
            break
        if np.minimum(count_above(mid), room).sum() <= r:
            t_hi = mid
        else:
            t_lo = mid
    taken = np.clip(np.minimum(count_above(t_hi), room) - 1, 0, None)
    alloc += taken
    r -= int(taken.sum())
    heap = [
        (-gain(h, int(alloc[h])), -tie[h] / (alloc[h] + 1.0), h)
        for h in range(len(alloc))
        if alloc[h] < upper[h]
    ]
    heapq.heapify(heap)
    while r > 0:
        _, _, h = heapq.heappop(heap)
        alloc[h] += 1
        r -= 1
        if alloc[h] < upper[h]:
            heapq.heappush(heap, (-gain(h, int(alloc[h])), -tie[h] / (alloc[h] + 1.0), h))
    return alloc


def proportional_allocation(
    sizes: np.ndarray | list, m: int, min_per_stratum: int = 1, capacity: np.ndarray | None = None
) -> np.ndarray:
    """Proportional allocation ``m_h ∝ N_h`` with integer rounding and bounds.

    Returns the exact integer minimiser of ``sum_h (m_h - m N_h / N)^2 / N_h`` subject to
    ``min(min_per_stratum, cap_h) <= m_h <= cap_h`` and ``sum_h m_h = m``; ``cap_h`` is
    ``capacity`` or, by default, ``sizes`` (which must then be integers). ``sizes`` may also be
    masses ``P_h`` (pps design) together with ``capacity = N_h``.

    Raises:
        ValueError: ``m`` larger than the population, smaller than the sum of minimums, or
            invalid sizes.
    """
    sz = as_nonneg(sizes, "sizes")
    if sz.size == 0 or np.any(sz <= 0):
        raise ValueError("sizes must be a non-empty array of positive values")
    m = as_count(m, "m", minimum=0)
    lower, upper = _bounds(sz, m, min_per_stratum, capacity)
    q = m * sz / sz.sum()

    # Marginal gain of k -> k+1: -( (k+1-q)^2 - (k-q)^2 ) / N_h = (2q - 2k - 1) / N_h.
    def count_above(t: float) -> np.ndarray:
        c = q - 0.5 - 0.5 * t * sz  # gain > t  <=>  k < c
        k = np.ceil(c)
        return np.clip(k, lower, upper).astype(np.int64) - lower

    def gain(h: int, k: int) -> float:
        return (2.0 * q[h] - 2.0 * k - 1.0) / sz[h]

    g_all = (2.0 * q - 2.0 * np.array([lower, upper - 1]) - 1.0) / sz
    return _greedy(
        lower, upper, m, count_above, gain, float(g_all.min()) - 1.0, float(g_all.max()) + 1.0, sz
    )


def neyman_allocation(
    sizes: np.ndarray | list,
    stds: np.ndarray | list,
    m: int,
    min_per_stratum: int = 1,
    costs: np.ndarray | list | None = None,
    capacity: np.ndarray | list | None = None,
) -> np.ndarray:
    """Neyman (optimum) allocation ``m_h ∝ a_h = N_h S_h`` (``N_h S_h / sqrt(c_h)`` with costs).

    Returns the exact integer minimiser of ``sum_h a_h^2 / m_h`` subject to
    ``min(min_per_stratum, cap_h) <= m_h <= cap_h`` and ``sum_h m_h = m`` (the part of the
    stratified variance that depends on the allocation). ``sizes`` may be counts ``N_h``
    (srswor design, ``S_h`` = std of ``y_i = p_i Delta_i``) or masses ``P_h`` (pps design,
    ``S_h = sigma_h``); with masses pass ``capacity = N_h``. Strata with ``S_h = 0`` get the
    minimum unless all other strata are full; ties (in particular all ``S_h = 0``) are broken
    proportionally to ``sizes``.

    Raises:
        ValueError: length mismatch, negative/NaN/inf input, ``m`` out of range.
    """
    sz = as_nonneg(sizes, "sizes")
    if sz.size == 0 or not all_at_least(sz, 0.0, strict=True):
        raise ValueError("sizes must be a non-empty array of positive values")
    sd = as_nonneg(stds, "stds")
    if sd.shape != sz.shape:
        raise ValueError(f"stds has length {sd.size}, sizes has length {sz.size}")
    # the allocation depends on the a_h only up to a common factor: scale each input by its
    # largest value, so that a^2 neither overflows (S_h ~ 1e160) nor underflows (~ 1e-170)
    a = (sz / sz.max()) * (sd / sd.max() if sd.max() > 0 else sd)
    if costs is not None:
        c = as_nonneg(costs, "costs")
        if c.shape != sz.shape:
            raise ValueError("costs must have the same length as sizes")
        if np.any(c <= 0):
            raise ValueError("costs must be strictly positive")
        a = a / np.sqrt(c / c.max())
    m = as_count(m, "m", minimum=0)
    lower, upper = _bounds(sz, m, min_per_stratum, capacity)
    a2 = a * a

    # Marginal gain of k -> k+1: a^2/k - a^2/(k+1) = a^2 / (k (k+1))  (inf at k = 0 if a > 0).
    def count_above(t: float) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            root = 0.5 * (-1.0 + np.sqrt(1.0 + 4.0 * a2 / t))
        k = np.where(a2 > 0, np.ceil(root), 0.0)
        return np.clip(k, lower, upper).astype(np.int64) - lower

    def gain(h: int, k: int) -> float:
        if a2[h] == 0.0:
            return 0.0
        return np.inf if k == 0 else a2[h] / (k * (k + 1.0))

    pos = a2[a2 > 0]
    t_hi = float(pos.max()) + 1.0 if pos.size else 1.0
    return _greedy(lower, upper, m, count_above, gain, 0.0, t_hi, sz)


def design_neyman_allocation(
    counts: np.ndarray | list,
    masses: np.ndarray | list,
    stds: np.ndarray | list,
    m: int,
    design: str = "pps",
    min_per_stratum: int = 1,
) -> np.ndarray:
    """Neyman allocation from p-weighted per-stratum statistics (as kept by the tracker).

    ``stds`` are ``sigma_h`` = sqrt of the ``q``-weighted within-stratum variance of
    ``Delta`` (``q_i = p_i / P_h``). For ``design="pps"``: ``m_h ∝ P_h sigma_h``. For
    ``design="srswor"`` we approximate ``p_i ≈ P_h / N_h`` inside a stratum, so
    ``S_{y,h} ≈ (P_h / N_h) sigma_h sqrt(N_h / (N_h - 1))`` and ``m_h ∝ N_h S_{y,h}``.
    """
    cnt = as_nonneg(counts, "counts")
    mass = as_nonneg(masses, "masses")
    sd = as_nonneg(stds, "stds")
    if not (cnt.shape == mass.shape == sd.shape):
        raise ValueError("counts, masses and stds must have the same length")
    if design == "pps":
        return neyman_allocation(mass, sd, m, min_per_stratum, capacity=cnt)
    if design == "srswor":
        fpc = np.sqrt(cnt / np.maximum(cnt - 1.0, 1.0))
        s_y = mass / cnt * sd * fpc
        return neyman_allocation(cnt, s_y, m, min_per_stratum)
    raise ValueError(f"design must be 'pps' or 'srswor', got {design!r}")
