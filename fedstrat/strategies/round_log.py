"""The one INFO line per round that says who chose how many nodes, and why.

A predicted variance ratio is printed only with its uncertainty and only when every stratum's
``S_h`` was tracked from at least :data:`MIN_OBSERVATIONS` updates; otherwise the line says
"not enough evidence yet". The number of strata is the number present this round, i.e. the
``fedstrat-n-strata`` metric (``len(m_h)``), which counts the "unknown" stratum of nodes not yet
stratified.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .plan import Draw, StrataPlan

#: tracked updates per stratum needed before a variance ratio is printed
MIN_OBSERVATIONS = 3


def ratio_text(sp: StrataPlan, counts: np.ndarray | None) -> str:
    """``"predicted MSE 1.8x lower than FedAvg (band ...)"`` or why there is none.

    The decision is always against FedAvg (uniform sampling, self-normalised weights), so
    "not enough evidence" says "vs FedAvg"; a ratio is against FedAvg when the prediction has
    it, else (no FedAvg prediction) against uniform HT, and the line says so. With
    ``basis="residuals"`` (estimator="difference") the stratified MSE is the difference
    estimator's. ``counts``: tracked updates per present stratum (None = unknown). The
    uncertainty printed is the prediction's own band when it has one; otherwise the relative
    standard error of a variance from ``n`` values, about ``sqrt(2 / (n - 1))`` (normal
    theory), for the worst-observed stratum.
    """
    pred = sp.prediction
    fedavg = float(getattr(pred, "fedavg", math.nan))
    name, base = (("FedAvg", fedavg) if math.isfinite(fedavg)
                  else ("uniform HT (no FedAvg prediction)", float(pred.uniform)))
    if sp.basis not in ("tracked", "residuals") or counts is None or len(counts) == 0:
        return f"variance vs FedAvg: not enough evidence yet (S_h from {sp.basis})"
    n_min = int(np.min(counts))
    if n_min < MIN_OBSERVATIONS:
        return (f"variance vs FedAvg: not enough evidence yet ({n_min} tracked updates in "
                f"a stratum, {MIN_OBSERVATIONS} needed)")
    strat = float(pred.stratified)
    if not (math.isfinite(strat) and math.isfinite(base)) or strat <= 0 or base <= 0:
        return "variance vs FedAvg: not enough evidence yet (degenerate prediction)"
    ratio = base / strat
    word = "lower" if ratio >= 1 else "higher"
    shown = ratio if ratio >= 1 else 1.0 / ratio
    band_s = getattr(pred, "stratified_band", None)
    band_f = getattr(pred, "fedavg_band", None)
    if sp.basis == "residuals":
        word += " (difference estimator)"
    if band_s is not None and (band_f is not None or name != "FedAvg"):
        fb = f" [{band_f.lo:.3g}, {band_f.hi:.3g}]" if band_f is not None else ""
        return (f"predicted MSE {shown:.2f}x {word} than {name} ({strat:.3g} "
                f"[{band_s.lo:.3g}, {band_s.hi:.3g}] vs {base:.3g}{fb})")
    rel = math.sqrt(2.0 / (n_min - 1))
    return (f"predicted MSE {shown:.2f}x {word} than {name} (±{100 * rel:.0f}%, "
            f">= {n_min} updates per stratum)")


def tracked_counts(policy: Any, sp: StrataPlan) -> np.ndarray | None:
    """Tracked updates per present stratum from a policy's stratifier, if it has one."""
    tracker = getattr(getattr(policy, "stratifier", None), "tracker_", None)
    if tracker is None:
        return None
    counts = np.asarray(tracker.counts(), dtype=np.float64)
    present = np.asarray(sp.present, dtype=np.int64)
    if present.size == 0 or present.max() >= counts.size:
        return None
    return counts[present]


def round_line(server_round: int, selection: str, draw: Draw, n_selected: int, n_available: int,
               policy: Any) -> str:
    """The per-round line: ``round 3: StratifiedSelection (selection=stratified) chose 10 of 20
    nodes; design pps, 4 strata this round, m_h=[...]; <ratio or "not enough evidence yet">``
    (a FedAvg round: ``...; design fedavg (<why>)``)."""
    head = (f"round {server_round}: StratifiedSelection (selection={selection}) chose "
            f"{n_selected} of {n_available} nodes")
    sp = draw.strata
    if sp is None:
        why = f"; design {draw.design}" + (f" ({draw.reason})" if draw.reason else "")
        return head + why
    return (f"{head}; design {draw.design}, {len(sp.allocation)} strata this round, "
            f"m_h={[int(a) for a in sp.allocation]}; "
            f"{ratio_text(sp, tracked_counts(policy, sp))}")
