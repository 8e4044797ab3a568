"""The per-round record of the selection: what was drawn, who answered, with which weights,
and the predicted variance. The app owns where it goes (``on_record`` callback)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedstrat.sampling import Band

from .plan import DesignDecision, RoundPlan
from .triage import ReplyProblem, Triage
from .weight_cap import CapEffect

#: ``S_h`` bases whose predicted MSE is in update units (tracked update or residual sketches)
TRACKED_BASES = ("tracked", "residuals")

#: The predicted MSEs a round reports with their band (80%, :class:`~fedstrat.sampling.Band`),
#: from tracked evidence only: each is three metrics, the value under its name and the band
#: under name + ``-lo`` / ``-hi`` (:func:`band_metric_names`). ``chosen``: the design this
#: round used (the stratified design; FedAvg's own band in a FedAvg round; the uniform draw
#: with the difference estimator in an ``estimator="difference"`` FedAvg round);
#: ``fedavg``: FedAvg (uniform draw, self-normalised weights); ``design``: the stratified
#: candidate the policy weighed against FedAvg (also when it lost); ``uniform_difference``:
#: the difference estimator on a FedAvg round's uniform draw (``decision``'s
#: ``pred_var_uniform_difference``).
PRED_VAR_METRICS: dict[str, str] = {
    "chosen": "fedstrat-pred-var-chosen",
    "fedavg": "fedstrat-pred-var-fedavg",
    "design": "fedstrat-pred-var-design",
    "uniform_difference": "fedstrat-pred-var-uniform-difference",
}


def band_metric_names(name: str) -> tuple[str, str, str]:
    """(value, lower, upper) metric names of the band metric ``name``."""
    return name, f"{name}-lo", f"{name}-hi"


def _band_metrics(name: str, band: Band | None) -> dict[str, float]:
    if band is None:
        return {}
    return dict(zip(band_metric_names(name), map(float, band.to_json()), strict=True))


@dataclass(frozen=True)
class RoundRecord:
    """One round. Population indices are already mapped to node ids; strata fields (``strata``
    .. ``var_ratio``, ``S_h_basis``) are None unless the round used a stratified design.

    ``to_json()`` is the line written to ``sampling.jsonl`` (keys in a fixed order;
    ``S_h_basis`` only for stratified rounds, ``decision`` only for the stratified policy:
    the predicted MSE of its stratified design and of FedAvg as ``[value, lo, hi]``, the mode
    chosen, the evidence and the reason); ``metrics()`` the scalars added to the round's
    aggregated MetricRecord. ``estimator`` is the one used this round ("ratio" when the policy
    fell back to FedAvg). ``size_cap``: what the size cap did to the round's population
    (:class:`~.weight_cap.CapEffect`); in ``to_json()`` only when it cut a node, in
    ``metrics()`` every round (``fedstrat-n-capped``, ``fedstrat-cap-removed``).

    With a ``decision`` from tracked evidence, ``metrics()`` also reports the predicted MSE
    with band (:data:`PRED_VAR_METRICS`) of the design used (:meth:`chosen_bands`), of FedAvg,
    of the stratified candidate and, in an ``estimator="difference"`` FedAvg round, of the
    difference estimator on the uniform draw.

    Predicted MSEs from the strata's features (``S_h_basis`` "prior" or "flat": label
    proportions, not update units) stay in ``to_json()`` but give no ``var_ratio`` and no
    ``fedstrat-pred-var*`` / ``fedstrat-var-ratio`` metrics, so a run's metrics, plots and
    summary hold only predictions from tracked updates (:data:`TRACKED_BASES`).

    ``S_h_basis="residuals"`` (estimator="difference" once the residual sketches are tracked):
    ``S_h`` are the per-stratum dispersions of the residuals ``Delta_i - c_i``, and ``pred_var``
    (and ``decision.pred_var``, metric ``fedstrat-pred-var-design``) is the predicted MSE of
    the difference estimator with this design, compared with FedAvg's.
    """

    round: int
    selection: str
    design: str
    design_reason: str
    estimator: str
    allocation_rule: str
    n_available: int
    selected: list[int]
    selection_weights: list[float]
    inclusion: list[float]
    selected_strata: list[int] | None
    responders: list[int]
    weights: list[float]
    rejected: list[ReplyProblem]
    failures: list[ReplyProblem]
    notes: list[str]
    strata: list[int] | None = None
    N_h: list[int] | None = None  # noqa: N815 - survey-sampling notation, JSON key
    P_h: list[float] | None = None  # noqa: N815
    m_h: list[int] | None = None
    S_h: list[float] | None = None  # noqa: N815
    pred_var: float | None = None
    pred_var_uniform: float | None = None
    var_ratio: float | None = None
    S_h_basis: str | None = None  # noqa: N815
    decision: DesignDecision | None = None
    size_cap: CapEffect | None = None
    benched: list[int] | None = None  # available nodes sitting out this round (.bench)

    @classmethod
    def from_round(
        cls,
        plan: RoundPlan,
        triage: Triage,
        weights: np.ndarray,
        notes: list[str],
        *,
        selection: str,
        estimator: str,
        allocation_rule: str,
    ) -> RoundRecord:
        """The record of a triaged round with responder weights ``weights``."""
        sel = plan.selection
        sp = plan.draw.strata
        strata_fields: dict[str, Any] = {}
        if sp is not None:
            pred = sp.prediction
            strata_fields = {
                "strata": [int(h) for h in sp.present],
                "N_h": [int(c) for c in sp.counts],
                "P_h": [float(x) for x in sp.masses],
                "m_h": [int(a) for a in sp.allocation],
                "S_h": [float(x) for x in sp.stds],
                "pred_var": float(pred.stratified),
                "pred_var_uniform": float(pred.uniform),
                "var_ratio": (  # a ratio only from tracked evidence (module doc)
                    float(pred.uniform / pred.stratified)
                    if pred.stratified > 0 and sp.basis in TRACKED_BASES else None
                ),
                "S_h_basis": sp.basis,
            }
        return cls(
            round=plan.round,
            selection=selection,
            design=plan.design,
            design_reason=plan.draw.reason,
            estimator=plan.draw.estimator or estimator,
            allocation_rule=allocation_rule,
            n_available=len(plan.population),
            selected=[int(n) for n in plan.selected],
            selection_weights=[float(w) for w in sel.weights],
            inclusion=[float(p) for p in sel.inclusion],
            selected_strata=(
                None
                if sel.strata is None or sp is None
                else [int(h) for h in sp.present[sel.strata]]
            ),
            responders=[v.node_id for v in triage.valid],
            weights=[float(w) for w in weights],
            rejected=list(triage.rejected),
            failures=list(triage.failures),
            notes=list(notes),
            **strata_fields,
            decision=plan.draw.decision,
            size_cap=plan.size_cap,
            benched=list(plan.benched),
        )

    def to_json(self) -> dict[str, Any]:
        """The JSON object of this record (``sampling.jsonl`` line)."""
        out: dict[str, Any] = {}
        for key in _JSON_KEYS:
            value = getattr(self, key)
            if key in ("rejected", "failures"):
                value = [p.to_json() for p in value]
            out[key] = value
        if self.S_h_basis is not None:
            out["S_h_basis"] = self.S_h_basis
        if self.decision is not None:
            out["decision"] = self.decision.to_json()
        if self.size_cap is not None and self.size_cap.binding:
            out["size_cap"] = self.size_cap.to_json()
        if self.benched:
            out["benched"] = list(self.benched)
        return out

    def metrics(self) -> dict[str, float]:
        """Scalar summaries (``fedstrat-*``) for the round's MetricRecord."""
        out: dict[str, float] = {
            "fedstrat-n-selected": float(len(self.selected)),
            "fedstrat-n-responders": float(len(self.responders)),
            "fedstrat-n-failed": float(len(self.failures)),
            "fedstrat-n-rejected": float(len(self.rejected)),
            "fedstrat-weight-sum": float(sum(self.weights)),
            "fedstrat-n-capped": float(len(self.size_cap.nodes)) if self.size_cap else 0.0,
            "fedstrat-cap-removed": float(self.size_cap.removed) if self.size_cap else 0.0,
            "fedstrat-n-benched": float(len(self.benched or ())),
        }
        if self.m_h is not None:
            out["fedstrat-n-strata"] = float(len(self.m_h))
        if self.pred_var is not None and self.S_h_basis in TRACKED_BASES:
            out["fedstrat-pred-var"] = self.pred_var
            out["fedstrat-pred-var-uniform"] = float(self.pred_var_uniform or 0.0)
            if self.var_ratio is not None:
                out["fedstrat-var-ratio"] = self.var_ratio
        d = self.decision
        if d is not None:
            out["fedstrat-stratified"] = 1.0 if d.mode == "stratified" else 0.0
            names = PRED_VAR_METRICS
            chosen, fedavg = self.chosen_bands()
            out |= _band_metrics(names["chosen"], chosen)
            out |= _band_metrics(names["fedavg"], fedavg)
            out |= _band_metrics(names["uniform_difference"], d.predicted_uniform_difference)
            if d.evidence == "tracked":
                out |= _band_metrics(names["design"], d.predicted)
                if d.predicted is not None and fedavg is not None and d.predicted.value > 0:
                    out["fedstrat-var-ratio-fedavg"] = float(fedavg.value / d.predicted.value)
        return out

    def chosen_bands(self) -> tuple[Band | None, Band | None]:
        """(predicted MSE of the design this round used, of FedAvg), each with its band, from
        tracked evidence (None where there is none): a stratified round's stratified band; in
        a FedAvg round aggregated as FedAvg (``estimator`` "ratio") FedAvg's band itself; in an
        ``estimator="difference"`` FedAvg round (uniform draw, HT weights) the difference
        estimator's band on that draw (``decision.predicted_uniform_difference``)."""
        d = self.decision
        if d is None:
            return None, None
        tracked = d.evidence == "tracked"
        fedavg = d.predicted_fedavg if tracked else None
        if d.mode == "stratified":
            return (d.predicted if tracked else None), fedavg
        if self.estimator == "difference":
            return d.predicted_uniform_difference, fedavg
        return fedavg, fedavg


_JSON_KEYS = tuple(
    k for k in RoundRecord.__dataclass_fields__
    if k not in ("S_h_basis", "decision", "size_cap", "benched")
)


def append_record(path: str | Path, record: RoundRecord) -> None:
    """Append ``record`` as one JSON line to ``path`` (parents created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(record.to_json()) + "\n")


def jsonl_appender(path: str | Path) -> Callable[[RoundRecord], None]:
    """An ``on_record`` callback appending each record to ``path`` (JSON lines)."""

    def on_record(record: RoundRecord) -> None:
        append_record(path, record)

    return on_record
