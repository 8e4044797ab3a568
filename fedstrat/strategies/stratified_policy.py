"""The stratified selection policy: strata, design, allocation, draw; tracks ``S_h``.

Per round: (re)stratify when due (:meth:`StratifiedPolicy.refresh`), then draw with the fitted
design (``pps`` / ``srswor`` with the allocation rule of ``options.allocation``; ``uniform``
when the design choice said so, when too many strata are present for ``m``, or before strata
exist: ``uniform-warmup``). Accepted replies feed the per-stratum tracker (:meth:`observe`).
"""

from __future__ import annotations

import logging
from logging import WARNING
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from fedstrat.sampling import (
    Sampler,
    Strata,
    StratifiedSampler,
    UniformSampler,
    predicted_variance,
)

from .allocation_rule import round_allocation, stratum_means
from .node_registry import NodeRegistry
from .plan import Draw, Feedback, PopulationFrame, SamplerSpec, StrataPlan
from .stratifier import Stratifier, feature_nodes

if TYPE_CHECKING:
    from .options import SelectionOptions

log = logging.getLogger("flwr").log

STRATIFIED_DESIGNS = ("pps", "srswor")


class StratifiedPolicy:
    """Stratified selection (see module doc); ``stratifier`` holds the fitted strata."""

    name: ClassVar[str] = "stratified"

    def __init__(self, options: SelectionOptions) -> None:
        self.options = options
        self.stratifier = Stratifier(options)
        self.fallback = False  # profiling gave no histogram -> stratify by sketches
        self._last_nodes: tuple[int, ...] | None = None
        self._labels_cache: tuple[Any, np.ndarray | None] | None = None

    @staticmethod
    def sampler(spec: SamplerSpec) -> Sampler:
        """Stratified sampler of ``spec.design`` with ``spec.allocation`` (uniform SRSWOR when
        ``spec.strata`` is None)."""
        if spec.strata is None or spec.allocation is None:
            return UniformSampler(spec.sizes, spec.m, seed=spec.seed)
        return StratifiedSampler(
            spec.sizes, spec.strata, spec.allocation, spec.design, seed=spec.seed
        )

    @property
    def design(self) -> str:
        """The fitted design, or ``"uniform-warmup"`` before strata exist."""
        d = self.stratifier.design_
        return "uniform-warmup" if d is None else d

    # ------------------------------------------------------------------ plan
    def plan(self, frame: PopulationFrame, rng: np.random.Generator) -> Draw:
        """Refresh the strata, then draw ``frame.m`` nodes with the current design."""
        same_nodes = tuple(frame.nodes) == self._last_nodes
        self._last_nodes = tuple(frame.nodes)
        self.refresh(frame.round, frame.nodes, frame.registry, same_nodes)
        design = self.design
        strata_plan = None
        if design in STRATIFIED_DESIGNS:
            strata_plan = self._strata_plan(frame, design)
            if strata_plan is None:
                design = "uniform"
        if strata_plan is None:
            spec = SamplerSpec(frame.sizes, frame.m)
        else:
            spec = SamplerSpec(
                frame.sizes,
                frame.m,
                strata=strata_plan.strata,
                allocation=strata_plan.allocation,
                design=design,
            )
        selection = self.sampler(spec).sample(rng)
        return Draw(
            design,
            selection,
            without_replacement=True,
            reason=self.stratifier.design_reason_,
            strata=strata_plan,
        )

    def _strata_plan(self, frame: PopulationFrame, design: str) -> StrataPlan | None:
        """Strata of the present nodes, ``m_h``, ``sigma_h`` and the predicted variance; None
        (uniform this round) when the present strata cannot each get ``min_per_stratum``."""
        o, m, sizes = self.options, frame.m, frame.sizes
        present, local = np.unique(self._labels(frame.nodes), return_inverse=True)
        if len(present) * max(o.min_per_stratum, 1) > m:
            log(
                WARNING,
                "%d strata present but only %d clients per round: uniform this round",
                len(present),
                m,
            )
            return None
        strata = Strata(local.reshape(-1))
        alloc, stds, basis = round_allocation(
            o.allocation,
            self.stratifier,
            frame.registry,
            strata,
            sizes,
            present,
            m,
            design,
            o.min_per_stratum,
        )
        counts = strata.sizes.astype(np.float64)
        masses = strata.masses(sizes)
        means = stratum_means(self.stratifier, present, masses, basis)
        prediction = predicted_variance(counts, masses, stds, alloc, design, means=means, m=m)
        return StrataPlan(strata, present, alloc, stds, basis, counts, masses, prediction)

    def _labels(self, nodes: list[int]) -> np.ndarray | None:
        """Global stratum labels of ``nodes``, cached while nodes and strata are unchanged."""
        key = (tuple(nodes), self.stratifier.version_)
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
        """Feed each responder's sketch, with its HT weight, to its stratum's tracker."""
        tracker = self.stratifier.tracker_
        if feedback.sketches is None or tracker is None:
            return
        where = self.stratifier.node_stratum_
        for r, node in enumerate(feedback.nodes):
            if feedback.weights[r] > 0 and node in where:
                tracker.update(where[node], feedback.sketches[r], feedback.weights[r])

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """The stratifier's state and the fallback flag."""
        return {**self.stratifier.state_dict(), "fallback": self.fallback}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (empty: start afresh)."""
        self.stratifier = Stratifier(self.options)
        if state:
            self.stratifier.load_state_dict(state)
        self.fallback = bool(state.get("fallback", False))
        self._last_nodes = None
        self._labels_cache = None
