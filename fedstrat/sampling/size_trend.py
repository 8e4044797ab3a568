r"""The trend of update dispersion in client size, pooled over every drawn client.

Whether strata by size beat FedAvg depends on how the dispersion :math:`d_i = \|\Delta_i -
T\|^2` of a client's update about the target grows with its size :math:`n_i` (more data: more
local steps, larger updates; or a mean over more examples: less noise). Per-stratum trackers
learn that one size bin at a time, and the bins of the few large clients, which carry most of
FedAvg's variance (weights :math:`p_i^2`), get few draws. :class:`SizeTrend` pools every drawn
client instead: the log-linear model

.. math::  \log \hat d_{ti} = a_t + b \log n_i + e_{ti}

with a free level :math:`a_t` per round (updates shrink as training goes) and one slope
:math:`b`, fitted by least squares within rounds (round-centred sums, each round's sums
decayed by a forgetting factor like the trackers'):
:math:`\hat b = S_{xy} / S_{xx}`, :math:`\widehat{\mathrm{se}}^2 = s^2\, S^{(2)}_{xx} /
S_{xx}^2` with :math:`s^2` the weighted residual variance and :math:`S^{(2)}_{xx}` the sum with
squared weights.

:meth:`SizeTrend.saving_lower` turns the slope into a scale-free bound on what πps in size
strata saves over FedAvg. With :math:`d_i = e^{a} n_i^{b}`, FedAvg's MSE is
:math:`c \sum_i p_i^2 d_i` (:func:`~fedstrat.sampling.baseline.fedavg_factor` ``c``) and the
stratified πps MSE is :math:`\sum_h (P_h^2 / m_h)\, \sigma_h^2 \le \sum_h (P_h / m_h)
\sum_{i \in h} p_i d_i` (the within-bin spread about the bin's mean is at most the mean
dispersion about :math:`T`), so

.. math::  R(b) = 1 - \frac{\sum_i (P_{h(i)} / m_{h(i)})\, p_i n_i^{b}}{c \sum_i p_i^2 n_i^{b}}

is a lower bound on the relative saving that does not depend on the level :math:`a`; the
reported bound is the least :math:`R` over :math:`b \in [\hat b - z\,\mathrm{se}, \hat b +
z\,\mathrm{se}]`. (Pure sampling noise, :math:`d_i \propto 1/n_i`, gives :math:`R \approx 0`:
then size strata and FedAvg are alike.)
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .baseline import fedavg_factor

#: points of the slope interval at which the saving bound is evaluated
_GRID = 9


class SizeTrend:
    """Pooled within-round regression of ``log d`` on ``log n`` (module doc).

    ``min_obs``: effective number of observations (Kish, over rounds) before
    :meth:`slope_band` answers."""

    def __init__(self, min_obs: float = 12.0) -> None:
        self.min_obs = float(min_obs)
        # decayed sums over rounds of the round-centred Sxx, Sxy, Syy, observations k_t - 1,
        # and with squared weights Sxx, k_t - 1
        self._s = np.zeros(6)
        self.rounds_ = 0

    def decay(self, factor: float) -> None:
        """Forget past rounds by ``factor`` in (0, 1] (squared-weight sums by its square)."""
        f = float(factor)
        if not 0.0 < f <= 1.0:
            raise ValueError("factor must be in (0, 1]")
        self._s[:4] *= f
        self._s[4:] *= f * f

    def add_round(self, sizes: np.ndarray, dispersion: np.ndarray) -> None:
        """One round's drawn clients: sizes ``n_i`` and estimated dispersions ``d_i`` (the
        non-positive or non-finite are skipped; a round with fewer than 2 distinct sizes
        adds nothing)."""
        n = np.asarray(sizes, dtype=np.float64).reshape(-1)
        d = np.asarray(dispersion, dtype=np.float64).reshape(-1)
        ok = (n > 0) & (d > 0) & np.isfinite(n) & np.isfinite(d)
        if ok.sum() < 2:
            return
        x, y = np.log(n[ok]), np.log(d[ok])
        x, y = x - x.mean(), y - y.mean()
        sxx = float(x @ x)
        if sxx <= 0.0:
            return
        k = float(len(x) - 1)
        self._s += (sxx, float(x @ y), float(y @ y), k, sxx, k)
        self.rounds_ += 1

    @property
    def n_obs(self) -> float:
        """Kish effective number of within-round degrees of freedom behind the fit."""
        k, k2 = self._s[3], self._s[5]
        return float(k * k / k2) if k2 > 0 else 0.0

    def slope_band(self, z: float = 1.2816) -> tuple[float, float, float] | None:
        """``(b_hat, b_hat - z se, b_hat + z se)``; None before ``min_obs`` effective
        observations."""
        sxx, sxy, syy, k, sxx2, _ = self._s
        if self.n_obs < self.min_obs or sxx <= 0 or k <= 1.0:
            return None
        b = sxy / sxx
        s2 = max(syy - b * sxy, 0.0) / (k - 1.0)
        se = math.sqrt(s2 * sxx2) / sxx
        return b, b - z * se, b + z * se

    @staticmethod
    def relative_saving(
        b: float, p: np.ndarray, sizes: np.ndarray, share: np.ndarray, m: int
    ) -> float:
        """:math:`R(b)` of the module doc; ``share[i] = P_{h(i)} / m_{h(i)}``, ``p`` the
        size shares, ``m`` the clients per round."""
        x = np.log(np.asarray(sizes, dtype=np.float64))
        g = np.exp(b * (x - x.max()))  # n_i^b up to a common factor
        fed = fedavg_factor(len(p), int(m)) * float((p * p) @ g)
        return 1.0 - float((share * p) @ g) / fed if fed > 0 else -math.inf

    def saving_lower(
        self, p: np.ndarray, sizes: np.ndarray, share: np.ndarray, m: int, z: float = 1.2816,
        counts: np.ndarray | None = None,
    ) -> float | None:
        """Least :math:`R(b)` over the slope's band (module doc); None without enough
        evidence. The grid's :math:`n_i^{b_k}` by one ratio: ``g_{k+1} = g_k n_i^{db}`` (two
        ``exp`` passes over the clients instead of one per grid point).

        ``counts``: the entries are classes of ``counts[k]`` clients each with the same
        ``p``, size and share (e.g. the distinct sizes of a population whose strata are size
        bins); both sums of :math:`R(b)` are then sums over classes weighted by ``counts``
        (the same value, in one pass over the classes instead of the clients)."""
        band = self.slope_band(z)
        if band is None:
            return None
        x = np.log(np.asarray(sizes, dtype=np.float64))  # once for the whole grid
        x -= x.max()
        w = np.stack([p * p, share * p])  # FedAvg's and the strata's weights, one product
        n = len(p)
        if counts is not None:
            w *= counts
            n = int(np.sum(counts))
        c = fedavg_factor(n, int(m))
        grid = np.linspace(band[1], band[2], _GRID)
        g, ratio = np.exp(grid[0] * x), np.exp((grid[1] - grid[0]) * x)
        least = math.inf
        for k in range(_GRID):
            if k:
                g *= ratio
            fed, strat = w @ g
            least = min(least, 1.0 - float(strat) / (c * float(fed)) if fed > 0 else -math.inf)
        return least

    def to_json(self) -> dict[str, Any]:
        """Checkpoint form."""
        return {"sums": self._s.tolist(), "rounds": self.rounds_, "min_obs": self.min_obs}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> SizeTrend:
        """A trend restored from :meth:`to_json`."""
        out = cls(float(state["min_obs"]))
        out._s = np.asarray(state["sums"], dtype=np.float64)
        out.rounds_ = int(state["rounds"])
        return out
