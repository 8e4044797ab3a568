r"""The FedAvg baseline (uniform SRSWOR + self-normalised weights) and uncertainty bands.

FedAvg aggregates a uniform sample ``s`` (``m`` of ``N`` without replacement) with the ratio
estimator ``T_hat = sum_{i in s} p_i Delta_i / sum_{i in s} p_i``. Linearised around
``T = sum_i p_i Delta_i`` with residuals ``e_i = p_i (Delta_i - T)`` (which sum to 0):

.. math::

    T_{hat} - T \approx \frac{N}{m} \sum_{i \in s} e_i, \qquad
    \mathrm{MSE} \approx \frac{N^2 (1 - m/N)}{m (N - 1)} \sum_i p_i^2 \lVert \Delta_i - T \rVert^2 .

This is the SRSWOR variance of the residuals (finite-population correction included); unlike
uniform Horvitz-Thompson it has no term from unequal sizes ``p_i``.

From per-stratum statistics (``P_h``, ``sigma_h``, ``Dbar_h``, ``p2_h = sum_{i in h} p_i^2``),
assuming ``||Delta_i - T||^2`` uncorrelated with ``p_i`` inside a stratum:
``sum_i p_i^2 ||Delta_i - T||^2 ≈ sum_h p2_h (sigma_h^2 + ||Dbar_h - T||^2)``, ``T = sum_h P_h
Dbar_h`` (:func:`fedavg_from_strata`).

Bands: a sum of independent chi-square-like terms ``V = sum_t a_t`` (``a_t`` estimated with
``df_t`` degrees of freedom) has Satterthwaite's ``df = V^2 / sum_t a_t^2 / df_t``; the band is
``[df V / chi2_{1-a/2}(df), df V / chi2_{a/2}(df)]`` (:func:`satterthwaite_band`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ._validate import as_count, as_sizes, as_updates

__all__ = [
    "Band",
    "fedavg_factor",
    "fedavg_from_strata",
    "fedavg_variance",
    "satterthwaite_band",
    "uniform_ht_from_strata",
]


def fedavg_factor(n: int, m: int) -> float:
    """``N^2 (1 - m/N) / (m (N - 1))`` (0 for ``N <= 1`` or ``m >= N``)."""
    if n <= 1 or m >= n:
        return 0.0
    return n * n * (1.0 - m / n) / (m * (n - 1.0))


def fedavg_variance(updates: np.ndarray, sizes: np.ndarray | list, m: int) -> float:
    """Linearised MSE of FedAvg (module doc) from the exact updates."""
    sz = as_sizes(sizes)
    n = len(sz)
    upd = as_updates(updates, n)
    m = as_count(m, "m")
    if m > n:
        raise ValueError(f"m={m} exceeds the number of clients {n}")
    p = sz / sz.sum()
    resid = upd - p @ upd
    return fedavg_factor(n, m) * float((p * p) @ np.einsum("ij,ij->i", resid, resid))


def fedavg_from_strata(
    n_total: int,
    m: int,
    masses: np.ndarray,
    p2: np.ndarray,
    stds: np.ndarray,
    means: np.ndarray | None,
    mean_counts: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-stratum terms ``(within_h, between_h)`` of the FedAvg prediction (their sum is the
    prediction): ``within_h = c p2_h sigma_h^2``, ``between_h = c p2_h max(||Dbar_h - T||^2 -
    sigma_h^2 / n_h, 0)`` with ``c`` = :func:`fedavg_factor`. ``mean_counts`` ``n_h`` are the
    observations behind estimated means (``E||Dbar_hat - Dbar||^2 ≈ sigma_h^2 / n_h`` is
    subtracted); None = exact means, no correction; no ``means``: between terms are 0."""
    c = fedavg_factor(int(n_total), int(m))
    var_in = np.asarray(stds, dtype=np.float64) ** 2
    p2 = np.asarray(p2, dtype=np.float64)
    within = c * p2 * var_in
    between = np.zeros_like(within)
    if means is not None:
        mu = np.asarray(means, dtype=np.float64)
        mu = mu[:, None] if mu.ndim == 1 else mu
        t = np.asarray(masses, dtype=np.float64) @ mu
        dist = np.sum((mu - t) ** 2, axis=1)
        if mean_counts is not None:
            dist = dist - var_in / np.maximum(np.asarray(mean_counts, dtype=np.float64), 1.0)
        between = c * p2 * np.maximum(dist, 0.0)
    return within, between


def uniform_ht_from_strata(
    n_total: int,
    m: int,
    masses: np.ndarray,
    q2: np.ndarray,
    stds: np.ndarray,
    means: np.ndarray,
) -> float:
    r"""Variance of the HT total ``(N/m) sum_{i in s} y_i`` under uniform SRSWOR (``m`` of
    ``N``), ``y_i = z_i v_i``, from per-stratum statistics of ``v``: z-masses ``Z_h = sum_{i in
    h} z_i``, ``q2_h = sum_{i in h} z_i^2``, the z-weighted std ``sigma_h`` and mean ``mu_h`` of
    ``v``. ``N^2 (1 - m/N) / m * S_y^2`` with ``(N - 1) S_y^2 = sum_i ||y_i||^2 - ||sum_i y_i||^2
    / N``, ``sum_{i in h} ||y_i||^2 ≈ q2_h (sigma_h^2 + ||mu_h||^2)`` (exact when ``z`` is
    constant in each stratum or ``||v_i||^2`` uncorrelated with it) and ``sum_i y_i = sum_h Z_h
    mu_h``. With the difference estimator ``y_i = p_i e_i`` (``z_i = p_i s_i``, ``v_i = e_i /
    s_i``; ``s_i = 1``: ``z = p``) this is its MSE in a FedAvg round with HT weights."""
    c = fedavg_factor(int(n_total), int(m))
    mu = np.asarray(means, dtype=np.float64)
    mu = mu[:, None] if mu.ndim == 1 else mu
    sq = np.asarray(q2, dtype=np.float64) * (np.asarray(stds, dtype=np.float64) ** 2
                                              + np.sum(mu * mu, axis=1))
    tot = np.asarray(masses, dtype=np.float64) @ mu
    return max(c * (float(sq.sum()) - float(tot @ tot) / int(n_total)), 0.0)


@dataclass(frozen=True)
class Band:
    """A predicted MSE ``value`` with its ``[lo, hi]`` band and effective degrees of freedom
    (``df = inf``: exact, the band is the value)."""

    value: float
    lo: float
    hi: float
    df: float

    def to_json(self) -> list[float]:
        """``[value, lo, hi]``."""
        return [float(self.value), float(self.lo), float(self.hi)]


def _chi2_ppf(q: float, df: float) -> float:
    """``scipy.stats.chi2.ppf(q, df)`` without its per-call argument machinery (~0.1 ms):
    the same ``2 gammaincinv(df / 2, q)`` that it evaluates for ``0 < q < 1``, ``df > 0``."""
    if 0.0 < q < 1.0 and df > 0.0:
        from scipy.special import gammaincinv

        return float(2 * gammaincinv(np.float64(df) / 2, np.float64(q)))
    from scipy.stats import chi2

    return float(chi2.ppf(q, df))


def satterthwaite_band(terms: np.ndarray, dfs: np.ndarray, level: float = 0.8) -> Band:
    """Band of ``V = sum terms`` (module doc); ``dfs`` = inf marks exact terms; ``level`` in
    (0, 1)."""
    if not 0.0 < float(level) < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    a = np.asarray(terms, dtype=np.float64)
    d = np.asarray(dfs, dtype=np.float64)
    v = float(a.sum())
    noisy = np.isfinite(d) & (a > 0)
    if v <= 0 or not noisy.any():
        return Band(v, v, v, math.inf)
    df = v * v / float(np.sum(a[noisy] ** 2 / np.maximum(d[noisy], 1.0)))
    tail = (1.0 - level) / 2.0
    lo = df * v / _chi2_ppf(1.0 - tail, df)
    hi = df * v / _chi2_ppf(tail, df)
    return Band(v, lo, hi, df)
