r"""FedAvg's predicted MSE from size-weighted stratum moments.

FedAvg's linearised MSE (:mod:`fedstrat.sampling.baseline`) is ``c sum_i p_i^2 ||Delta_i -
T||^2``. Per stratum this is exactly

.. math::

    \sum_{i \in h} p_i^2 \lVert \Delta_i - T \rVert^2 = p2_h \bigl(\sigma_{(2),h}^2 +
    \lVert \bar\Delta_{(2),h} - T \rVert^2\bigr),

with the ``p_i^2``-weighted mean ``Dbar_(2),h`` and dispersion ``sigma_(2),h^2`` of the
stratum. :func:`~fedstrat.sampling.baseline.fedavg_from_strata` uses the ``p_i``-weighted
``sigma_h`` and ``Dbar_h`` instead (exact only when ``||Delta_i - Dbar_h||^2`` is uncorrelated
with ``p_i`` in the stratum). Where clients with more data move further (more local steps: one
user per client, 20-737 ratings), the ``p_i``-weighted dispersion is too small: on per-user
MovieLens-100k at round 1 the within part is 0.745x the exact one with exact statistics
(experiments/README.md, section 5).

A tracker fed with weights ``w_i s_i`` (HT weight ``w_i = p_i / pi_i``, size ``s_i`` proportional
to ``p_i``) estimates exactly these ``p_i^2``-weighted moments (ratio estimators: ``sum_s w_i s_i
x_i / sum_s w_i s_i -> sum_i p_i^2 x_i / sum_i p_i^2``); :class:`SizeWeighted` keeps them and
:func:`fedavg_terms` uses their dispersion for the within terms where a stratum has at least
2 sized updates (the between terms keep the ``p``-weighted means, see there).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from .baseline import Band, fedavg_factor, fedavg_from_strata, satterthwaite_band

if TYPE_CHECKING:
    from .tracker import StratumVarianceTracker

__all__ = ["SizeWeighted", "as_size", "fedavg_terms", "tracked_fedavg_band"]

_KEYS = ("sw_w", "sw_w2", "sw_mean", "sw_m2", "sw_n", "sw_cross")


def as_size(size: float) -> float:
    """``size`` as a finite positive float (ValueError otherwise)."""
    s = float(size)
    if not math.isfinite(s) or s <= 0:
        raise ValueError("size must be finite and positive")
    return s


class SizeWeighted:
    """Per-stratum weighted Welford moments (weights ``w_i s_i``) with the same forgetting as
    :class:`~fedstrat.sampling.variance.StratumVarianceTracker` (used inside it)."""

    def __init__(self, n_strata: int, dim: int) -> None:
        self.w = np.zeros(n_strata)
        self.w2 = np.zeros(n_strata)
        self.mean = np.zeros((n_strata, dim))
        self.m2 = np.zeros(n_strata)
        self.n = np.zeros(n_strata, dtype=np.int64)
        self.cross = np.zeros(n_strata)  # sum of (tracker weight) x (sized weight)

    def update(self, h: int, x: np.ndarray, base: float, size: float, ema: float | None) -> None:
        """Add ``x`` to stratum ``h`` with weight ``base * size`` (``base``: the tracker's
        weight; ``ema``: decay the past first)."""
        w = base * size
        if ema is not None:
            self.w[h] *= ema
            self.m2[h] *= ema
            self.w2[h] *= ema * ema
            self.cross[h] *= ema * ema
        self.w[h] += w
        self.w2[h] += w * w
        self.cross[h] += base * w
        delta = x - self.mean[h]
        self.mean[h] += (w / self.w[h]) * delta
        self.m2[h] += w * float(delta @ (x - self.mean[h]))
        self.n[h] += 1

    def decay(self, f: float) -> None:
        """Forget the past by ``f`` (``W``, ``M2`` times ``f``, ``sum w^2`` times ``f^2``)."""
        self.w *= f
        self.m2 *= f
        self.w2 *= f * f
        self.cross *= f * f

    def rescale(self, f: float) -> None:
        """Every stored sketch times ``sqrt(f)``: means times ``sqrt(f)``, ``M2`` times ``f``."""
        self.mean *= math.sqrt(f)
        self.m2 *= f

    def moments(self, base_w: np.ndarray, base_w2: np.ndarray) -> dict[str, np.ndarray]:
        """``means``, ``variances`` (trace; NaN with < 2 updates), ``effective_counts``
        (Kish, ``n_eff = (sum w)^2 / sum w^2``). The variance is ``M2 / W``, the convention of
        the tracker's own ``sigma_h^2`` (:meth:`StratumVarianceTracker.variances`) that the
        design's prediction uses, so that FedAvg's and the design's predictions are compared
        on one footing. In a stationary population it is low by ``1 - 1/n_eff`` (the weighted
        form of ``n - 1``; ~5% with the ~19 effective updates a stratum keeps under the
        per-round forgetting 0.9 of the strategy's trackers, which hold past updates rescaled
        to the current scale, :class:`~fedstrat.sampling.UpdateScale`): in the replays of
        ``fedstrat measure-variance`` (experiments/README.md section 4, five settings, 5 seeds,
        rounds 5-30) FedAvg's prediction is 0.61-1.66x the measured MSE per seed, 0.79-1.28x
        outside the CNN. (With forgetting 0.7 and no rescaling the low bias offset the lag of
        shrinking updates: 0.79-1.33x at rounds 5 / 10; the reliability-corrected
        ``M2 / (W (1 - 1/n_eff))`` gave 0.88-1.86x.)
        ``shift_noise``: ``E||Dbar_hat_(2) - Dbar_hat||^2``
        over the true ``||Dbar_(2) - Dbar||^2`` in units of the dispersion, ``sum_i (b_i -
        a_i)^2`` with the normalised sized weights ``b`` and the tracker's ``a`` (its ``W``
        and ``sum w^2``: ``base_w``, ``base_w2``)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            neff = np.where(self.w2 > 0, self.w**2 / self.w2, 0.0)
            ok = (self.n >= 2) & (neff > 1.0 + 1e-9)
            var = np.where(ok, self.m2 / self.w, np.nan)
            noise = np.where(ok, self.w2 / self.w**2 + base_w2 / base_w**2
                             - 2.0 * self.cross / (self.w * base_w), np.nan)
        return {"means": self.mean.copy(), "variances": np.where(var < 0, 0.0, var),
                "effective_counts": neff, "shift_noise": np.maximum(noise, 0.0)}

    def state_dict(self) -> dict[str, Any]:
        """Arrays under ``sw_*`` keys (merged into the tracker's state)."""
        return {k: getattr(self, k[3:]).copy() for k in _KEYS}

    @classmethod
    def from_state(cls, n_strata: int, dim: int, state: dict[str, Any]) -> SizeWeighted:
        """Restored from a tracker state; empty (no sized updates) for older states."""
        out = cls(n_strata, dim)
        if all(k in state for k in _KEYS):
            for k in _KEYS:
                dtype = np.int64 if k == "sw_n" else np.float64
                setattr(out, k[3:], np.asarray(state[k], dtype=dtype).copy())
        return out


def fedavg_terms(
    n_total: int, m: int, masses: np.ndarray, p2: np.ndarray, stds: np.ndarray,
    means: np.ndarray | None, mean_counts: np.ndarray | None = None,
    sized: dict[str, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-stratum FedAvg terms ``(within, between)``, the ``sigma^2`` behind each within term
    and the observation counts behind it (the between terms' are ``mean_counts``).

    Without ``sized`` (or in strata with < 2 sized updates) these are
    :func:`~fedstrat.sampling.baseline.fedavg_from_strata`'s, with ``stds**2`` and
    ``mean_counts``. With ``sized`` (:meth:`StratumVarianceTracker.size_weighted` restricted to
    the present strata) ``within_h = c p2_h (sigma_(2),h^2 + max(||Dbar_(2),h - Dbar_h||^2 -
    noise_h, 0))``, the ``p_i^2``-weighted dispersion about the ``p``-weighted mean, with the
    sized effective counts (``noise_h = sigma_(2),h^2 shift_noise_h``: the estimation noise of
    the shift). The between terms keep the ``p``-weighted means, ``c p2_h ||Dbar_h - T||^2``;
    the two add up to the exact value but for the cross term ``2 c p2_h (Dbar_(2),h -
    Dbar_h)·(Dbar_h - T)``. A ``p_i^2``-weighted between term ``||Dbar_(2),h - T||^2`` is exact
    but too noisy from the 2-5 effective updates a small stratum keeps (MNIST-5k
    Dirichlet(0.1), 10 strata: 1.3-1.4x the exact between part, the ``p``-weighted 0.8-1.1x)."""
    within, between = fedavg_from_strata(n_total, m, masses, p2, stds, means, mean_counts)
    var_in = np.asarray(stds, dtype=np.float64) ** 2
    nobs = (np.full(len(var_in), math.inf) if mean_counts is None
            else np.asarray(mean_counts, dtype=np.float64).copy())
    if sized is None:
        return within, between, var_in, nobs
    v2 = np.asarray(sized["variances"], dtype=np.float64)
    use = np.isfinite(v2)
    c = fedavg_factor(int(n_total), int(m))
    p2 = np.asarray(p2, dtype=np.float64)
    n2 = np.asarray(sized["effective_counts"], dtype=np.float64)
    disp = np.where(use, v2, 0.0)
    if means is not None:  # about the p-weighted mean: + ||Dbar_(2),h - Dbar_h||^2 - noise
        mu = np.asarray(means, dtype=np.float64)
        mu = mu[:, None] if mu.ndim == 1 else mu
        mu2 = np.asarray(sized["means"], dtype=np.float64).reshape(mu.shape)
        noise = np.asarray(sized.get("shift_noise", np.zeros(len(v2))), dtype=np.float64)
        shift = np.sum((mu2 - mu) ** 2, axis=1) - np.where(use, v2 * noise, 0.0)
        disp = disp + np.maximum(shift, 0.0)
    within = np.where(use, c * p2 * disp, within)
    return within, between, np.where(use, v2, var_in), np.where(use, n2, nobs)


def tracked_fedavg_band(
    tracker: StratumVarianceTracker | None, labels: np.ndarray | None, sizes: np.ndarray,
    m: int, min_tracked: int, level: float,
) -> Band | None:
    """FedAvg's predicted MSE with its ``level`` band from ``tracker`` alone (nodes of
    stratum ``labels`` with ``sizes``, ``m`` a round: :func:`fedavg_terms`, Satterthwaite's
    degrees of freedom), once every present stratum has ``min_tracked`` tracked updates;
    None before (or without a tracker or labels)."""
    if tracker is None or labels is None:
        return None
    present, local = np.unique(labels, return_inverse=True)
    local = local.reshape(-1)
    if tracker.counts()[present].min() < min_tracked:
        return None
    p = sizes / sizes.sum()
    nobs = tracker.effective_counts()[present]
    within, between, _, n_in = fedavg_terms(
        len(p), m, np.bincount(local, weights=p), np.bincount(local, weights=p * p),
        tracker.stds()[present], tracker.means()[present], nobs, tracker.size_weighted(present))
    dfs = np.maximum(np.concatenate([n_in, nobs]) - 1.0, 1.0)
    return satterthwaite_band(np.concatenate([within, between]), dfs, level)
