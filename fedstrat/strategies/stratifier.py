"""Strata over Flower nodes: k-means on label proportions or update sketches, plus the design.

Shaped like a scikit-learn estimator: :meth:`Stratifier.fit` learns the strata, the design and
the feature-proxy stratum statistics (fitted attributes end in ``_``); :meth:`Stratifier.assign`
places further nodes in the stratum with the nearest centroid.
"""

from __future__ import annotations

import logging
from logging import INFO
from typing import TYPE_CHECKING, Any

import numpy as np

from fedstrat.sampling import (
    StratumVarianceTracker,
    choose_design,
    label_homogeneity,
    stratify_by_histograms,
    stratify_by_sketches,
)

from .node_registry import NodeRegistry

if TYPE_CHECKING:
    from .options import SelectionOptions

log = logging.getLogger("flwr").log

#: Numbers of strata tried by ``design="auto"`` when ``n_strata`` is not given.
AUTO_STRATA = (2, 3, 4, 5, 6, 8, 10, 12, 16, 20)


def feature_nodes(registry: NodeRegistry, nodes: list[int], kind: str) -> list[int]:
    """The nodes of ``nodes`` that have ``kind`` features (a non-empty label histogram, or an
    update sketch)."""
    if kind == "histograms":
        hists = registry.histograms
        return [n for n in nodes if n in hists and sum(hists[n]) > 0]
    return [n for n in nodes if n in registry.sketches]


def label_proportions(hist: np.ndarray) -> np.ndarray:
    """Label proportions ``c_ik / sum_k c_ik`` of an ``(N, C)`` histogram matrix."""
    return hist / hist.sum(axis=1, keepdims=True)


def node_features(registry: NodeRegistry, nodes: list[int], kind: str) -> np.ndarray:
    """``(len(nodes), F)`` features: :func:`label_proportions`, or sketches."""
    if kind == "histograms":
        return label_proportions(registry.histogram_matrix(nodes))
    return registry.sketch_matrix(nodes)


class Stratifier:
    """Strata, design and per-stratum statistics learnt from node features.

    Fitted attributes (None / empty before :meth:`fit`):
    ``node_stratum_`` (node -> stratum 0..H-1; H is the "unknown" stratum of nodes without
    features), ``centroids_`` (H, F), ``features_kind_`` ("histograms" | "sketches"),
    ``design_`` ("pps" | "srswor", or "fedavg" when the features did not predict a stratified
    design below FedAvg) and ``design_reason_``, ``candidate_design_`` (the stratified design
    the strata are evaluated with every round; None with a single stratum), ``prior_stds_`` (H+1,)
    and ``prior_means_`` (means, counts): the p-weighted feature spread per stratum (a proxy of
    ``sigma_h`` before any update was observed), ``fitted_round_``, and ``tracker_``: a fresh
    :class:`StratumVarianceTracker` over H+1 strata seeded with the sketches known at fit time
    (the policy feeds it later updates). ``version_`` changes whenever a node's stratum does.
    """

    def __init__(self, options: SelectionOptions) -> None:
        self.options = options
        self.node_stratum_: dict[int, int] = {}
        self.centroids_: np.ndarray | None = None
        self.features_kind_: str | None = None
        self.design_: str | None = None
        self.design_reason_ = ""
        self.candidate_design_: str | None = None
        self.prior_stds_: np.ndarray | None = None
        self.prior_means_: tuple[np.ndarray, np.ndarray] | None = None
        self.fitted_round_ = 0
        self.tracker_: StratumVarianceTracker | None = None
        self.version_ = 0

    @property
    def fitted(self) -> bool:
        """True once strata exist."""
        return self.centroids_ is not None

    @property
    def unknown_stratum(self) -> int:
        """Label of the stratum of nodes without features (= number of fitted strata)."""
        assert self.centroids_ is not None
        return len(self.centroids_)

    # ------------------------------------------------------------------ fit
    def fit(
        self,
        registry: NodeRegistry,
        nodes: list[int],
        kind: str,
        server_round: int,
        n_unknown: int = 0,
    ) -> Stratifier:
        """Stratify ``nodes`` on ``kind`` features, choose the design, reset the tracker.

        ``design="auto"``: :func:`choose_design` over the candidate numbers of strata (uniform
        when fewer than 2 strata are possible). Otherwise k-means with ``n_strata`` (or the
        silhouette choice up to ``min(max_strata or 20, m)``) and the requested design.
        ``n_unknown`` available nodes have no features: they form their own stratum, which
        needs one of the ``clients_per_round`` slots.
        """
        o = self.options
        hist = registry.histogram_matrix(nodes) if kind == "histograms" else None
        x = node_features(registry, nodes, kind) if hist is None else label_proportions(hist)
        sizes = registry.sizes(nodes)
        m = min(o.clients_per_round - (1 if n_unknown else 0), len(nodes))
        labels, design, reason = self._strata_and_design(x, sizes, m, kind, hist)
        h = int(labels.max()) + 1
        self.candidate_design_ = self._candidate
        if h < 2:
            self.candidate_design_ = None
        self.node_stratum_ = {n: int(lab) for n, lab in zip(nodes, labels, strict=True)}
        self.centroids_ = np.array([x[labels == k].mean(axis=0) for k in range(h)])
        self.features_kind_ = kind
        self.design_ = design
        self.design_reason_ = reason
        self.fitted_round_ = server_round
        self.version_ += 1
        self.tracker_ = StratumVarianceTracker(
            h + 1, o.sketch_dim, prior_std=o.prior_std, ema=o.variance_ema
        )
        # Feature proxy of sigma_h (used before any update was observed) and seeding of the
        # tracker with the sketches collected so far.
        proxy = StratumVarianceTracker(h + 1, x.shape[1], covariance=False)
        p = sizes / sizes.sum()
        proxy.update_many(labels, x, p)
        seen = [i for i, n in enumerate(nodes) if n in registry.sketches]
        if seen:
            self.tracker_.update_many(labels[seen], registry.sketch_matrix(
                [nodes[i] for i in seen]), p[seen])
        self.prior_stds_ = proxy.stds()
        self.prior_means_ = (proxy.means(), proxy.counts())
        log(
            INFO,
            "Stratified %d nodes on %s into %d strata (sizes %s); design: %s (%s)",
            len(nodes),
            kind,
            h,
            np.bincount(labels, minlength=h).tolist(),
            design,
            reason,
        )
        return self

    def _strata_and_design(
        self,
        x: np.ndarray,
        sizes: np.ndarray,
        m: int,
        kind: str,
        hist: np.ndarray | None,
    ) -> tuple[np.ndarray, str, str]:
        """``(labels, design, reason)``; sets ``_candidate`` (the stratified design of the
        strata). ``design="auto"``: one stratum and "fedavg" when the label histograms pass a
        chi-square test of homogeneity (IID: strata on label noise); else
        :func:`choose_design` against FedAvg, keeping its best strata even when FedAvg wins
        (tracked updates may later show they pay). ``hist``: the nodes' label histograms
        (with ``kind="histograms"``)."""
        o = self.options
        n = len(x)
        self._candidate: str | None = None if o.design == "auto" else o.design
        if o.design == "auto":
            if hist is not None and o.profile_epsilon == 0:
                test = label_homogeneity(hist)
                if test.iid():
                    return (
                        np.zeros(n, dtype=np.int64),
                        "fedavg",
                        "label histograms consistent with IID labels "
                        f"({test.describe()}): FedAvg",
                    )
            cands = (
                (o.n_strata,)
                if o.n_strata
                else tuple(k for k in AUTO_STRATA if o.max_strata is None or k <= o.max_strata)
            )
            if m < 2 or (o.n_strata or 2) < 2:
                return (
                    np.zeros(n, dtype=np.int64),
                    "fedavg",
                    "fallback to fedavg: fewer than 2 strata possible",
                )
            choice = choose_design(
                sizes,
                x,
                m,
                candidate_strata=cands,
                seed=o.seed,
                normalize=False,
                min_per_stratum=max(o.min_per_stratum, 1),
            )
            labels = np.zeros(n, dtype=np.int64)
            if choice.best is not None:
                labels = choice.best[0].labels
                self._candidate = choice.best[1]
            return labels, choice.design, choice.reason
        max_k = min(o.max_strata or 20, m)
        fn = stratify_by_histograms if kind == "histograms" else stratify_by_sketches
        if o.n_strata is not None:
            k = min(o.n_strata, n)
            strata = fn(x, n_strata=k, seed=o.seed) if k >= 2 else None
        else:
            strata = fn(x, n_strata=None, seed=o.seed, max_strata=max_k)
        labels = strata.labels if strata is not None else np.zeros(n, dtype=np.int64)
        reason = f"design={o.design} requested; {int(labels.max()) + 1} strata ({kind})"
        return labels, o.design, reason

    # ------------------------------------------------------------------ assign
    def assign(self, registry: NodeRegistry, nodes: list[int]) -> None:
        """Put nodes without a stratum (or in "unknown" that now have features) in the stratum
        with the nearest centroid; nodes without features go to "unknown"."""
        assert self.centroids_ is not None and self.features_kind_ is not None
        unknown = self.unknown_stratum
        todo = [n for n in nodes if self.node_stratum_.get(n, unknown) == unknown]
        if not todo:
            return
        have = set(feature_nodes(registry, todo, self.features_kind_))
        with_f = [n for n in todo if n in have]
        if with_f:
            x = node_features(registry, with_f, self.features_kind_)
            d = ((x[:, None, :] - self.centroids_[None, :, :]) ** 2).sum(axis=2)
            for n, k in zip(with_f, d.argmin(axis=1), strict=True):
                self.node_stratum_[n] = int(k)
        for n in todo:
            if n not in have:
                self.node_stratum_[n] = unknown
        self.version_ += 1

    def labels(self, nodes: list[int]) -> np.ndarray | None:
        """Stratum of each node (None before :meth:`fit` or if a node has none)."""
        if self.centroids_ is None or not all(n in self.node_stratum_ for n in nodes):
            return None
        return np.array([self.node_stratum_[n] for n in nodes], dtype=np.int64)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable fitted state (the keys of the version-1 strategy state)."""
        tracker = None if self.tracker_ is None else self.tracker_.to_json()
        pm = self.prior_means_
        return {
            "node_stratum": {str(k): v for k, v in self.node_stratum_.items()},
            "centroids": None if self.centroids_ is None else self.centroids_.tolist(),
            "features_kind": self.features_kind_,
            "design": self.design_,
            "design_reason": self.design_reason_,
            "candidate_design": self.candidate_design_,
            "prior_stds": None if self.prior_stds_ is None else self.prior_stds_.tolist(),
            "prior_means": None if pm is None else [pm[0].tolist(), pm[1].tolist()],
            "stratified_round": self.fitted_round_,
            "tracker": tracker,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict`."""
        self.node_stratum_ = {int(k): int(v) for k, v in state["node_stratum"].items()}
        c = state["centroids"]
        self.centroids_ = None if c is None else np.asarray(c, dtype=np.float64)
        self.features_kind_ = state["features_kind"]
        self.design_ = state["design"]
        self.design_reason_ = state["design_reason"]
        cand = state.get("candidate_design")
        if cand is None and self.design_ in ("pps", "srswor"):
            cand = self.design_  # version-1 state
        self.candidate_design_ = cand
        p = state["prior_stds"]
        self.prior_stds_ = None if p is None else np.asarray(p, dtype=np.float64)
        pm = state["prior_means"]
        self.prior_means_ = (
            None
            if pm is None
            else (np.asarray(pm[0], dtype=np.float64), np.asarray(pm[1], dtype=np.int64))
        )
        self.fitted_round_ = int(state["stratified_round"])
        t = state["tracker"]
        self.tracker_ = None if t is None else StratumVarianceTracker.from_state(t)
        self.version_ += 1
