r"""The difference estimator's evidence for the stratified policy: residual sketches.

With ``estimator="difference"`` the variance that matters is that of the residuals
``Delta_i - c_i``. :class:`ResidualEvidence` keeps a per-stratum tracker of the residual
sketches (``sketch(Delta_i) - sketch(c_i)``: sketches are linear), reset whenever the strata are
refitted, and builds the round's residual :class:`~fedstrat.strategies.plan.StrataPlan` once
every present stratum has ``min_tracked`` of them: ``m_h`` from the residual dispersion and the
difference estimator's predicted MSE against FedAvg's (from the update tracker).

Residual size measure (design ``pps``, with the learnt stale-control model of the attached
:class:`~fedstrat.strategies.control_variates.ControlVariates`): inside strata the draw is πps
by :math:`z_i = p_i \hat s_i`, :math:`\hat s_i` the predicted residual norm. The tracker then
follows the scaled residuals :math:`v_i = (\Delta_i - c_i) / \hat s_i` fed with weight
:math:`w_i \hat s_i / Z_h` (their z-weighted mean and dispersion :math:`\sigma'_h`; dividing by
the round's stratum mass gives every round the expected weight 1 per stratum, so the tracker
forgets by ``ROUND_DECAY`` alone: :math:`Z_h` falls with the residual norms, ~10% a round on
MNIST, and the older, larger-:math:`Z_h` rounds outweighed the recent ones); written as a
p-pps dispersion :math:`\sigma_h = Z_h \sigma'_h / P_h` (:math:`Z_h = \sum_{i \in h} z_i`), the
Neyman allocation :math:`m_h \propto P_h \sigma_h` and the predicted MSE
:math:`\sum_h P_h^2 \sigma_h^2 / m_h` are those of the design drawn. Without the model
(``cv_decay < 1``, before it has learnt, or design ``srswor``) :math:`\hat s_i = 1`: πps by size,
weights :math:`w_i / P_h` (the same per-round normalisation, so rounds before and after the size
measure is learnt weigh alike).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from fedstrat.sampling import (
    Band,
    Strata,
    StratumVarianceTracker,
    VariancePrediction,
    predicted_variance,
    satterthwaite_band,
)
from fedstrat.sampling.baseline import fedavg_factor, uniform_ht_from_strata
from fedstrat.sampling.difference import residual_pps_stds

from .allocation_rule import allocate, stratum_costs, stratum_means
from .plan import DesignDecision, Feedback, PopulationFrame, StrataPlan

if TYPE_CHECKING:
    from .control_variates import ControlVariates
    from .options import SelectionOptions
    from .stratifier import Stratifier


class ResidualEvidence:
    """Residual tracker, residual size measure and residual strata plan (module doc)."""

    def __init__(self, options: SelectionOptions) -> None:
        self.options = options
        #: per-stratum tracker of residual sketches (reset on a refit of the strata)
        self.tracker: StratumVarianceTracker | None = None
        self._of: Any = None  # the update tracker ``tracker`` belongs to
        #: the difference estimator's control memory (:meth:`attach`), or None
        self.controls: ControlVariates | None = None
        #: predicted residual norm of each node of the last plan (empty: ``s_i = 1``)
        self.scale: dict[int, float] = {}
        self._z: np.ndarray | None = None
        self._frame: PopulationFrame | None = None

    def attach(self, memory: ControlVariates) -> None:
        """Use ``memory``'s predicted residual norms as the pps size measure."""
        self.controls = memory

    def start_round(self, frame: PopulationFrame, design: str | None) -> None:
        """``{node: s_i}`` predicted residual norms of the population for the pps design with
        the difference estimator and an attached memory (else empty: ``s_i = 1``)."""
        self._z = None
        self.scale = {}
        self._frame = frame
        if self.controls is None or self.options.estimator != "difference" or design != "pps":
            return
        s = self.controls.residual_scales(frame.round, frame.nodes)
        if not np.all(s == 1.0):
            self.scale = {int(n): float(v) for n, v in zip(frame.nodes, s, strict=True)}

    def size_measure(self, frame: PopulationFrame) -> np.ndarray:
        """``z_i = p_i s_i`` over ``frame.nodes``, made once per round."""
        if self._z is None:
            p = frame.sizes / frame.sizes.sum()
            self._z = p * np.array([self.scale.get(int(n), 1.0) for n in frame.nodes])
        return self._z

    def tracker_for(self, base: StratumVarianceTracker | None) -> StratumVarianceTracker | None:
        """The residual tracker of the strata of the update tracker ``base`` (a new one after
        a refit; None without strata)."""
        if base is None:
            return None
        if self._of is not base:
            self._of = base
            self.tracker = StratumVarianceTracker(
                base.n_strata, base.dim, prior_std=base.prior_std, ema=base.ema,
                covariance=False)
        return self.tracker

    def scaled(
        self,
        feedback: Feedback,
        where: dict[int, int] | None = None,
        labels: np.ndarray | None = None,
    ) -> Feedback:
        """``feedback`` with the residual sketches ``v_i = e_i / s_i`` and weights
        ``w_i s_i / Z_h`` (``Z_h = sum_{j in h} z_j`` over this round's frame, ``h`` the node's
        stratum in ``where``; ``s_i = 1``, ``Z_h = P_h`` without a residual size measure):
        ``E[sum_{s in h} w_i s_i / Z_h] = 1`` every round (module doc). ``labels``: the stratum
        of every frame node when all have one (the policy's cached labels; else looked up in
        ``where``). Without ``where`` or a round started, the weights are not normalised."""
        if feedback.sketches is None:
            return feedback
        s = np.array([self.scale.get(int(n), 1.0) for n in feedback.nodes])
        w = np.asarray(feedback.weights, np.float64) * s
        frame = self._frame
        if where and frame is not None:
            h = np.array([where.get(int(n), -1) for n in feedback.nodes])
            lab = labels if labels is not None else np.array(
                [where.get(int(n), -1) for n in frame.nodes])
            z, inside = self.size_measure(frame), lab >= 0
            mass = np.bincount(lab[inside], weights=z[inside],
                               minlength=int(max(h.max(), lab.max(), 0)) + 1)
            zh = np.where(h >= 0, mass[np.maximum(h, 0)], 0.0)
            w = np.where(zh > 0, w / np.where(zh > 0, zh, 1.0), w)
        elif not self.scale:
            return feedback
        return Feedback(list(feedback.nodes),
                        np.asarray(feedback.sketches, np.float64) / s[:, None], w)

    def plan(
        self,
        frame: PopulationFrame,
        design: str,
        strata: Strata,
        present: np.ndarray,
        masses: np.ndarray,
        p2: np.ndarray,
        stratifier: Stratifier,
        min_tracked: int,
        level: float,
    ) -> StrataPlan | None:
        """``m_h`` from the residual dispersion and the predicted MSE of the difference
        estimator (residual stats) against FedAvg's (update stats), once every present stratum
        has ``min_tracked`` residual sketches; None otherwise. ``masses``, ``p2``: ``P_h`` and
        ``sum_{i in h} p_i^2`` of ``strata`` (the plan keeps ``masses``)."""
        o, base = self.options, stratifier.tracker_
        rt = self.tracker_for(base)
        if rt is None or base is None or o.estimator != "difference":
            return None
        if rt.counts()[present].min() < min_tracked:
            return None
        counts = strata.sizes.astype(np.float64)
        stds = rt.stds()[present]
        if design == "pps" and self.scale:  # sigma_h = Z_h sigma'_h / P_h (module doc)
            stds = residual_pps_stds(stds, self.size_measure(frame), frame.sizes, strata.labels)
        costs = (stratum_costs(stratifier.node_stratum_, frame.registry, present)
                 if o.allocation == "cost" else None)
        alloc = allocate(o.allocation, design, counts, masses, stds, frame.m,
                         o.min_per_stratum, costs)
        kw = {"m": frame.m, "p2": p2, "level": level}
        res = predicted_variance(counts, masses, stds, alloc, design, means=rt.means()[present],
                                 mean_counts=rt.effective_counts()[present], **kw)
        upd = predicted_variance(counts, masses, base.stds()[present], alloc, design,
                                 means=stratum_means(stratifier, present, masses, "tracked"),
                                 mean_counts=base.effective_counts()[present], **kw)
        gain_se = float(np.hypot(band_se(res.stratified_band), band_se(upd.fedavg_band)))
        pred = VariancePrediction(res.stratified, upd.uniform, upd.fedavg,
                                  res.stratified_band, upd.fedavg_band, gain_se)
        return StrataPlan(strata, present, alloc, stds, "residuals", counts, masses, pred)

    def uniform_prediction(
        self,
        frame: PopulationFrame,
        labels: np.ndarray | None,
        base: StratumVarianceTracker | None,
        min_tracked: int,
        level: float,
    ) -> Band | None:
        """Predicted MSE of the difference estimator on this round's uniform draw with HT
        weights ``N p_i / m`` (a FedAvg round): :func:`~fedstrat.sampling.baseline.
        uniform_ht_from_strata` of ``y_i = p_i e_i = z_i v_i`` with the tracked z-weighted mean
        and std of ``v`` per stratum and the round's ``Z_h``, ``sum z_i^2``; band from each
        stratum's effective count. None without ``min_tracked`` residual sketches in every
        stratum of the frame's nodes (or a node without a stratum)."""
        rt = self.tracker_for(base)
        if rt is None or self.options.estimator != "difference":
            return None
        if labels is None or len(labels) == 0:
            return None
        lab = np.asarray(labels, dtype=np.int64)
        present, local = np.unique(lab, return_inverse=True)
        if rt.counts()[present].min() < min_tracked:
            return None
        z = self.size_measure(frame)
        masses = np.bincount(local, weights=z, minlength=len(present))
        q2 = np.bincount(local, weights=z * z, minlength=len(present))
        stds, means = rt.stds()[present], rt.means()[present]
        n, m = len(frame.nodes), int(frame.m)
        value = uniform_ht_from_strata(n, m, masses, q2, stds, means)
        terms = fedavg_factor(n, m) * q2 * (stds**2 + np.sum(means * means, axis=1))
        band = satterthwaite_band(terms, np.maximum(rt.effective_counts()[present] - 1.0, 1.0),
                                  level)
        if band.value <= 0:
            return Band(value, value, value, band.df)
        k = value / band.value
        return Band(value, band.lo * k, band.hi * k, band.df)

    def state_dict(self, base: StratumVarianceTracker | None) -> dict[str, Any] | None:
        """The residual tracker's state when it belongs to ``base`` (else None)."""
        if self.tracker is None or self._of is not base:
            return None
        return self.tracker.to_json()

    def load_state_dict(self, state: dict[str, Any] | None,
                        base: StratumVarianceTracker | None) -> None:
        """Restore :meth:`state_dict` for the strata of ``base`` (None: start afresh)."""
        self.tracker, self._of, self.scale, self._z = None, None, {}, None
        self._frame = None
        rt = self.tracker_for(base) if state is not None else None
        if rt is not None:
            rt.load_state_dict(state)


def band_se(band: Band | None) -> float:
    """Standard error of a band's value (a Satterthwaite chi-square: ``value sqrt(2 / df)``)."""
    if band is None or not np.isfinite(band.df) or band.df <= 0:
        return 0.0
    return float(band.value * np.sqrt(2.0 / band.df))


def difference_beats_fedavg(decision: DesignDecision) -> tuple[bool, str]:
    """In a FedAvg round with ``estimator="difference"``: aggregate with the difference
    estimator (uniform draw, HT weights) only while the upper end of its predicted MSE's band
    (a 90% upper bound) is below FedAvg's predicted MSE; otherwise, and before the residual
    tracker has evidence, as FedAvg (ratio estimator). The control-variate memory and the
    residual tracker are fed either way. Returns (keep, why)."""
    uni, fed = decision.predicted_uniform_difference, decision.predicted_fedavg
    if uni is None or fed is None:
        return False, "aggregated as FedAvg: no tracked evidence for the difference estimator"
    if uni.hi < fed.value:
        return True, (f"difference estimator kept: predicted MSE {uni.value:.3g} [{uni.lo:.3g},"
                      f" {uni.hi:.3g}] below FedAvg's {fed.value:.3g}")
    return False, (f"aggregated as FedAvg: difference estimator's predicted MSE {uni.value:.3g}"
                   f" [{uni.lo:.3g}, {uni.hi:.3g}] not below FedAvg's {fed.value:.3g}")
