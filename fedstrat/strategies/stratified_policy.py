r"""The stratified selection policy: strata, design, allocation, draw; tracks ``S_h``.

Per round: (re)stratify when due (:meth:`StratifiedPolicy.refresh`), then decide, on the best
evidence available, between the stratified design (``pps`` / ``srswor`` with the allocation rule
of ``options.allocation``) and FedAvg (uniform SRSWOR with self-normalised weights, design
``"fedavg"``; also when too many strata are present for ``m``, and before strata exist:
``uniform-warmup``). Accepted replies feed the per-stratum tracker (:meth:`observe`).

The decision (:meth:`StratifiedPolicy.decide`): before every present stratum has
:data:`MIN_TRACKED` tracked updates, the stratifier's fit-time choice on its features (label
histograms: chi-square homogeneity test, then :func:`~fedstrat.sampling.choose_design` against
FedAvg; strata from warm-up update sketches, e.g. without a profile: FedAvg until tracked
evidence). After, only tracked evidence counts: the stratified design is kept while the 90%
lower confidence bound of its predicted saving over FedAvg (``fedavg - stratified`` minus
:data:`GAIN_Z` standard errors, :meth:`~fedstrat.sampling.VariancePrediction.gain_lower`) is
above 0, and after a fall back it returns only when that bound exceeds :data:`RETURN_MARGIN`
times FedAvg's predicted MSE (hysteresis).

With ``estimator="difference"`` the variance that matters is that of the residuals
``Delta_i - c_i``: a second tracker follows the residual sketches
(``sketch(Delta_i) - sketch(c_i)``, sketches are linear; :meth:`StratifiedPolicy.
observe_residuals`). Once every present stratum has :data:`MIN_TRACKED` of them, the Neyman
allocation uses the residual dispersion and the stratified candidate's predicted MSE is the
difference estimator's (the design variance of the residuals; ``basis="residuals"``), so the
decision compares the estimator actually used with FedAvg (predicted from the update sketches).

Residual sketches, the residual size measure and the residual plan:
:mod:`fedstrat.strategies.residual_evidence`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import replace
from logging import INFO, WARNING
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from fedstrat.sampling import (
    Sampler,
    StratifiedSampler,
    StratumVarianceTracker,
    UniformSampler,
    UpdateScale,
    predicted_variance,
)
from fedstrat.sampling.difference import ResidualPPSSampler
from fedstrat.sampling.fedavg_sized import tracked_fedavg_band

from .allocation_rule import present_strata, round_allocation, stratum_means
from .balanced_draw import BalancedDraw, fedavg_selection
from .node_registry import NodeRegistry
from .plan import DesignDecision, Draw, Feedback, PopulationFrame, SamplerSpec, StrataPlan
from .residual_evidence import ResidualEvidence, difference_beats_fedavg
from .size_strata import SizeStrata
from .stratifier import Stratifier, feature_nodes

if TYPE_CHECKING:
    from .control_variates import ControlVariates
    from .options import SelectionOptions

log = logging.getLogger("flwr").log

STRATIFIED_DESIGNS = ("pps", "srswor")
#: tracked updates every present stratum needs before tracked evidence decides
MIN_TRACKED = 3
#: hysteresis: after a fall back, stratify again only when the saving's lower bound is at
#: least this fraction of FedAvg's predicted MSE (staying needs a lower bound above 0)
RETURN_MARGIN = 0.1
#: one-sided normal quantile of the saving's lower bound (90%)
GAIN_Z = 1.2816
#: per-round forgetting of the trackers, which hold past updates rescaled to the round they
#: predict (UpdateScale), so the past is older, not larger: updates also turn as training
#: goes on (Kish's effective count with one update per stratum a round (1 + d) / (1 - d): 19)
ROUND_DECAY = 0.9
#: two-sided level of the recorded predicted-MSE bands
BAND_LEVEL = 0.8


class StratifiedPolicy:
    """Stratified selection (see module doc); ``stratifier`` holds the fitted strata."""

    name: ClassVar[str] = "stratified"

    def __init__(self, options: SelectionOptions) -> None:
        self.options = options
        self.stratifier = Stratifier(options)
        self.fallback = False  # profiling gave no histogram -> stratify by sketches
        #: "stratified" or "fedavg": the current decision (see :meth:`decide`)
        self.mode = "fedavg"
        self._mode_of: Any = None  # the tracker the mode was decided with (a refit resets)
        #: the strata plan of the candidate design at the last :meth:`plan` (also in FedAvg
        #: rounds; None without strata)
        self.last_plan: StrataPlan | None = None
        #: the last population's identity: ``frame.key`` when given, else the node tuple
        self._last_nodes: object = None
        self._labels_cache: tuple[Any, np.ndarray | None] | None = None
        self._frame_nodes: Any = None
        self._strata_cache: Any = None
        #: estimator="difference": residual tracker, size measure, residual plan
        self.residual = ResidualEvidence(options)
        #: the second candidate: equal-mass size bins with their own tracker
        self.size_strata = SizeStrata(options)
        self._size_of: Any = None  # the label tracker the size strata were fitted with
        #: the candidate ("strata" | "size") that lost to FedAvg (return needs the margin)
        self.lost: str | None = None
        #: the sampler of the last draw (its design: strata, allocation, size measure)
        self.last_sampler: Sampler | None = None
        self._sampler_cache: tuple[Any, ...] | None = None
        #: FedAvg rounds' balanced uniform draw (``options.balanced_fedavg``)
        self.balanced = BalancedDraw()
        self._registry: NodeRegistry | None = None  # sizes of responders (sized tracking)
        #: the updates' and the residuals' scale from round to round (the trackers' units)
        self.scale, self.residual_scale = UpdateScale(), UpdateScale()

    def attach_controls(self, memory: ControlVariates) -> None:
        """Use ``memory``'s predicted residual norms as the pps size measure (module doc)."""
        self.residual.attach(memory)

    @staticmethod
    def sampler(spec: SamplerSpec) -> Sampler:
        """Stratified sampler of ``spec.design`` with ``spec.allocation`` (uniform SRSWOR when
        ``spec.strata`` is None)."""
        if spec.strata is None or spec.allocation is None:
            return UniformSampler(spec.sizes, spec.m, seed=spec.seed)
        return StratifiedSampler(
            spec.sizes, spec.strata, spec.allocation, spec.design, seed=spec.seed
        )

    def _stratified_sampler(self, frame: PopulationFrame, sp: StrataPlan, design: str) -> Sampler:
        """The stratified sampler of ``sp``, reused while its strata, the sizes (same objects),
        the design and the allocation are those of the last round (its inclusion
        probabilities are an O(N) computation; sampling takes the round's generator)."""
        key = (sp.strata, frame.sizes, design, sp.allocation.tobytes())
        c = self._sampler_cache
        if c is None or c[0] is not key[0] or c[1] is not key[1] or c[2:4] != key[2:]:
            spec = SamplerSpec(frame.sizes, frame.m, strata=sp.strata, allocation=sp.allocation,
                               design=design)
            c = self._sampler_cache = (*key, self.sampler(spec))
        return c[4]

    @property
    def design(self) -> str:
        """The fitted design, or ``"uniform-warmup"`` before strata exist."""
        d = self.stratifier.design_
        return "uniform-warmup" if d is None else d

    # ------------------------------------------------------------------ plan
    def plan(self, frame: PopulationFrame, rng: np.random.Generator) -> Draw:
        """Refresh the strata, decide stratified vs FedAvg, draw ``frame.m`` nodes."""
        nodes_key = ("key", frame.key) if frame.key is not None else tuple(frame.nodes)
        same_nodes = nodes_key == self._last_nodes
        self._last_nodes = nodes_key
        self._frame_nodes = frame.nodes
        self.refresh(frame.round, frame.nodes, frame.registry, same_nodes)
        self._registry = frame.registry
        st = self.stratifier
        cand = st.candidate_design_ if st.fitted else None
        strata_plan = None
        self.residual.start_round(frame, cand)
        if cand in STRATIFIED_DESIGNS:
            strata_plan = self._strata_plan(frame, cand)
        size_plan = self._size_plan(frame, same_nodes, self._size_bar(strata_plan))
        n_min = None
        if size_plan is not None and self._size_wins(size_plan, strata_plan):
            strata_plan, cand, n_min = size_plan, "pps", self.size_strata.min_count(size_plan)
        self.last_plan = strata_plan
        decision = self.decide(strata_plan, cand, n_min)
        if strata_plan is None and st.fitted:
            band = tracked_fedavg_band(st.tracker_, self._labels(frame.nodes), frame.sizes,
                                       frame.m, MIN_TRACKED, BAND_LEVEL)
            if band is not None:
                decision = DesignDecision("fedavg", "tracked", cand, None, band,
                                          decision.reason)
        if decision.mode == "fedavg" and self.options.estimator == "difference":
            decision = replace(decision, predicted_uniform_difference=self.residual.
                               uniform_prediction(frame, self._labels(frame.nodes),
                                                  st.tracker_, MIN_TRACKED, BAND_LEVEL))
        if decision.mode == "stratified" and strata_plan is not None and cand is not None:
            self.last_sampler = (
                ResidualPPSSampler(frame.sizes, strata_plan.strata, strata_plan.allocation,
                                   self.residual.size_measure(frame))
                if strata_plan.basis == "residuals" and cand == "pps"
                else self._stratified_sampler(frame, strata_plan, cand)
            )
            selection = self.last_sampler.sample(rng)
            return Draw(cand, selection, True, reason=decision.reason, strata=strata_plan,
                        decision=decision)
        balanced = st.fitted and self.options.balanced_fedavg
        self.last_sampler = (self.balanced.sampler(frame) if balanced
                             else self.sampler(SamplerSpec(frame.sizes, frame.m)))
        selection = self.last_sampler.sample(rng)
        design = "uniform-warmup" if not st.fitted else "fedavg"
        if balanced:
            decision = replace(decision, reason=f"{decision.reason}; drawn balanced: one of "
                               f"{frame.m} blocks of similar nodes ({self.balanced.basis_}; the "
                               "predicted MSE is the uniform draw's, an upper bound)")
        if self.options.estimator == "difference":
            keep, why = difference_beats_fedavg(decision)
            decision = replace(decision, reason=f"{decision.reason}; {why}")
            if keep:  # keeps its unbiased HT weights
                return Draw(design, selection, True, reason=decision.reason, decision=decision)
        p = frame.sizes / frame.sizes.sum()
        return Draw(design, fedavg_selection(selection, p), True, reason=decision.reason,
                    estimator="ratio", decision=decision)

    def decide(
        self, sp: StrataPlan | None, candidate: str | None, n_min: int | None = None
    ) -> DesignDecision:
        """Stratified or FedAvg this round, and why (module doc); updates :attr:`mode`.
        ``n_min``: the fewest tracked updates in a stratum of ``sp`` (given for size strata;
        else from the label strata's tracker)."""
        size = n_min is not None
        st = self.stratifier
        if st.tracker_ is not self._mode_of:  # (re)fitted: start from the fit-time choice
            self._mode_of = st.tracker_
            self.mode = "stratified" if st.design_ in STRATIFIED_DESIGNS else "fedavg"
            self.lost = None if self.mode == "stratified" else "strata"
        if sp is None:
            why = (
                "no strata yet" if not st.fitted
                else st.design_reason_ if candidate is None
                else "too many strata present for m this round"
            )
            return DesignDecision("fedavg", "none", candidate, None, None, f"FedAvg: {why}")
        pred = sp.prediction
        s_band, f_band = pred.stratified_band, pred.fedavg_band
        if n_min is None:
            n_min = self._tracked_min(sp)
        tracked = sp.basis in ("tracked", "residuals")
        need = self.size_strata.min_needed(MIN_TRACKED) if size else MIN_TRACKED
        if not tracked or n_min < need or s_band is None or f_band is None:
            count = f"{n_min} tracked updates in a stratum, {need} needed"
            fit = f"at round {st.fitted_round_}, on {st.features_kind_}"
            reason = f"{st.design_reason_} ({fit}; {count})"
            if st.features_kind_ == "sketches":  # one warm-up round: no evidence vs FedAvg
                self.mode, self.lost = "fedavg", "strata"  # nor are its fit-time figures
                reason = f"FedAvg until tracked evidence ({count}; strata fitted {fit})"
            return DesignDecision(self.mode, "proxy", candidate, s_band, f_band, reason)
        kind = "size" if size else "strata"
        margin = 0.0 if self.mode == "stratified" or self.lost != kind else RETURN_MARGIN
        low = pred.gain_lower(GAIN_Z)
        new = "stratified" if low > margin * f_band.value else "fedavg"
        verdict = "above" if new == "stratified" else "not above"
        est = (" in equal-mass size strata" + (" (bound: the size trend)" if math.isfinite(
            pred.gain_bound) else "")) if size else "" if sp.basis != "residuals" else (
            " with the difference estimator (residual sketches" + (
                ", pps by predicted residual norm)" if candidate == "pps" and self.residual.scale
                else ")"))
        reason = (
            f"tracked ({n_min}+ updates per stratum): {candidate}{est} predicted MSE "
            f"{s_band.value:.3g} [{s_band.lo:.3g}, {s_band.hi:.3g}] vs FedAvg "
            f"{f_band.value:.3g} [{f_band.lo:.3g}, {f_band.hi:.3g}]; saving's 90% lower bound "
            f"{low:.3g} {verdict} {margin:g} x FedAvg"
        )
        if new != self.mode:
            log(INFO, "stratified policy: switching %s -> %s: %s", self.mode, new, reason)
            self.lost = kind if new == "fedavg" else None
        self.mode = new
        return DesignDecision(new, "tracked", candidate, s_band, f_band, reason)

    def _tracked_min(self, sp: StrataPlan) -> int:
        """Fewest tracked updates in a present label stratum of ``sp``."""
        assert self.stratifier.tracker_ is not None
        return int(self.stratifier.tracker_.counts()[sp.present].min())

    def _tracked(self, sp: StrataPlan) -> bool:
        """Label strata on tracked evidence: ``MIN_TRACKED`` updates in each present one."""
        return sp.basis == "tracked" and self._tracked_min(sp) >= MIN_TRACKED

    def _size_wins(self, size: StrataPlan, strata: StrataPlan | None) -> bool:
        """Size strata are the candidate: without label strata; over label strata with only
        proxy evidence when their own saving over FedAvg is credible (lower bound > 0) and the
        proxy did not choose the label strata (those keep the draw until their own tracker has
        evidence: drawn by size, some label strata would never get it); over tracked label
        strata when their saving's lower bound is the larger and their predicted MSE the lower
        (a tight bound on a smaller saving does not displace a larger one), and, over label
        strata whose saving is credible, only with the tracked updates per bin that size
        strata need to be drawn at all (:meth:`.SizeStrata.min_needed`)."""
        low = size.prediction.gain_lower(GAIN_Z)
        if strata is None:
            return True
        if not self._tracked(strata):
            return low > 0 and self.stratifier.design_ not in STRATIFIED_DESIGNS
        s_low = strata.prediction.gain_lower(GAIN_Z)
        if s_low > 0 and (self.size_strata.min_count(size)
                          < self.size_strata.min_needed(MIN_TRACKED)):
            return False
        return low > s_low and size.prediction.stratified < strata.prediction.stratified

    def _size_bar(self, strata: StrataPlan | None) -> float:
        """The predicted MSE size strata must be below to win :meth:`_size_wins` against
        ``strata``: tracked label strata's own; inf where the bands decide."""
        if strata is None or not self._tracked(strata):
            return math.inf
        return strata.prediction.stratified

    def _size_plan(
        self, frame: PopulationFrame, same_nodes: bool, below: float = math.inf
    ) -> StrataPlan | None:
        """The size-strata candidate (:mod:`~fedstrat.strategies.size_strata`), refitted with
        the label strata; None where it does not apply, lacks tracked evidence or cannot
        predict an MSE below ``below``."""
        st = self.stratifier
        if not st.fitted or not SizeStrata.applies(self.options, frame.sizes):
            return None
        if self._size_of is not st.tracker_:
            self._size_of = st.tracker_
            self.size_strata.fit(frame, frame.registry.sketches)
            same_nodes = False
        return self.size_strata.plan(frame, same_nodes, MIN_TRACKED, BAND_LEVEL, below)

    def _strata_plan(self, frame: PopulationFrame, design: str) -> StrataPlan | None:
        """Strata of the present nodes, ``m_h``, ``sigma_h`` and the predicted variance; None
        (uniform this round) when the present strata cannot each get ``min_per_stratum``."""
        o, m, sizes = self.options, frame.m, frame.sizes
        labels = self._labels(frame.nodes)
        c = self._strata_cache
        if c is None or c[0] is not labels or c[1] is not sizes:
            c = self._strata_cache = (labels, sizes, *present_strata(labels, sizes))
        present, strata, masses0, p2 = c[2], c[3], c[4], c[5]
        if len(present) * max(o.min_per_stratum, 1) > m:
            log(
                WARNING,
                "%d strata present but only %d clients per round: uniform this round",
                len(present),
                m,
            )
            return None
        resid = self.residual.plan(frame, design, strata, present, masses0.copy(), p2,
                                   self.stratifier, MIN_TRACKED, BAND_LEVEL)
        if resid is not None:
            return resid
        alloc, stds, basis = round_allocation(
            o.allocation,
            self.stratifier,
            frame.registry,
            strata,
            masses0.copy(),
            present,
            m,
            design,
            o.min_per_stratum,
        )
        counts = strata.sizes.astype(np.float64)
        masses = masses0.copy()
        means = stratum_means(self.stratifier, present, masses, basis)
        tracker = self.stratifier.tracker_
        nobs = sized = covs = None
        if basis == "tracked" and tracker is not None:
            nobs, sized = tracker.effective_counts()[present], tracker.size_weighted(present)
            covs = tracker.scatter(present)
        prediction = predicted_variance(
            counts, masses, stds, alloc, design, means=means, m=m, p2=p2, mean_counts=nobs,
            level=BAND_LEVEL, sized=sized, covs=covs,
        )
        return StrataPlan(strata, present, alloc, stds, basis, counts, masses, prediction)

    def _labels(self, nodes: list[int]) -> np.ndarray | None:
        """Global stratum labels of ``nodes``, cached while nodes and strata are unchanged."""
        key = (self._last_nodes if nodes is self._frame_nodes else tuple(nodes),
               self.stratifier.version_)
        if self._labels_cache is None or self._labels_cache[0] != key:
            self._labels_cache = (key, self.stratifier.labels(nodes))
        return self._labels_cache[1]

    def refresh(
        self, server_round: int, available: list[int], registry: NodeRegistry, same_nodes: bool
    ) -> None:
        """Build, rebuild or extend the strata.

        Histograms: at the first round. Sketches (or after profiling gave no histogram): after
        ``warmup_rounds`` uniform rounds. ``restratify_every=R`` rebuilds every R rounds.
        Nodes seen later go to the stratum with the nearest centroid, or to the "unknown"
        stratum while they have no features.
        """
        o, st = self.options, self.stratifier
        kind = "sketches" if (o.stratify_by == "sketches" or self.fallback) else "histograms"
        if (
            kind == "histograms"
            and st.features_kind_ != "histograms"
            and not feature_nodes(registry, available, "histograms")
        ):
            if not self.fallback:
                log(
                    WARNING,
                    "Profiling gave no label histogram (ClientApp without profile "
                    "handler?): sampling uniformly for %d warm-up rounds, then stratifying "
                    "by update sketches",
                    o.warmup_rounds,
                )
            self.fallback = True
            kind = "sketches"
        due = (
            st.centroids_ is None
            or (o.restratify_every > 0 and server_round - st.fitted_round_ >= o.restratify_every)
            or kind != st.features_kind_
        )
        if due:
            if kind == "sketches" and server_round <= o.warmup_rounds:
                return
            nodes = feature_nodes(registry, sorted(set(available) | set(st.node_stratum_)), kind)
            n_unknown = len(set(available) - set(nodes))
            if len(nodes) >= 2:
                st.fit(registry, nodes, kind, server_round, n_unknown)
        if st.centroids_ is not None and not (
            same_nodes and not due and st.features_kind_ == "histograms"
        ):
            st.assign(registry, available)

    # ------------------------------------------------------------------ learn
    def observe(self, feedback: Feedback) -> None:
        """Bring the trackers to this round's update scale, decay them by
        :data:`ROUND_DECAY`, feed each responder's sketch, with its aggregation weight, to
        its stratum's tracker, then rescale them to the next round's forecast scale
        (:class:`~fedstrat.sampling.UpdateScale`: no lag as updates shrink)."""
        sized = self._size_of is self.stratifier.tracker_
        trackers = [self.stratifier.tracker_, self.size_strata.tracker_ if sized else None]
        with self.scale.feeding(feedback.sketches, feedback.weights, trackers):
            self._feed(self.stratifier.tracker_, feedback)
            if sized:
                self.size_strata.observe(feedback, ROUND_DECAY)

    def observe_residuals(self, feedback: Feedback) -> None:
        """estimator="difference": decay the residual tracker by :data:`ROUND_DECAY`, then
        feed each responder's residual sketch ``sketch(Delta_i) - sketch(c_i)`` (``c_i`` the
        control it was aggregated with) with its aggregation weight; with a residual size
        measure the scaled residual ``v_i = e_i / s_i`` with weight ``w_i s_i``; both weights
        divided by the round's stratum mass ``Z_h`` (``P_h``), see residual_evidence."""
        labels = None if self._frame_nodes is None else self._labels(self._frame_nodes)
        tracker = self.residual.tracker_for(self.stratifier.tracker_)
        scaled = self.residual.scaled(feedback, self.stratifier.node_stratum_, labels)
        with self.residual_scale.feeding(scaled.sketches, scaled.weights, [tracker]):
            self._feed(tracker, scaled)

    def _feed(self, tracker: StratumVarianceTracker | None, feedback: Feedback) -> None:
        """Decay ``tracker`` by :data:`ROUND_DECAY` and add each weighted responder's sketch
        to its stratum (nothing without sketches or a tracker)."""
        if feedback.sketches is None or tracker is None:
            return
        where, reg = self.stratifier.node_stratum_, self._registry
        cap, known = (0.0, {}) if reg is None else (reg.size_cap(), reg.num_examples)
        tracker.decay(ROUND_DECAY)
        for r, node in enumerate(feedback.nodes):
            if feedback.weights[r] > 0 and node in where:
                size = min(known.get(node, 0.0), cap)  # FedAvg's moments: weight x size
                tracker.update(where[node], feedback.sketches[r], feedback.weights[r],
                               size=size if size > 0 else None)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """The stratifier's state, the fallback flag and the decision mode."""
        mode = self.mode if self._mode_of is not None else None  # None: not decided yet
        out = {**self.stratifier.state_dict(), "fallback": self.fallback, "mode": mode,
               "lost": self.lost, "update_scale": self.scale.to_json(),
               "residual_scale": self.residual_scale.to_json()}
        rt = self.residual.state_dict(self.stratifier.tracker_)
        if rt is not None:
            out["residual_tracker"] = rt
        size = self.size_strata.state_dict() if self._size_of is self.stratifier.tracker_ else None
        if size is not None:
            out["size_strata"] = size
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (empty: start afresh)."""
        self.stratifier = Stratifier(self.options)
        if state:
            self.stratifier.load_state_dict(state)
        self.fallback = bool(state.get("fallback", False))
        self.scale = UpdateScale.from_state(state.get("update_scale") if state else None)
        self.residual_scale = UpdateScale.from_state(state.get("residual_scale") if state
                                                     else None)
        self._mode_of = None
        self.mode = "fedavg"
        if state and state.get("mode") is not None:
            self._mode_of = self.stratifier.tracker_
            self.mode = str(state["mode"])
        old = "strata" if self.mode == "fedavg" else None  # state from before "lost"
        self.lost = state.get("lost", old) if state else None
        self._last_nodes = None
        self._labels_cache = None
        self.last_sampler, self._sampler_cache = None, None
        self.size_strata.load_state_dict(state.get("size_strata") if state else None)
        self._size_of = (self.stratifier.tracker_ if self.size_strata.tracker_ is not None
                         else None)
        self.residual.load_state_dict(state.get("residual_tracker") if state else None,
                                      self.stratifier.tracker_)

