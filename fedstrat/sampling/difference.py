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

from typing import Any

import numpy as np

from ._validate import as_sizes, as_updates
from .selection import Selection
from .strata import Strata
from .variance import estimator_variance, multinomial_variance, uniform_variance

__all__ = [
    "DIFFERENCE_DESIGNS",
    "control_offset",
    "difference_estimate",
    "difference_variance",
    "fill_controls",
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
