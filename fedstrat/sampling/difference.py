r"""The model-assisted (control-variate) difference estimator and its exact design variance.

With a control variate :math:`c_i` for EVERY client, fixed before the round's sample is drawn
(e.g. the client's last received update, zero or a stratum mean for a client never seen), and
the design's weights :math:`w_i` (any :class:`~fedstrat.sampling.Selection` with
``unbiased=True``: uniform, stratified srswor / pps, multinomial, clustered),

.. math:: \hat T_{\rm diff} = \sum_{i=1}^N p_i c_i + \sum_{i \in s} w_i (\Delta_i - c_i).

Unbiased for ``T = sum_i p_i Delta_i`` whenever ``sum_{i in s} w_i y_i`` is unbiased for
``sum_i p_i y_i`` for every ``y`` (the HT property of the design), applied to the residuals
``e_i = Delta_i - c_i``: ``E[T_diff] = sum p_i c_i + sum p_i e_i = T``. For the same reason its
variance is the design's variance OF THE RESIDUALS (the first sum is a constant):
``Var(T_diff) = V_design(Delta - c)``. It beats the plain HT estimator exactly when the
residuals are less dispersed (in the design's sense) than the updates themselves.

Pure numpy; no flwr, no torch.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ._validate import as_sizes, as_updates
from .allocation import neyman_allocation
from .samplers import StratifiedSampler, pps_inclusion
from .selection import Selection
from .strata import Strata, check_allocation
from .variance import estimator_variance, multinomial_variance, uniform_variance

__all__ = [
    "DIFFERENCE_DESIGNS",
    "ResidualPPSSampler",
    "StaleControlModel",
    "control_offset",
    "difference_estimate",
    "difference_variance",
    "fill_controls",
    "residual_pps_allocation",
    "residual_pps_stds",
    "residual_pps_variance",
]

#: designs whose exact (srswor, uniform, multinomial, clustered) or Hansen-Hurwitz (pps)
#: variance :func:`difference_variance` knows
DIFFERENCE_DESIGNS: tuple[str, ...] = ("uniform", "multinomial", "srswor", "pps", "clustered")


def control_offset(sizes: np.ndarray | list, controls: np.ndarray) -> np.ndarray:
    """``sum_i p_i c_i`` (float64, shape ``(D,)``) over the whole population."""
    sz = as_sizes(sizes)
    c = as_updates(controls, len(sz))
    return (sz / sz.sum()) @ c


def difference_estimate(
    selection: Selection,
    updates: np.ndarray,
    controls: np.ndarray,
    sizes: np.ndarray | list,
) -> np.ndarray:
    """``sum_i p_i c_i + sum_{i in s} w_i (Delta_i - c_i)``.

    ``updates`` and ``controls`` are ``(N, D)`` indexed by client id (only the rows of the
    selected clients of ``updates`` are read).
    """
    sz = as_sizes(sizes)
    c = as_updates(controls, len(sz))
    u = np.asarray(updates, dtype=np.float64)
    if u.ndim == 1:
        u = u[:, None]
    ids = np.asarray(selection.ids, dtype=np.int64)
    resid = u[ids] - c[ids]
    if not (np.isfinite(resid).all() and np.isfinite(c).all()):
        raise ValueError("the selected updates and the controls must be finite")
    return (sz / sz.sum()) @ c + np.asarray(selection.weights, np.float64) @ resid


def difference_variance(
    updates: np.ndarray,
    controls: np.ndarray,
    sizes: np.ndarray | list,
    m: int | None = None,
    *,
    design: str = "uniform",
    strata: Strata | np.ndarray | list | None = None,
    allocation: np.ndarray | list | None = None,
    sampler: Any = None,
) -> float:
    """``E||T_diff - T||^2`` = the design variance of the residuals ``Delta_i - c_i``.

    design "uniform" (SRSWOR of ``m``, exact), "multinomial" (exact), "srswor" / "pps"
    (stratified with ``strata`` and ``allocation``; srswor exact, pps the Hansen-Hurwitz
    approximation of :func:`estimator_variance`), "clustered" (``sampler`` a
    :class:`ClusteredSampler`, exact).
    """
    sz = as_sizes(sizes)
    resid = as_updates(updates, len(sz)) - as_updates(controls, len(sz))
    if design == "uniform":
        return float(uniform_variance(resid, sz, _need(m, "m")))
    if design == "multinomial":
        return float(multinomial_variance(resid, sz, _need(m, "m")))
    if design in ("srswor", "pps"):
        return float(
            estimator_variance(resid, sz, _need(strata, "strata"), _need(allocation, "allocation"),
                               design)
        )
    if design == "clustered":
        return float(_need(sampler, "sampler").variance(resid))
    raise ValueError(f"design must be one of {DIFFERENCE_DESIGNS}, got {design!r}")


def _need(value: Any, name: str) -> Any:
    if value is None:
        raise ValueError(f"{name} is required for this design")
    return value


def fill_controls(
    controls: np.ndarray,
    known: np.ndarray,
    labels: np.ndarray | None = None,
    mode: str = "stratum",
) -> np.ndarray:
    """Controls for every client: known rows as given, the others filled.

    ``mode="zero"``: 0. ``mode="stratum"``: the plain mean of the known rows with the same
    label (``labels``, e.g. label-histogram strata); a label without a known row, or
    ``labels=None``, gets the mean of all known rows; 0 when no row is known. The fill depends
    only on what is known before the draw, so the estimator stays unbiased.
    """
    c = np.array(controls, dtype=np.float64, copy=True)
    if c.ndim == 1:
        c = c[:, None]
    known = np.asarray(known, dtype=bool)
    if known.shape != (c.shape[0],):
        raise ValueError(f"known must have shape ({c.shape[0]},), got {known.shape}")
    if mode not in ("zero", "stratum"):
        raise ValueError(f"mode must be 'zero' or 'stratum', got {mode!r}")
    unknown = ~known
    if not unknown.any():
        return c
    if mode == "zero" or not known.any():
        c[unknown] = 0.0
        return c
    overall = c[known].mean(axis=0)
    if labels is None:
        c[unknown] = overall
        return c
    lab = np.asarray(labels, dtype=np.int64)
    if lab.shape != known.shape:
        raise ValueError("labels must label every client")
    for h in np.unique(lab[unknown]):
        rows = lab == h
        seen = rows & known
        c[rows & unknown] = c[seen].mean(axis=0) if seen.any() else overall
    return c


class StaleControlModel:
    r"""What the rounds before teach about stale controls, per age bucket.

    A stored update :math:`x_i` of age :math:`a = r - t_i` predicts the new update less well
    the older it is (the model moved on). Per bucket ``k = min(floor(log2 a), n_buckets - 1)``
    this keeps, from the clients DRAWN in earlier rounds (their new update and their stored
    one are both known to the server then):

    - the size-weighted least-squares coefficient
      :math:`b_k = \sum p_i \langle \Delta_i, x_i\rangle / \sum p_i \|x_i\|^2` (clipped to
      [0, 1]; the pooled coefficient for a bucket without data, 1 before any): the control of
      a client with a stored update is :math:`c_i = b_{k(a_i)} x_i` (:meth:`coefficients`);
    - the residual-to-control norm ratio :math:`\rho_k^2 = \sum \|e_i\|^2 / \sum \|x_i\|^2`
      and the mean squared residual of clients drawn without a stored update, which predict
      each client's residual norm :math:`\hat s_i` (:meth:`residual_scale`), the size measure
      of the residual pps design (:class:`ResidualPPSSampler`).

    Everything is learnt from rounds before the draw, so controls and design stay fixed
    before the draw and the difference estimator stays unbiased.
    """

    def __init__(self, n_buckets: int = 6, min_count: int = 3) -> None:
        self.n_buckets = int(n_buckets)
        self.min_count = int(min_count)
        self.num = np.zeros(self.n_buckets)  # sum p <Delta, x>
        self.den = np.zeros(self.n_buckets)  # sum p ||x||^2
        self.res = np.zeros(self.n_buckets)  # sum ||e||^2 (clients with a stored update)
        self.xsq = np.zeros(self.n_buckets)  # sum ||x||^2 (the same clients)
        self.cnt = np.zeros(self.n_buckets)
        self.new_res, self.new_cnt = 0.0, 0  # clients drawn without a stored update

    def buckets(self, ages: np.ndarray) -> np.ndarray:
        a = np.maximum(np.asarray(ages, dtype=np.float64), 1.0)
        return np.minimum(np.floor(np.log2(a)).astype(np.int64), self.n_buckets - 1)

    def coefficients(self, ages: np.ndarray) -> np.ndarray:
        """``b`` of each age (ages >= 1)."""
        pooled = self.num.sum() / self.den.sum() if self.den.sum() > 0 else 1.0
        b = np.where(self.den > 0, self.num / np.maximum(self.den, 1e-300), pooled)
        return np.clip(b, 0.0, 1.0)[self.buckets(ages)]

    def observe(
        self,
        ages: np.ndarray,
        updates: np.ndarray,
        stored: np.ndarray,
        residuals: np.ndarray,
        weights: np.ndarray,
    ) -> None:
        """Learn from the drawn clients: ``ages`` (0 = no stored update), their new updates,
        stored (unscaled) updates, residuals ``Delta_i - c_i`` and size weights ``p_i``."""
        ages = np.asarray(ages, dtype=np.int64)
        u, x, e = (np.asarray(a, dtype=np.float64) for a in (updates, stored, residuals))
        w = np.asarray(weights, dtype=np.float64)
        has = ages > 0
        e2 = (e * e).sum(axis=1)
        if (~has).any():
            self.new_res += float(e2[~has].sum())
            self.new_cnt += int((~has).sum())
        if has.any():
            k = self.buckets(ages[has])
            x2 = (x[has] * x[has]).sum(axis=1)
            np.add.at(self.num, k, w[has] * (u[has] * x[has]).sum(axis=1))
            np.add.at(self.den, k, w[has] * x2)
            np.add.at(self.res, k, e2[has])
            np.add.at(self.xsq, k, x2)
            np.add.at(self.cnt, k, 1.0)

    @property
    def learnt(self) -> bool:
        """Enough drawn clients to predict residual norms."""
        return self.cnt.sum() + self.new_cnt > 5

    def residual_scale(self, ages: np.ndarray, stored_norms: np.ndarray) -> np.ndarray:
        r"""Predicted residual norm :math:`\hat s_i`: :math:`\rho_k \|x_i\|` with a stored
        update (the pooled ratio for a bucket with fewer than ``min_count`` clients), the
        root mean squared residual of clients drawn without one otherwise; all ones before
        :attr:`learnt`."""
        ages = np.asarray(ages, dtype=np.int64)
        if not self.learnt:
            return np.ones(len(ages))
        pooled = math.sqrt(self.res.sum() / self.xsq.sum()) if self.xsq.sum() > 0 else 1.0
        rho = np.where((self.cnt >= self.min_count) & (self.xsq > 0),
                       np.sqrt(self.res / np.maximum(self.xsq, 1e-300)), pooled)
        total = self.new_res + self.res.sum()
        n_all = self.new_cnt + self.cnt.sum()
        s_new = math.sqrt((self.new_res / self.new_cnt) if self.new_cnt >= self.min_count
                          else total / n_all)
        s = np.where(ages > 0, rho[self.buckets(ages)] * np.asarray(stored_norms), s_new)
        return np.maximum(s, 1e-12)

    def state_dict(self) -> dict[str, Any]:
        return {"num": self.num.tolist(), "den": self.den.tolist(), "res": self.res.tolist(),
                "xsq": self.xsq.tolist(), "cnt": self.cnt.tolist(),
                "new_res": self.new_res, "new_cnt": self.new_cnt}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k in ("num", "den", "res", "xsq", "cnt"):
            if k in state:
                setattr(self, k, np.asarray(state[k], dtype=np.float64))
        self.new_res = float(state.get("new_res", 0.0))
        self.new_cnt = int(state.get("new_cnt", 0))


def _pps_terms(
    resid: np.ndarray, p: np.ndarray, labels: np.ndarray, z: np.ndarray
) -> np.ndarray:
    """Per stratum ``a_h^2 = sum_i zq_i ||y_i / zq_i - t_h||^2`` (``y_i = p_i e_i``,
    ``zq_i = z_i / Z_h``, ``t_h = sum_h y_i``): one with-replacement draw's variance."""
    h_count = int(labels.max()) + 1
    out = np.zeros(h_count)
    y = p[:, None] * resid
    for h in range(h_count):
        mem = np.flatnonzero(labels == h)
        zq = z[mem] / z[mem].sum()
        t = y[mem].sum(axis=0)
        out[h] = float(zq @ ((y[mem] / zq[:, None] - t) ** 2).sum(axis=1))
    return out


def _strata_of(strata: Strata | np.ndarray | list, n: int) -> Strata:
    """``strata`` as :class:`Strata` labelling all ``n`` clients (else ValueError)."""
    st = strata if isinstance(strata, Strata) else Strata(strata)
    if st.n_clients != n:
        raise ValueError(f"strata label {st.n_clients} clients, sizes has {n}")
    return st


def _size_measure(size_measure: np.ndarray | list, n: int) -> np.ndarray:
    """The positive size measure of all ``n`` clients (else ValueError)."""
    z = as_sizes(size_measure, "size_measure")
    if len(z) != n:
        raise ValueError(f"size_measure has {len(z)} values, sizes has {n}")
    return z


def residual_pps_allocation(
    residuals: np.ndarray,
    sizes: np.ndarray | list,
    strata: Strata | np.ndarray | list,
    size_measure: np.ndarray | list,
    m: int,
) -> np.ndarray:
    """Neyman allocation of the residual pps design: ``m_h ∝ a_h`` (``a_h^2`` the one-draw
    variance of stratum h's residual total under pps by ``size_measure``), ``1 <= m_h <= N_h``."""
    sz = as_sizes(sizes)
    st = _strata_of(strata, len(sz))
    z = _size_measure(size_measure, len(sz))
    a2 = _pps_terms(as_updates(residuals, len(sz)), sz / sz.sum(), st.labels, z)
    return np.asarray(neyman_allocation(np.ones(st.n_strata), np.sqrt(a2), m,
                                        capacity=st.sizes), dtype=np.int64)


def residual_pps_variance(
    residuals: np.ndarray,
    sizes: np.ndarray | list,
    strata: Strata | np.ndarray | list,
    allocation: np.ndarray | list,
    size_measure: np.ndarray | list,
) -> float:
    """Hansen-Hurwitz approximation of the difference estimator's variance under
    :class:`ResidualPPSSampler`: ``sum_h a_h'^2 / m_h'`` over the non-certainty units
    (certainties contribute 0), as :func:`~fedstrat.sampling.estimator_variance` for pps."""
    sz = as_sizes(sizes)
    p = sz / sz.sum()
    st = _strata_of(strata, len(sz))
    z = _size_measure(size_measure, len(sz))
    e = as_updates(residuals, len(sz))
    alloc = check_allocation(st, allocation)
    total = 0.0
    for h in range(st.n_strata):
        mem = st.members(h)
        pi = pps_inclusion(z[mem], int(alloc[h]))
        rest = mem[pi < 1.0]
        m_rest = int(alloc[h]) - int(np.sum(pi >= 1.0))
        if len(rest) and m_rest > 0:
            one = np.zeros(len(rest), dtype=np.int64)
            total += float(_pps_terms(e[rest], p[rest], one, z[rest])[0]) / m_rest
    return total


def residual_pps_stds(
    scaled_stds: np.ndarray | list,
    size_measure: np.ndarray | list,
    sizes: np.ndarray | list,
    labels: np.ndarray | list,
) -> np.ndarray:
    r"""The residual pps design's dispersion per stratum on the p-pps scale.

    With the draw πps by :math:`z_i = p_i s_i` inside stratum h, write :math:`v_i = e_i / s_i`
    and let :math:`\sigma'_h` be their z-weighted within-stratum std (``scaled_stds``, e.g.
    a tracker fed :math:`v_i` with weight :math:`w_i s_i`). Then :math:`p_i e_i / z^q_i =
    Z_h v_i` (:math:`z^q_i = z_i / Z_h`), so one draw's Hansen-Hurwitz variance is
    :math:`a_h^2 = Z_h^2 \sigma'^2_h`. Returned: :math:`\sigma_h = Z_h \sigma'_h / P_h`,
    so that :math:`P_h^2 \sigma_h^2 / m_h = a_h^2 / m_h` (the pps terms of
    :func:`~fedstrat.sampling.predicted_variance`) and the pps Neyman allocation
    :math:`m_h \propto P_h \sigma_h = a_h` are those of the residual pps design.
    """
    sz = as_sizes(sizes)
    p = sz / sz.sum()
    z = as_sizes(size_measure, "size_measure")
    lab = np.asarray(labels, dtype=np.int64)
    h_count = len(np.asarray(scaled_stds))
    z_h = np.bincount(lab, weights=z, minlength=h_count)
    p_h = np.bincount(lab, weights=p, minlength=h_count)
    return np.asarray(scaled_stds, dtype=np.float64) * z_h / p_h


class ResidualPPSSampler:
    """Stratified πps with a size measure ``z_i`` other than the client sizes (e.g.
    ``p_i * s_i`` with ``s_i`` a predicted residual norm, :meth:`StaleControlModel.
    residual_scale`): ``pi_i`` from ``z`` within each stratum (as
    :class:`~fedstrat.sampling.StratifiedSampler` pps), HT weights ``w_i = p_i / pi_i``, so
    ``sum_s w_i y_i`` is unbiased for ``sum_i p_i y_i`` and the difference estimator with
    this design is unbiased."""

    def __init__(
        self,
        sizes: np.ndarray | list,
        strata: Strata | np.ndarray | list,
        allocation: np.ndarray | list,
        size_measure: np.ndarray | list,
        seed: int = 0,
    ) -> None:
        sz = as_sizes(sizes)
        z = as_sizes(size_measure, "size_measure")
        if z.shape != sz.shape:
            raise ValueError("size_measure must have one value per client")
        self.sizes, self.p = sz, sz / sz.sum()
        self.inner = StratifiedSampler(z, strata, allocation, "pps", seed=seed)
        self.n_clients, self.m = self.inner.n_clients, self.inner.m
        self.inclusion = self.inner.inclusion

    def sample(self, rng: np.random.Generator | None = None) -> Selection:
        sel = self.inner.sample(rng)
        return Selection(ids=sel.ids, inclusion=sel.inclusion,
                         weights=self.p[sel.ids] / sel.inclusion, strata=sel.strata,
                         allocation=sel.allocation)
