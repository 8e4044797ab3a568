"""The allocation rule: ``m_h`` and ``sigma_h`` of the present strata for one round.

Also the two per-stratum inputs it needs besides the tracker: the training cost ``c_h`` and
the stratum means ``Dbar_h`` used by :func:`fedstrat.sampling.predicted_variance`.
"""

from __future__ import annotations

import numpy as np

from fedstrat.sampling import (
    Strata,
    design_neyman_allocation,
    neyman_allocation,
    proportional_allocation,
)

from .node_registry import NodeRegistry
from .stratifier import Stratifier


def stratum_costs(
    node_stratum: dict[int, int], registry: NodeRegistry, present: np.ndarray
) -> np.ndarray:
    """``c_h``: mean observed train seconds of the stratum's nodes (overall mean where a
    stratum has none; 1 when nothing was observed)."""
    per: dict[int, list[float]] = {}
    for node, h in node_stratum.items():
        c = registry.mean_cost(node)
        if c is not None:
            per.setdefault(h, []).append(c)
    allc = [c for v in per.values() for c in v]
    fill = float(np.mean(allc)) if allc else 1.0
    costs = np.array([np.mean(per[h]) if h in per else fill for h in present.tolist()])
    return np.maximum(costs, 1e-9 if fill > 0 else 1.0)


def stratum_sigmas(stratifier: Stratifier, present: np.ndarray) -> tuple[np.ndarray, str]:
    """``(sigma_h, basis)`` of the present strata.

    From the tracker once some stratum has two observed updates ("tracked"; strata with fewer
    get the tracker's pooled prior), before that from the stratification features ("prior";
    the unknown stratum gets the mean of the others), else ones ("flat").
    """
    tracker = stratifier.tracker_
    assert tracker is not None
    if (tracker.counts() >= 2).any():
        return tracker.stds()[present], "tracked"
    if stratifier.prior_stds_ is not None:
        prior = stratifier.prior_stds_.copy()
        observed = prior[:-1] if len(prior) > 1 else prior
        prior[-1] = float(np.mean(observed))  # unknown stratum: mean of the others
        return prior[present], "prior"
    return np.ones(len(present)), "flat"


def stratum_means(
    stratifier: Stratifier, present: np.ndarray, masses: np.ndarray, basis: str
) -> np.ndarray | None:
    """Stratum means ``Dbar_h`` matching the ``sigma_h`` of ``basis``: tracked sketch means
    ("tracked") or feature means ("prior"); unobserved strata get the P-weighted mean of the
    observed ones (no between-strata contribution). None otherwise."""
    if basis == "tracked" and stratifier.tracker_ is not None:
        means = stratifier.tracker_.means()[present]
        counts = stratifier.tracker_.counts()[present]
    elif basis == "prior" and stratifier.prior_means_ is not None:
        means = stratifier.prior_means_[0][present]
        counts = stratifier.prior_means_[1][present]
    else:
        return None
    seen = counts > 0
    if not seen.any():
        return None
    if not seen.all():
        fill = (masses[seen] @ means[seen]) / masses[seen].sum()
        means[~seen] = fill
    return means


def present_strata(
    labels: np.ndarray, sizes: np.ndarray
) -> tuple[np.ndarray, Strata, np.ndarray, np.ndarray]:
    """``(present, strata, P_h, p2_h)`` of a population whose nodes carry the global stratum
    ``labels``: the present labels, the strata relabelled 0..H-1 in that order, their masses
    ``P_h = sum_{i in h} p_i`` and ``p2_h = sum_{i in h} p_i^2`` (``p_i = n_i / sum n``)."""
    present, local = np.unique(labels, return_inverse=True)
    strata = Strata(local.reshape(-1))
    p = sizes / sizes.sum()
    p2 = np.bincount(strata.labels, weights=p * p, minlength=len(present))
    return present, strata, strata.masses(sizes), p2


def allocate(
    rule: str,
    design: str,
    counts: np.ndarray,
    masses: np.ndarray,
    stds: np.ndarray,
    m: int,
    min_per_stratum: int,
    costs: np.ndarray | None = None,
) -> np.ndarray:
    """``m_h`` (int64, sums to ``m``) by ``rule``.

    proportional: ``m_h ∝ P_h`` (pps, capped at ``N_h``) or ``∝ N_h`` (srswor); neyman:
    :func:`design_neyman_allocation` (pps ``m_h ∝ P_h sigma_h``, srswor ``∝ N_h S_{y,h}``);
    cost: the same divided by ``sqrt(c_h)``.
    """
    lo = min_per_stratum
    if rule == "proportional":
        if design == "pps":
            alloc = proportional_allocation(masses, m, lo, capacity=counts)
        else:
            alloc = proportional_allocation(counts, m, lo)
    elif rule == "neyman":
        alloc = design_neyman_allocation(counts, masses, stds, m, design, lo)
    else:
        if costs is None:
            raise ValueError("the cost allocation needs the stratum costs")
        if design == "pps":
            alloc = neyman_allocation(masses, stds, m, lo, costs=costs, capacity=counts)
        else:
            # srswor: S_{y,h} ≈ (P_h/N_h) sigma_h sqrt(N_h/(N_h-1)), as in
            # design_neyman_allocation, then m_h ∝ N_h S_{y,h} / sqrt(c_h).
            s_y = masses / counts * stds * np.sqrt(counts / np.maximum(counts - 1.0, 1.0))
            alloc = neyman_allocation(counts, s_y, m, lo, costs=costs)
    return np.asarray(alloc, dtype=np.int64)


def round_allocation(
    rule: str,
    stratifier: Stratifier,
    registry: NodeRegistry,
    strata: Strata,
    masses: np.ndarray,
    present: np.ndarray,
    m: int,
    design: str,
    min_per_stratum: int,
) -> tuple[np.ndarray, np.ndarray, str]:
    """``(m_h, sigma_h, basis)`` of the present strata this round (see :func:`allocate`);
    ``masses``: their ``P_h`` (:func:`present_strata`'s, kept with the population)."""
    counts = strata.sizes.astype(np.float64)
    stds, basis = stratum_sigmas(stratifier, present)
    costs = (
        stratum_costs(stratifier.node_stratum_, registry, present) if rule == "cost" else None
    )
    alloc = allocate(rule, design, counts, masses, stds, m, min_per_stratum, costs)
    return alloc, np.asarray(stds, dtype=np.float64), basis
