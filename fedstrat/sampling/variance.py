"""Design variances (trace of covariance, ``E||T_hat - T||^2``) and their prediction from
per-stratum statistics (e.g. of a :class:`~fedstrat.sampling.tracker.StratumVarianceTracker`)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ._validate import all_at_least, as_count, as_sizes, as_updates
from .baseline import Band, satterthwaite_band
from .fedavg_sized import fedavg_terms
from .samplers import pps_inclusion
from .strata import Strata, check_allocation
from .tracker import StratumVarianceTracker

__all__ = [
    "StratumVarianceTracker",
    "uniform_variance",
    "multinomial_variance",
    "estimator_variance",
    "stratum_statistics",
    "predicted_variance",
    "design_terms",
    "point_stratified",
    "VariancePrediction",
    "spread_shape",
]


def _ss(x: np.ndarray) -> float:
    """Sum of squared deviations from the mean, summed over dimensions."""
    if x.shape[0] == 0:
        return 0.0
    return float(np.sum((x - x.mean(axis=0)) ** 2))


def uniform_variance(updates: np.ndarray, sizes: np.ndarray | list, m: int) -> float:
    """SRSWOR variance ``N^2 (1 - m/N) S_y^2 / m``, ``S_y^2 = sum ||y_i - ybar||^2 / (N-1)``,
    ``y_i = p_i Delta_i`` (exact)."""
    sz = as_sizes(sizes)
    n = len(sz)
    upd = as_updates(updates, n)
    m = as_count(m, "m")
    if m > n:
        raise ValueError(f"m={m} exceeds the number of clients {n}")
    if n == 1:
        return 0.0
    y = (sz / sz.sum())[:, None] * upd
    return n * n * (1.0 - m / n) * _ss(y) / (n - 1) / m


def multinomial_variance(updates: np.ndarray, sizes: np.ndarray | list, m: int) -> float:
    """MD-sampling variance ``(1/m) sum_i p_i ||Delta_i - T||^2`` (exact)."""
    sz = as_sizes(sizes)
    upd = as_updates(updates, len(sz))
    m = as_count(m, "m")
    p = sz / sz.sum()
    t = p @ upd
    return float(p @ np.sum((upd - t) ** 2, axis=1)) / m


def estimator_variance(
    updates: np.ndarray,
    sizes: np.ndarray | list,
    strata: Strata | np.ndarray | list,
    allocation: np.ndarray | list,
    design: str = "srswor",
) -> float:
    """Variance of the stratified estimator.

    design="srswor" (exact): ``sum_h N_h^2 (1 - m_h/N_h) S_{y,h}^2 / m_h``.

    design="pps" (Hansen-Hurwitz APPROXIMATION): certainty units contribute 0; for the
    non-certainty units ``h'`` of stratum ``h``: ``V_h ≈ P_h'^2 sigma_h^2 / m_h'`` with
    ``sigma_h^2 = sum_{i in h'} q_i ||Delta_i - Dbar_h||^2``, ``q_i = p_i / P_h'``. This is the
    with-replacement variance; the without-replacement design is usually somewhat smaller.
    """
    sz = as_sizes(sizes)
    n = len(sz)
    upd = as_updates(updates, n)
    st = strata if isinstance(strata, Strata) else Strata(strata)
    if st.n_clients != n:
        raise ValueError("strata must label every client")
    alloc = check_allocation(st, allocation)
    p = sz / sz.sum()
    total = 0.0
    for h in range(st.n_strata):
        mem = st.members(h)
        mh, nh = int(alloc[h]), len(mem)
        if design == "srswor":
            if nh > 1:
                s2 = _ss(p[mem, None] * upd[mem]) / (nh - 1)
                total += nh * nh * (1.0 - mh / nh) * s2 / mh
        elif design == "pps":
            pi = pps_inclusion(p[mem], mh)
            rest = mem[pi < 1.0]
            m_rest = mh - int(np.sum(pi >= 1.0))
            if len(rest) and m_rest > 0:
                big_p = p[rest].sum()
                q = p[rest] / big_p
                dbar = q @ upd[rest]
                sigma2 = float(q @ np.sum((upd[rest] - dbar) ** 2, axis=1))
                total += big_p * big_p * sigma2 / m_rest
        else:
            raise ValueError(f"design must be 'pps' or 'srswor', got {design!r}")
    return total


@dataclass(frozen=True)
class VariancePrediction:
    """Predicted MSEs of the stratified design, of uniform SRSWOR with HT weights and of FedAvg
    (uniform SRSWOR with self-normalised weights), from the same statistics; optional bands
    (:class:`~fedstrat.sampling.baseline.Band`) from the tracker's sample counts."""

    stratified: float
    uniform: float
    fedavg: float = math.nan
    stratified_band: Band | None = None
    fedavg_band: Band | None = None
    gain_se: float = math.nan
    #: a lower bound of the saving found otherwise (e.g. the pooled size trend,
    #: :class:`~fedstrat.sampling.size_trend.SizeTrend`); used by :meth:`gain_lower` when finite
    gain_bound: float = math.nan

    def gain_lower(self, z: float = 1.2816) -> float:
        """Lower confidence bound ``(fedavg - stratified) - z * gain_se`` of what the
        stratified design saves over FedAvg (NaN without a standard error), or
        ``gain_bound`` when that is given."""
        if math.isfinite(self.gain_bound):
            return float(self.gain_bound)
        return float(self.fedavg - self.stratified - z * self.gain_se)


def stratum_statistics(
    updates: np.ndarray, sizes: np.ndarray | list, strata: Strata | np.ndarray | list
) -> dict[str, np.ndarray]:
    """Exact per-stratum ``counts`` N_h, ``masses`` P_h, p-weighted ``means`` Dbar_h and
    ``stds`` sigma_h (``sigma_h^2 = sum_{i in h} q_i ||Delta_i - Dbar_h||^2``, ``q_i = p_i/P_h``).
    These are what a :class:`StratumVarianceTracker` fed with HT weights estimates."""
    sz = as_sizes(sizes)
    upd = as_updates(updates, len(sz))
    st = strata if isinstance(strata, Strata) else Strata(strata)
    p = sz / sz.sum()
    lab = st.labels
    masses = np.bincount(lab, weights=p, minlength=st.n_strata)
    # One sparse pass for first and second moments: sigma_h^2 = E_q||x||^2 - ||E_q x||^2.
    # Strata where this loses more than ~8 digits to cancellation are recomputed two-pass.
    from scipy.sparse import csr_matrix

    ind = csr_matrix((p, (lab, np.arange(len(p)))), shape=(st.n_strata, len(p)))
    means = np.asarray(ind @ upd) / masses[:, None]
    second = np.asarray(ind @ np.einsum("ij,ij->i", upd, upd)).reshape(-1) / masses
    var = second - np.sum(means * means, axis=1)
    for h in np.flatnonzero(var <= 1e-8 * second):
        mem = st.members(h)
        q = p[mem] / masses[h]
        means[h] = q @ upd[mem]
        var[h] = q @ np.sum((upd[mem] - means[h]) ** 2, axis=1)
    return {
        "counts": st.sizes.astype(np.float64),
        "masses": masses,
        "means": means,
        "stds": np.sqrt(np.maximum(var, 0.0)),
    }


def design_terms(
    counts: np.ndarray, masses: np.ndarray, stds: np.ndarray, allocation: np.ndarray, design: str
) -> np.ndarray:
    """Per-stratum terms of the stratified prediction (see :func:`predicted_variance`)."""
    cnt, mass, alloc = counts, masses, allocation
    var_in = stds * stds
    if design == "pps":
        return mass * mass * var_in / alloc
    if design == "srswor":
        s_y2 = (mass / cnt) ** 2 * var_in * cnt / np.maximum(cnt - 1.0, 1.0)
        return cnt * cnt * (1.0 - alloc / cnt) * s_y2 / alloc
    raise ValueError(f"design must be 'pps' or 'srswor', got {design!r}")


def point_stratified(
    counts: np.ndarray, masses: np.ndarray, stds: np.ndarray, allocation: np.ndarray, design: str
) -> float:
    """``sum_h`` of :func:`design_terms` (inputs as float64): :func:`predicted_variance`'s
    ``stratified`` (the same float) without its checks, bands and baselines, e.g. to rule out
    a candidate design before its full prediction."""
    f64 = np.float64
    return float(np.sum(design_terms(
        np.asarray(counts, dtype=f64), np.asarray(masses, dtype=f64),
        np.asarray(stds, dtype=f64), np.asarray(allocation, dtype=f64), design)))


def predicted_variance(
    counts: np.ndarray | list,
    masses: np.ndarray | list,
    stds: np.ndarray | list,
    allocation: np.ndarray | list,
    design: str = "pps",
    means: np.ndarray | None = None,
    m: int | None = None,
    *,
    p2: np.ndarray | list | None = None,
    mean_counts: np.ndarray | list | None = None,
    level: float = 0.8,
    sized: dict[str, np.ndarray] | None = None,
    covs: np.ndarray | None = None,
) -> VariancePrediction:
    """Predict stratified, uniform-HT and FedAvg MSE from per-stratum statistics.

    Inputs are ``N_h``, ``P_h`` (sum 1), ``sigma_h`` (p-weighted within std of ``Delta``) and
    optionally ``Dbar_h`` (p-weighted means), e.g. from a tracker. Approximations:

    - pps: ``sum_h P_h^2 sigma_h^2 / m_h`` (Hansen-Hurwitz, certainty units ignored).
    - srswor: ``p_i ≈ P_h / N_h`` in stratum h, so ``S_{y,h}^2 ≈ (P_h/N_h)^2 sigma_h^2 N_h /
      (N_h - 1)`` and ``V = sum_h N_h^2 (1 - m_h/N_h) S_{y,h}^2 / m_h``.
    - uniform with sample size ``m`` (default ``sum m_h``): ``N^2 (1 - m/N) S_y^2 / m`` with
      ``(N-1) S_y^2 = within + between``: ``within = sum_h (P_h/N_h)^2 N_h sigma_h^2`` and
      ``between = sum_h N_h ||ybar_h - ybar||^2``, ``ybar_h = P_h Dbar_h / N_h`` (exact),
      ``ybar = sum_h P_h Dbar_h / N``. Without ``means`` the between term is omitted, so the
      uniform prediction is then a lower bound.
    - FedAvg: :func:`fedstrat.sampling.baseline.fedavg_from_strata` with ``p2_h = sum_{i in h}
      p_i^2`` (default ``P_h^2 / N_h``); with ``sized`` (the tracker's
      :meth:`~StratumVarianceTracker.size_weighted` moments of the present strata) from the
      ``p_i^2``-weighted moments instead (:func:`fedstrat.sampling.fedavg_sized.fedavg_terms`).

    ``mean_counts`` ``n_h`` (observations behind estimated ``sigma_h`` and ``Dbar_h``): between
    terms are corrected for the noise of the estimated means (``- sigma_h^2 / n_h``, clipped at
    0) and the stratified and FedAvg predictions get ``level`` bands (Satterthwaite, each
    stratum's terms with ``n_h - 1`` degrees of freedom, at least 1) and the saving
    ``fedavg - stratified`` a standard error (``gain_se``, see :func:`_gain_se`). ``covs``
    (H, k, k), the within-stratum covariances of the vectors behind ``stds`` and ``means``
    or any positive multiple of each (only their shape is used: e.g.
    :meth:`StratumVarianceTracker.scatter`) make that
    standard error follow how the spread is laid out (:func:`spread_shape`); without them it
    is the worst case (all spread along one direction).
    """
    cnt = np.asarray(counts, dtype=np.float64)
    mass = np.asarray(masses, dtype=np.float64)
    sd = np.asarray(stds, dtype=np.float64)
    alloc = np.asarray(allocation, dtype=np.float64)
    if not (cnt.shape == mass.shape == sd.shape == alloc.shape) or cnt.ndim != 1:
        raise ValueError("counts, masses, stds and allocation must be 1-D of equal length")
    for name, arr in (("counts", cnt), ("masses", mass), ("stds", sd)):
        if not all_at_least(arr, 0.0):
            raise ValueError(f"{name} must be finite and non-negative")
    if not (all_at_least(alloc, 1.0) and (alloc <= cnt).all()):
        raise ValueError("allocation must satisfy 1 <= m_h <= N_h")
    terms = design_terms(cnt, mass, sd, alloc, design)
    strat = float(np.sum(terms))
    var_in = sd * sd
    n_total = float(cnt.sum())
    m_u = float(alloc.sum()) if m is None else float(as_count(m, "m"))
    if m_u > n_total:
        raise ValueError(f"m={m_u:g} exceeds the number of clients {n_total:g}")
    nobs = None if mean_counts is None else np.asarray(mean_counts, dtype=np.float64)
    within = float(np.sum((mass / cnt) ** 2 * cnt * var_in))
    between = 0.0
    if means is not None:
        mu = np.asarray(means, dtype=np.float64)
        if mu.ndim == 1:
            mu = mu[:, None]
        if mu.shape[0] != len(cnt):
            raise ValueError("means must have one row per stratum")
        ybar_h = mass[:, None] * mu / cnt[:, None]
        ybar = (mass @ mu) / n_total
        per = cnt * np.sum((ybar_h - ybar) ** 2, axis=1)
        if nobs is not None:
            per = np.maximum(per - (mass / cnt) ** 2 * cnt * var_in / np.maximum(nobs, 1.0), 0.0)
        between = float(np.sum(per))
        means = mu
    p2v = mass * mass / cnt if p2 is None else np.asarray(p2, dtype=np.float64)
    f_in, f_btw, f_var, f_obs = fedavg_terms(int(n_total), int(m_u), mass, p2v, sd, means, nobs,
                                             sized)
    fedavg = float(f_in.sum() + f_btw.sum())
    s_band = f_band = None
    gain_se = math.nan
    if nobs is not None:
        dfs = np.maximum(nobs - 1.0, 1.0)
        f_dfs = np.maximum(f_obs - 1.0, 1.0)
        s_band = satterthwaite_band(terms, dfs, level)
        f_band = satterthwaite_band(np.concatenate([f_in, f_btw]),
                                    np.concatenate([f_dfs, dfs]), level)
        shape = None if covs is None or means is None else spread_shape(covs, means, mass)
        gain_se = _gain_se(terms, f_in, f_btw, f_var, f_dfs, np.maximum(nobs, 1.0), shape)
    if n_total <= 1:
        return VariancePrediction(strat, 0.0, 0.0, s_band, f_band, gain_se)
    s2 = (within + between) / (n_total - 1.0)
    uni = n_total**2 * (1.0 - m_u / n_total) * s2 / m_u
    return VariancePrediction(strat, float(uni), fedavg, s_band, f_band, gain_se)


def _gain_se(
    terms: np.ndarray,
    f_in: np.ndarray,
    f_btw: np.ndarray,
    var_in: np.ndarray,
    dfs: np.ndarray,
    nobs: np.ndarray,
    shape: tuple[np.ndarray, np.ndarray] | None = None,
) -> float:
    """Standard error of ``fedavg - stratified`` (the predicted saving), for Gaussian sketches
    with within-stratum covariance ``S_h`` (``tr S_h = sigma_h^2``). Both are linear in each
    ``sigma_h^2``, estimated with ``df_h`` degrees of freedom (variance ``2 tr(S_h^2) / df_h =
    2 rho_h sigma_h^4 / df_h``), so the within parts enter with coefficient ``f_in_h -
    terms_h``; FedAvg's between term ``c p2_h B_h``, ``B_h = ||d_h||^2``, ``d_h = Dbar_h - T``,
    adds the noise of an estimated mean ``d_h + e``, ``e ~ N(0, S_h / n_h)``: ``(c p2_h)^2 (4
    d_h' S_h d_h / n_h + 2 tr(S_h^2) / n_h^2) = (c p2_h)^2 (4 r_h B_h sigma_h^2 / n_h + 2 rho_h
    sigma_h^4 / n_h^2)``. ``shape`` = ``(r, rho)`` from :func:`spread_shape`; None: the
    worst case ``r = rho = 1``. With size-weighted FedAvg moments ``var_in`` and ``dfs`` are
    its within terms' (``sigma_(2),h^2`` treated as the same estimate, of the same shape)."""
    r, rho = (1.0, 1.0) if shape is None else shape
    with np.errstate(invalid="ignore", divide="ignore"):
        coef = np.where(var_in > 0, f_in / var_in, 0.0)  # c p2_h
        b = np.where(coef > 0, f_btw / coef, 0.0)  # B_h
    var = 2.0 * rho * (f_in - terms) ** 2 / dfs
    var += coef**2 * (4.0 * r * b * var_in / nobs + 2.0 * rho * var_in**2 / nobs**2)
    return float(np.sqrt(np.sum(var)))


def spread_shape(
    covs: np.ndarray, means: np.ndarray, masses: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """How each stratum's spread is laid out, for :func:`_gain_se`: ``r_h = d_h' S_h d_h /
    (||d_h||^2 tr S_h)`` (the share of the spread along ``d_h = Dbar_h - T``, ``T = sum_h P_h
    Dbar_h``) and ``rho_h = tr(S_h^2) / tr(S_h)^2`` (1 / the effective dimension); both in
    ``[0, 1]`` (``rho_h >= 1/k``), 1 (the worst case) where ``S_h`` or ``d_h`` is zero. From
    an estimated ``S_h`` of ``n`` updates ``rho_h`` is biased up (``E tr(S_hat^2) ~ tr(S^2)
    + tr(S)^2 / n``): the standard error errs wide."""
    cov = np.asarray(covs, dtype=np.float64)
    mu = np.asarray(means, dtype=np.float64)
    mu = mu[:, None] if mu.ndim == 1 else mu
    if cov.shape != (mu.shape[0], mu.shape[1], mu.shape[1]):
        raise ValueError(f"covs must have shape {(mu.shape[0], mu.shape[1], mu.shape[1])}, "
                         f"got {cov.shape}")
    d = mu - np.asarray(masses, dtype=np.float64) @ mu
    k = cov.shape[1]
    flat = cov.reshape(len(cov), k * k)
    sq = np.einsum("ij,ij->i", flat, flat)  # tr(S^2) for symmetric S (first: loads the cache)
    # a NaN or Inf entry makes its row's sum of squares NaN or Inf: the entries are checked
    # only when one is (it may also be finite entries whose squares overflow)
    if not np.isfinite(sq).all() and not np.all(np.isfinite(cov)):
        raise ValueError("covs must be finite")
    tr = flat[:, :: k + 1].sum(axis=1)
    quad = np.sum(np.einsum("hij,hj->hi", cov, d) * d, axis=1)
    dd = np.sum(d * d, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.where((tr > 0) & (dd > 0), quad / (dd * tr), 1.0)
        rho = np.where(tr > 0, sq / (tr * tr), 1.0)
    return np.clip(r, 0.0, 1.0), np.clip(rho, 0.0, 1.0)
