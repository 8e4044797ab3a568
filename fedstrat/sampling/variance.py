"""Design variances (trace of covariance, ``E||T_hat - T||^2``) and per-stratum tracking."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._validate import all_at_least, as_count, as_sizes, as_updates
from .baseline import Band, satterthwaite_band
from .fedavg_sized import SizeWeighted, as_size, fedavg_terms
from .samplers import pps_inclusion
from .strata import Strata

__all__ = [
    "StratumVarianceTracker",
    "uniform_variance",
    "multinomial_variance",
    "estimator_variance",
    "stratum_statistics",
    "predicted_variance",
    "design_terms",
    "VariancePrediction",
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


def _check_alloc(strata: Strata, allocation: np.ndarray | list) -> np.ndarray:
    alloc = np.asarray(allocation)
    if alloc.shape != (strata.n_strata,) or np.any(alloc != np.round(alloc)):
        raise ValueError(f"allocation must be {strata.n_strata} integers")
    alloc = alloc.astype(np.int64)
    if np.any(alloc < 1) or np.any(alloc > strata.sizes):
        raise ValueError("allocation must satisfy 1 <= m_h <= N_h")
    return alloc


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
    alloc = _check_alloc(st, allocation)
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
    stratum's terms with ``n_h - 1`` degrees of freedom, at least 1).
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
    m_u = float(alloc.sum()) if m is None else float(m)
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
        gain_se = _gain_se(terms, f_in, f_btw, f_var, f_dfs, np.maximum(nobs, 1.0))
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
) -> float:
    """Standard error of ``fedavg - stratified`` (the predicted saving). Both are linear in
    each ``sigma_h^2`` (estimated with ``df_h`` degrees of freedom: variance ``2 sigma_h^4 /
    df_h``), so the within parts enter with coefficient ``f_in_h - terms_h``; FedAvg's between
    term ``c p2_h B_h`` adds ``(c p2_h)^2 (4 B_h sigma_h^2 / n_h + 2 sigma_h^4 / n_h^2)`` (the
    noise of an estimated stratum mean). With size-weighted FedAvg moments ``var_in`` and
    ``dfs`` are its within terms' (sigma_(2),h^2 treated as the same estimate)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        coef = np.where(var_in > 0, f_in / var_in, 0.0)  # c p2_h
        b = np.where(coef > 0, f_btw / coef, 0.0)  # B_h
    var = 2.0 * (f_in - terms) ** 2 / dfs
    var += coef**2 * (4.0 * b * var_in / nobs + 2.0 * var_in**2 / nobs**2)
    return float(np.sqrt(np.sum(var)))


class StratumVarianceTracker:
    """Online per-stratum weighted mean and variance of update sketches.

    Weighted Welford: for a new sketch ``x`` with weight ``w``: ``W += w``,
    ``mean += (w/W)(x - mean)``, ``M2 += w (x - mean_old)·(x - mean_new)``; variance
    ``M2 / W`` (trace, summed over dims). With ``ema=lambda`` in (0, 1) past statistics are
    decayed first: ``W <- lambda W``, ``M2 <- lambda M2`` (exponentially weighted moments).
    Feed ``weight = Selection.weights[i]`` (the HT weight ``p_i / pi_i``): the weighted moments
    then estimate the p-weighted stratum mean ``Dbar_h`` and ``sigma_h^2`` used by the pps design
    and :func:`design_neyman_allocation`.

    ``stds()``: strata with fewer than 2 updates get ``prior_std`` or, if None, the pooled std
    of the observed strata (``sqrt(sum M2 / sum W)``), or 1.0 when nothing was observed.
    """

    def __init__(
        self, n_strata: int, dim: int, prior_std: float | None = None, ema: float | None = None
    ) -> None:
        self.n_strata = as_count(n_strata, "n_strata")
        self.dim = as_count(dim, "dim")
        if prior_std is not None and (not np.isfinite(prior_std) or prior_std < 0):
            raise ValueError("prior_std must be finite and non-negative")
        if ema is not None and not 0.0 < ema < 1.0:
            raise ValueError("ema must be in (0, 1)")
        self.prior_std = prior_std
        self.ema = ema
        self._w = np.zeros(self.n_strata)
        self._mean = np.zeros((self.n_strata, self.dim))
        self._m2 = np.zeros(self.n_strata)
        self._n = np.zeros(self.n_strata, dtype=np.int64)
        self._w2 = np.zeros(self.n_strata)
        # size-weighted moments (weight x size): W, sum w^2, mean, M2, count
        self._sw = SizeWeighted(self.n_strata, self.dim)
        #: the scale the moments are in (:meth:`rescale_to`); None: as fed
        self.unit: float | None = None

    def update(
        self, stratum: int, sketch: np.ndarray, weight: float = 1.0, size: float | None = None
    ) -> None:
        """Add one observation ``sketch`` (dim,) of stratum ``stratum`` with weight ``weight``;
        with the client's ``size`` (any positive scale, e.g. its example count) also to the
        size-weighted moments (weight ``weight * size``, see :meth:`size_weighted`)."""
        h = int(stratum)
        if not 0 <= h < self.n_strata:
            raise ValueError(f"stratum {stratum} out of range 0..{self.n_strata - 1}")
        x = np.asarray(sketch, dtype=np.float64).reshape(-1)
        if x.shape != (self.dim,):
            raise ValueError(f"sketch must have shape ({self.dim},), got {x.shape}")
        if not np.all(np.isfinite(x)):
            raise ValueError("sketch contains NaN or inf")
        w = float(weight)
        if not np.isfinite(w) or w <= 0:
            raise ValueError("weight must be finite and positive")
        if self.ema is not None:
            self._w[h] *= self.ema
            self._m2[h] *= self.ema
            self._w2[h] *= self.ema * self.ema
        self._w[h] += w
        self._w2[h] += w * w
        delta = x - self._mean[h]
        self._mean[h] += (w / self._w[h]) * delta
        self._m2[h] += w * float(delta @ (x - self._mean[h]))
        self._n[h] += 1
        if size is not None:
            self._sw.update(h, x, w, as_size(size), self.ema)

    def decay(self, factor: float) -> None:
        """Forget the past of every stratum by ``factor`` in (0, 1]: ``W``, ``M2`` times
        ``factor`` and ``sum w^2`` times ``factor^2`` (means and variances unchanged; later
        updates weigh more). Called once per round it is a per-round exponential forgetting,
        independent of how many updates each stratum gets."""
        f = float(factor)
        if not 0.0 < f <= 1.0:
            raise ValueError("factor must be in (0, 1]")
        self._w *= f
        self._m2 *= f
        self._w2 *= f * f
        self._sw.decay(f)

    def rescale_to(self, unit: float) -> None:
        """Express what was tracked in the scale ``unit`` (a mean squared sketch norm, e.g.
        :meth:`.UpdateScale.forecast`): as if every sketch seen so far had been multiplied by
        ``sqrt(unit / self.unit)`` (Welford moments of ``c x``: means times ``c``, ``M2`` times
        ``c^2``, weights unchanged; exact). The first call only records ``unit`` (what was
        fed before is taken to be in it); :attr:`unit` is None until then."""
        u = float(unit)
        if not math.isfinite(u) or u <= 0:
            raise ValueError("unit must be finite and positive")
        if self.unit is not None and u != self.unit:
            f = u / self.unit
            self._mean *= math.sqrt(f)
            self._m2 *= f
            self._sw.rescale(f)
        self.unit = u

    def size_weighted(self, present: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """:class:`SizeWeighted` moments of the updates fed with a ``size`` (weight ``w_i
        s_i``): with HT weights ``p_i / pi_i`` and ``s_i`` proportional to ``p_i`` they estimate
        the ``p_i^2``-weighted stratum mean and dispersion that FedAvg's MSE needs
        (:func:`fedstrat.sampling.fedavg_sized.fedavg_terms`). ``means`` (H, dim),
        ``variances`` (NaN with < 2 sized updates) and Kish ``effective_counts``; only the
        strata ``present`` (an index) when given."""
        out = self._sw.moments(self._w, self._w2)
        return out if present is None else {k: v[present] for k, v in out.items()}

    def counts(self) -> np.ndarray:
        """Number of updates seen per stratum."""
        return self._n.copy()

    def effective_counts(self) -> np.ndarray:
        """Kish's effective number of updates per stratum, ``(sum w)^2 / sum w^2`` (with the
        exponential forgetting applied to both); equals :meth:`counts` for equal weights
        without ``ema``."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self._w2 > 0, self._w**2 / self._w2, 0.0)

    def means(self) -> np.ndarray:
        """Weighted mean sketch per stratum (zeros where unobserved), shape (H, dim)."""
        return self._mean.copy()

    def variances(self) -> np.ndarray:
        """Weighted within-stratum variance (trace) per stratum; NaN with < 2 updates."""
        with np.errstate(invalid="ignore", divide="ignore"):
            v = np.where(self._n >= 2, self._m2 / self._w, np.nan)
        return np.maximum(v, 0.0)

    def stds(self) -> np.ndarray:
        """Per-stratum std; strata with < 2 updates get the prior (see class doc)."""
        v = self.variances()
        seen = self._n >= 2
        if self.prior_std is not None:
            prior = float(self.prior_std)
        elif seen.any():
            prior = float(np.sqrt(max(self._m2[seen].sum() / self._w[seen].sum(), 0.0)))
        else:
            prior = 1.0
        return np.where(seen, np.sqrt(np.where(seen, v, 0.0)), prior)

    def state_dict(self) -> dict[str, Any]:
        """Checkpointable state (plain numpy arrays and floats)."""
        return {
            "n_strata": self.n_strata,
            "dim": self.dim,
            "prior_std": self.prior_std,
            "ema": self.ema,
            "w": self._w.copy(),
            "mean": self._mean.copy(),
            "m2": self._m2.copy(),
            "n": self._n.copy(),
            "w2": self._w2.copy(),
            "unit": self.unit,
            **self._sw.state_dict(),
        }

    def to_json(self) -> dict[str, Any]:
        """:meth:`state_dict` with arrays as lists (the checkpoint form)."""
        return {k: v.tolist() if isinstance(v, np.ndarray) else v
                for k, v in self.state_dict().items()}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> StratumVarianceTracker:
        """A tracker restored from :meth:`state_dict` or :meth:`to_json`."""
        out = cls(int(state["n_strata"]), int(state["dim"]), prior_std=state["prior_std"],
                  ema=state["ema"])
        out.load_state_dict(state)
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a state produced by :meth:`state_dict`."""
        if int(state["n_strata"]) != self.n_strata or int(state["dim"]) != self.dim:
            raise ValueError("state_dict shape does not match this tracker")
        self.prior_std = state["prior_std"]
        self.ema = state["ema"]
        self._w = np.asarray(state["w"], dtype=np.float64).copy()
        self._mean = np.asarray(state["mean"], dtype=np.float64).copy()
        self._m2 = np.asarray(state["m2"], dtype=np.float64).copy()
        self._n = np.asarray(state["n"], dtype=np.int64).copy()
        w2 = state.get("w2")
        if w2 is None:  # older state: as if equal weights (effective count = count)
            w2 = self._w**2 / np.maximum(self._n, 1)
        self._w2 = np.asarray(w2, dtype=np.float64).copy()
        self._sw = SizeWeighted.from_state(self.n_strata, self.dim, state)
        unit = state.get("unit")  # older state: as fed
        self.unit = None if unit is None else float(unit)
