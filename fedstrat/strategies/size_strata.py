r"""Strata by client size: the stratified policy's second candidate design.

The full-participation target :math:`T = \sum_i p_i \Delta_i` weighs clients by size, and
updates often change with size (more local steps, larger norms). Clustered Sampling's Alg. 1
(Fraboni et al., ICML 2021) exploits this alone: clients sorted by size, cut into ``m`` bins of
equal mass, one drawn per bin ∝ size. :class:`SizeStrata` is that design as strata the policy
can track and predict: nodes sorted by :math:`n_i` are cut into ``H`` bins of about equal mass
:math:`1/H` (ties stay together; the cut points ``thresholds_`` are sizes, so a node that joins
later goes to the bin of its size), drawn πps by size inside each bin (HT weights
:math:`p_i / \pi_i`) with the policy's allocation. Its own
:class:`~fedstrat.sampling.StratumVarianceTracker` follows the update sketches per bin, so its
predicted MSE (:math:`\sum_h P_h^2 \sigma_h^2 / m_h` plus nothing between bins) is evidence
of the same kind as the label strata's, and the policy keeps whichever predicts the lower MSE
(and only while that beats FedAvg, see :mod:`~fedstrat.strategies.stratified_policy`).

The saving's lower bound comes from every drawn client at once, not bin by bin: a
:class:`~fedstrat.sampling.SizeTrend` fits how the dispersion :math:`\|\Delta_i - \hat T\|^2`
of the drawn clients' sketches about their round's weighted mean grows with size (one slope,
a level per round), and the bound is FedAvg's predicted MSE times the trend's scale-free lower
bound :math:`R` on the relative saving (``VariancePrediction.gain_bound``). The bins of the few
large clients, which FedAvg's uniform draws rarely reach, no longer hold the bound down; before
the trend has enough observations the per-bin bound applies. With both, each is taken at 95%
and the larger is used (Bonferroni: a 90% bound): the per-bin bound sees what the trend does
not (bins whose means differ, which the bound :math:`R` leaves out).
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from fedstrat.sampling import (
    SizeTrend,
    StratumVarianceTracker,
    point_stratified,
    predicted_variance,
)

from .allocation_rule import allocate, present_strata
from .plan import Feedback, PopulationFrame, StrataPlan

if TYPE_CHECKING:
    from .options import SelectionOptions

#: one-sided 95% normal quantile: the per-bin bound and the trend's bound are each at 95%, so
#: the larger of the two is a 90% lower bound (Bonferroni), like the label strata's
BOUND_Z = 1.6449


def equal_mass_thresholds(sizes: np.ndarray, n_bins: int) -> np.ndarray:
    r"""Ascending cut sizes of ``n_bins`` bins of about equal mass: node i (sorted by size) falls
    in bin :math:`\lfloor H (C_i - p_i / 2) \rfloor` (:math:`C_i` its cumulative mass), and
    each bin after the first starts at its smallest size (equal sizes share a bin)."""
    s = np.sort(np.asarray(sizes, dtype=np.float64))
    p = s / s.sum()
    mid = np.cumsum(p) - p / 2.0
    bins = np.minimum((mid * n_bins).astype(np.int64), n_bins - 1)
    starts = [s[bins == b].min() for b in range(1, n_bins) if (bins == b).any()]
    return np.unique(np.asarray(starts, dtype=np.float64))


class SizeStrata:
    """Equal-mass size bins with their own update tracker (module doc).

    Fitted attributes: ``thresholds_`` (cut sizes; bin of ``n`` = number of cuts ``<= n``),
    ``tracker_`` (over ``len(thresholds_) + 1`` bins)."""

    def __init__(self, options: SelectionOptions) -> None:
        self.options = options
        self.thresholds_: np.ndarray | None = None
        self.tracker_: StratumVarianceTracker | None = None
        self.trend_: SizeTrend | None = None
        #: (node ids, sizes, present bins, strata, bin of each node, P_h, p2_h) of the last plan
        self._cache: tuple[Any, ...] | None = None
        #: rounds ``_cache`` has served since it was made and its distinct sizes
        #: (:meth:`_saving_lower`); reset only where the cache is made (:meth:`_strata`)
        self._reuses = 0
        self._size_classes: tuple[Any, ...] | None = None

    @staticmethod
    def applies(options: SelectionOptions, sizes: np.ndarray) -> bool:
        """Size strata are a candidate in the default configuration only (``size_strata``
        on, design and number of strata chosen automatically, estimator ``ht`` or ``ratio``,
        allocation not ``cost``) and when sizes differ."""
        return (options.size_strata and options.design == "auto" and options.n_strata is None
                and options.estimator != "difference" and options.allocation != "cost"
                and options.stratify_by == "histograms" and bool(np.ptp(sizes) > 0))

    def fit(self, frame: PopulationFrame, sketches: dict[int, Any]) -> SizeStrata:
        """Bins over ``frame``'s sizes (``H = frame.m``), a fresh tracker seeded with the
        known ``sketches`` (node -> sketch) with weights ``p_i``."""
        o = self.options
        self.thresholds_ = equal_mass_thresholds(frame.sizes, max(frame.m, 2))
        self.tracker_ = StratumVarianceTracker(
            len(self.thresholds_) + 1, o.sketch_dim, prior_std=o.prior_std, ema=o.variance_ema)
        self.trend_ = SizeTrend()
        self._cache = None
        p = frame.sizes / frame.sizes.sum()
        bins = self.bins(frame.sizes)
        for i, n in enumerate(frame.nodes):
            if n in sketches:
                self.tracker_.update(int(bins[i]), np.asarray(sketches[n]), float(p[i]))
        return self

    def bins(self, sizes: np.ndarray) -> np.ndarray:
        """Bin of each size (int64)."""
        assert self.thresholds_ is not None
        return np.searchsorted(self.thresholds_, sizes, side="right").astype(np.int64)

    def _strata(self, frame: PopulationFrame, same_nodes: bool) -> tuple[Any, ...]:
        """``(present bins, strata, P_h, sum_{i in h} p_i^2)`` of ``frame``; recomputed unless
        ``same_nodes`` (the nodes are those of the last call) and the sizes are the same array."""
        c = self._cache
        if c is None or not same_nodes or c[1] is not frame.sizes:
            labels = self.bins(frame.sizes)
            present, strata, masses, p2 = present_strata(labels, frame.sizes)
            c = self._cache = (np.asarray(frame.nodes, dtype=np.uint64), frame.sizes, present,
                               strata, labels, masses, p2)
            self._reuses, self._size_classes = 0, None
        else:
            self._reuses += 1
        return c[2], c[3], c[5], c[6]

    def _saving_lower(
        self, frame: PopulationFrame, strata: Any, share_h: np.ndarray
    ) -> float | None:
        """The trend's bound on the saving (:meth:`~fedstrat.sampling.SizeTrend.saving_lower`)
        with share ``P_h / m_h`` per present bin ``share_h``. Once the population's cache has
        served a second round, over its distinct sizes (a size lies in one bin: the same bound,
        ``O(distinct sizes)`` a round instead of ``O(N)``; sorted out once per population)."""
        assert self.trend_ is not None
        sizes = frame.sizes
        if self._reuses == 0:  # a population that may change again: no sort
            share = share_h[strata.labels]
            return self.trend_.saving_lower(sizes / sizes.sum(), sizes, share, frame.m, BOUND_Z)
        if self._size_classes is None:
            values, first, counts = np.unique(sizes, return_index=True, return_counts=True)
            self._size_classes = (values, counts, strata.labels[first], float(sizes.sum()))
        values, counts, labels, total = self._size_classes
        return self.trend_.saving_lower(values / total, values, share_h[labels], frame.m,
                                        BOUND_Z, counts=counts)

    def plan(
        self, frame: PopulationFrame, same_nodes: bool, min_tracked: int, level: float,
        below: float = math.inf,
    ) -> StrataPlan | None:
        """The size-strata pps plan (Neyman or proportional ``m_h``, tracked ``sigma_h``,
        predicted MSE vs FedAvg), once every present bin has :meth:`min_needed` tracked updates
        and can get ``min_per_stratum`` clients; None otherwise, and None when its predicted
        MSE is not below ``below`` (a plan it could not displace: its bands and FedAvg's are
        then not computed)."""
        t, o = self.tracker_, self.options
        if t is None:
            return None
        present, strata, masses0, p2 = self._strata(frame, same_nodes)
        masses = masses0.copy()  # the plan is handed out: keep the cache intact
        lo = max(o.min_per_stratum, 1)
        if len(present) < 2 or len(present) * lo > frame.m:
            return None
        if t.counts()[present].min() < self.min_needed(min_tracked):
            return None
        counts = strata.sizes.astype(np.float64)
        stds = t.stds()[present]
        alloc = allocate(o.allocation, "pps", counts, masses, stds, frame.m, lo)
        if below < math.inf and point_stratified(counts, masses, stds, alloc, "pps") >= below:
            return None
        pred = predicted_variance(counts, masses, stds, alloc, "pps", means=t.means()[present],
                                  m=frame.m, p2=p2, mean_counts=t.effective_counts()[present],
                                  level=level, sized=t.size_weighted(present),
                                  covs=t.scatter(present))
        if self.trend_ is not None:
            r_lo = self._saving_lower(frame, strata, masses / alloc)
            if r_lo is not None:
                pred = replace(pred, gain_bound=max(r_lo * pred.fedavg,
                                                    pred.gain_lower(BOUND_Z)))
        return StrataPlan(strata, present, alloc, stds, "tracked", counts, masses, pred)

    def min_needed(self, min_tracked: int) -> int:
        """Tracked updates each bin needs: ``min_tracked``, or 1 once the trend has the
        evidence for the saving's bound (a bin seen once takes the pooled spread of the
        others for its predicted MSE, ``StratumVarianceTracker.stds``); also what the policy
        asks of them before they displace credible label strata."""
        ready = self.trend_ is not None and self.trend_.slope_band() is not None
        return min(min_tracked, 1) if ready else min_tracked

    def min_count(self, plan: StrataPlan) -> int:
        """Fewest tracked updates in a bin of ``plan``."""
        assert self.tracker_ is not None
        return int(self.tracker_.counts()[plan.present].min())

    def observe(self, feedback: Feedback, decay: float) -> None:
        """Decay the tracker by ``decay``, then feed each weighted responder's sketch to the
        bin of its size in the population of the last :meth:`plan`."""
        if self.tracker_ is None or self._cache is None or feedback.sketches is None:
            return
        nodes, sizes, labels = self._cache[0], self._cache[1], self._cache[4]
        self.tracker_.decay(decay)
        idx = np.searchsorted(nodes, np.asarray(feedback.nodes, dtype=np.uint64))
        rows, found = [], []
        for r, i in enumerate(idx):
            if (feedback.weights[r] > 0 and i < len(nodes)
                    and nodes[i] == feedback.nodes[r]):
                self.tracker_.update(int(labels[i]), feedback.sketches[r], feedback.weights[r],
                                     size=float(sizes[i]) if sizes[i] > 0 else None)
                rows.append(r)
                found.append(i)
        if self.trend_ is not None:
            self.trend_.decay(decay)
            if len(rows) >= 2:
                sk = np.asarray(feedback.sketches, dtype=np.float64)[rows]
                w = np.asarray(feedback.weights, dtype=np.float64)[rows]
                dev = sk - (w @ sk) / w.sum()  # about the round's weighted mean
                self.trend_.add_round(sizes[found], np.einsum("ij,ij->i", dev, dev))

    def state_dict(self) -> dict[str, Any] | None:
        """JSON-serialisable state (None before :meth:`fit`)."""
        if self.thresholds_ is None or self.tracker_ is None:
            return None
        return {"thresholds": self.thresholds_.tolist(), "tracker": self.tracker_.to_json(),
                "trend": None if self.trend_ is None else self.trend_.to_json()}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        """Restore :meth:`state_dict` (None: unfitted)."""
        self.thresholds_, self.tracker_, self.trend_, self._cache = None, None, None, None
        if state is None:
            return
        self.thresholds_ = np.asarray(state["thresholds"], dtype=np.float64)
        self.tracker_ = StratumVarianceTracker.from_state(state["tracker"])
        trend = state.get("trend")  # checkpoints before the trend have none: start afresh
        self.trend_ = SizeTrend() if trend is None else SizeTrend.from_state(trend)
