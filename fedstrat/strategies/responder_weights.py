"""Re-weighting the selected clients that actually answered (non-response adjustment)."""

from __future__ import annotations

import numpy as np


def responder_weights(
    weights: np.ndarray,
    strata: np.ndarray | None,
    certainty: np.ndarray,
    responded: np.ndarray,
) -> tuple[np.ndarray, list[str]]:
    """Aggregation weights for the responders of a selection; non-responders get 0.

    With ``W_h = sum_{i in s_h} w_i`` the selected weight of stratum ``h`` (one stratum when
    ``strata`` is None):

    1. Inside a stratum with responders, the responders among the non-certainty units stand
       for all selected non-certainty units (missing at random within the stratum): their
       weights are multiplied by ``#selected non-certainty / #responding non-certainty``.
       For SRSWOR this is the estimator of an SRS of the responders; for pps the non-certainty
       weights are all ``P_h / m_h'`` so it equals re-weighting by weight.
    2. If certainty units (``certainty`` True) of the stratum failed, or all its non-certainty
       units did, the stratum's responders are scaled proportionally so that their total is
       again ``W_h``.
    3. A stratum with no responder: its share ``W_h`` is given to the other strata in
       proportion to their totals (all responders scaled by ``sum W / sum_{responding} W``).

    Returns the new weights (aligned with ``weights``) and human-readable notes of what was
    redistributed. Without any responder every weight is 0 and a note says so.
    """
    w = np.asarray(weights, dtype=np.float64)
    resp = np.asarray(responded, dtype=bool)
    cert = np.asarray(certainty, dtype=bool)
    if not (len(w) == len(resp) == len(cert)):
        raise ValueError("weights, certainty and responded must have the same length")
    labels = np.zeros(len(w), dtype=np.int64) if strata is None else np.asarray(strata)
    if len(labels) != len(w):
        raise ValueError("strata must have the same length as weights")
    if resp.all():  # everyone answered: nothing to redistribute (the loop below is a no-op)
        return w.copy(), []
    out = np.where(resp, w, 0.0)
    notes: list[str] = []
    if not resp.any():
        notes.append("no responders: nothing to aggregate")
        return np.zeros_like(w), notes
    empty_share = 0.0
    for h in np.unique(labels):
        in_h = labels == h
        target = float(w[in_h].sum())
        if not (resp & in_h).any():
            empty_share += target
            notes.append(f"stratum {int(h)}: no responder, share {target:.4g} redistributed")
            continue
        nc_sel = in_h & ~cert
        nc_resp = nc_sel & resp
        if nc_resp.any() and nc_resp.sum() < nc_sel.sum():
            factor = nc_sel.sum() / nc_resp.sum()
            out[nc_resp] *= factor
            notes.append(
                f"stratum {int(h)}: {int(nc_sel.sum() - nc_resp.sum())} of "
                f"{int(nc_sel.sum())} non-certainty units failed, responders x{factor:.4g}"
            )
        failed_cert = in_h & cert & ~resp
        lost_nc = nc_sel.any() and not nc_resp.any()
        if failed_cert.any() or lost_nc:
            current = float(out[in_h].sum())
            out[in_h] *= target / current
            notes.append(
                f"stratum {int(h)}: {int(failed_cert.sum())} certainty and "
                f"{int(nc_sel.sum() - nc_resp.sum())} non-certainty units failed, "
                "stratum responders rescaled to the stratum total"
            )
    if empty_share > 0:
        responding_total = float(out.sum())
        if responding_total > 0:
            out *= (responding_total + empty_share) / responding_total
    return out, notes
