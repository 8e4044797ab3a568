"""Typed state that travels between the parts of a round.

``PopulationFrame`` (what a policy sees) -> ``Draw`` (what it decides) -> ``RoundPlan`` (what
``configure_train`` hands to ``aggregate_train``) -> ``Feedback`` (what the policy learns).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from fedstrat.sampling import Band, Selection, Strata, VariancePrediction

if TYPE_CHECKING:
    from flwr.app import ArrayRecord, Message

    from .node_registry import NodeRegistry
    from .weight_cap import CapEffect, FirstClaims


@dataclass(frozen=True)
class PopulationFrame:
    """The round's population: ``nodes`` (sorted node ids), their sizes ``n_i``, the number
    ``m`` to select, the server's knowledge of each node, and a population ``key``."""

    round: int
    nodes: Sequence[int]
    sizes: np.ndarray
    m: int
    registry: NodeRegistry
    #: changes whenever ``nodes`` may differ from the last frame's (e.g. the node waiter's
    #: revision), so a policy need not compare N ids each round; None: compare the nodes
    key: int | None = None


@dataclass(frozen=True)
class StrataPlan:
    """The stratified part of a draw: strata over the population (local labels 0..H-1 of the
    ``present`` global strata), ``m_h``, ``sigma_h`` and its ``basis`` ("tracked", "prior",
    "flat"), ``N_h``, ``P_h`` and the predicted variance of this design vs uniform."""

    strata: Strata
    present: np.ndarray
    allocation: np.ndarray
    stds: np.ndarray
    basis: str
    counts: np.ndarray
    masses: np.ndarray
    prediction: VariancePrediction


@dataclass(frozen=True)
class DesignDecision:
    """The stratified policy's per-round choice between its stratified design and FedAvg.

    ``mode`` "stratified" | "fedavg"; ``evidence`` "tracked" (update sketches), "proxy"
    (stratification features at fit time) or "none"; ``candidate`` the stratified design
    evaluated ("pps" | "srswor" | None); ``predicted`` / ``predicted_fedavg`` their predicted
    MSE with band (None without strata); ``reason`` one line."""

    mode: str
    evidence: str
    candidate: str | None
    predicted: Band | None
    predicted_fedavg: Band | None
    reason: str
    #: estimator="difference", FedAvg round: predicted MSE of the difference estimator on the
    #: round's uniform draw (HT weights), from the residual tracker; JSON only when set
    predicted_uniform_difference: Band | None = None

    def to_json(self) -> dict[str, object]:
        """JSON object (bands as ``[value, lo, hi]``)."""
        out: dict[str, object] = {
            "mode": self.mode,
            "evidence": self.evidence,
            "candidate": self.candidate,
            "pred_var": None if self.predicted is None else self.predicted.to_json(),
            "pred_var_fedavg": (
                None if self.predicted_fedavg is None else self.predicted_fedavg.to_json()
            ),
            "reason": self.reason,
        }
        if self.predicted_uniform_difference is not None:
            out["pred_var_uniform_difference"] = self.predicted_uniform_difference.to_json()
        return out


@dataclass(frozen=True)
class Draw:
    """A policy's decision: the design used, why, the :class:`Selection` (population indices)
    and, for stratified designs, the strata plan. ``estimator`` overrides the configured
    estimator for this round ("ratio" when the policy fell back to FedAvg); ``decision`` the
    stratified policy's design decision."""

    design: str
    selection: Selection
    without_replacement: bool
    reason: str = ""
    strata: StrataPlan | None = None
    estimator: str | None = None
    decision: DesignDecision | None = None


@dataclass(frozen=True)
class RoundPlan:
    """What ``configure_train`` decided and sent, for ``aggregate_train`` of the same round.

    ``selected[k]`` is the node of ``draw.selection`` entry ``k``; ``messages`` the instructions
    sent (the grid sets their message ids when it pushes them); ``sent_at`` their creation
    times by node; ``signature`` the ``{key: (shape, dtype)}`` of ``global_arrays``.
    """

    round: int
    population: Sequence[int]
    sizes: np.ndarray
    draw: Draw
    selected: list[int]
    messages: list[Message]
    sent_at: dict[int, float]
    signature: dict[str, tuple[tuple[int, ...], str]]
    global_arrays: ArrayRecord
    size_cap: CapEffect | None = None  # what the size cap did to the population's n_i
    #: a ratio-estimator round's drawn nodes of unknown size, weighted by their own claims
    first_claims: FirstClaims | None = None
    benched: tuple[int, ...] = ()  # available nodes sitting out this round (.bench)

    @property
    def design(self) -> str:
        """The design of the draw."""
        return self.draw.design

    @property
    def selection(self) -> Selection:
        """The draw's selection (population indices, weights, inclusion, strata)."""
        return self.draw.selection


@dataclass(frozen=True)
class Feedback:
    """What the accepted replies of a round tell a policy: responder nodes, their update
    sketches (None without floating-point arrays) and their aggregation weights."""

    nodes: list[int]
    sketches: np.ndarray | None
    weights: np.ndarray


@dataclass(frozen=True)
class SamplerSpec:
    """Inputs of a policy's sampler: sizes ``n_i``, ``m``, and per scheme: representative
    vectors (clustered2), last local losses (poc, unknown = +inf) and ``poc_d``, or strata,
    allocation ``m_h`` and design (stratified). ``seed`` seeds the sampler's own generator."""

    sizes: np.ndarray
    m: int
    representatives: np.ndarray | None = None
    losses: np.ndarray | None = None
    poc_d: int | None = None
    strata: Strata | None = None
    allocation: np.ndarray | None = None
    design: str = "pps"
    seed: int = 0
