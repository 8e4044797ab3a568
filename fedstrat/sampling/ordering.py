r"""Balanced uniform draws: FedAvg's inclusion probabilities, spread over similar-client blocks.

FedAvg draws ``m`` of ``N`` clients uniformly (SRSWOR, :math:`\pi_i = m/N`). Sorting the clients
so that similar ones are adjacent and cutting the order into ``m`` consecutive blocks of
:math:`\lfloor N/m \rfloor` or :math:`\lceil N/m \rceil` clients, one uniform draw per block,
keeps :math:`\pi_i = 1/N_h \approx m/N` (exactly ``m/N`` when ``m`` divides ``N``) and is
stratified sampling with proportional allocation (Cochran, *Sampling Techniques*, 5.6). For the
linearised residuals :math:`z_i` of the ratio estimator, with ``K = N/m``,

.. math::  V_{\mathrm{blocks}} - V_{\mathrm{SRS}} = \frac{N (K - 1)}{N - m}\,
           \big((m - 1) S_z^2 - K \textstyle\sum_h (\bar z_h - \bar z)^2\big)

so the blocks are never worse than SRS unless their means differ LESS than those of random
blocks (expected between sum :math:`(m-1) S_z^2`): an order that puts similar clients together
(any informative feature) can only help in expectation, a random order changes nothing.

:func:`similarity_order` orders feature rows: Ward's hierarchical clustering leaf order for up
to :data:`WARD_MAX` rows (scipy), recursive bisection along the principal direction (by power
iteration) beyond (:math:`O(N d \log m)`: cells of one block each, whose inner order does not
matter). :func:`block_labels` cuts an order into the ``m`` blocks (stratum labels for
:class:`~fedstrat.sampling.StratifiedSampler` with one ``srswor`` draw per stratum).
"""

from __future__ import annotations

import numpy as np

#: rows up to which Ward's leaf order is used (its condensed distances: ~16 MB at 2,048)
WARD_MAX = 2048


def _direction(y: np.ndarray, iterations: int = 4) -> np.ndarray:
    """Approximate principal direction of the centred rows ``y``: a few power iterations
    ``v <- Y^T (Y v)`` from the coordinates' spreads (``O(n d)`` each, no ``d x d`` or SVD)."""
    v = y.std(axis=0)
    for _ in range(iterations):
        w = y.T @ (y @ v)
        norm = float(np.linalg.norm(w))
        if norm == 0.0:
            break
        v = w / norm
    return v


def _bisect(x: np.ndarray, idx: np.ndarray, blocks: int, out: list[np.ndarray]) -> None:
    """Append ``idx`` ordered by recursive splits along the principal direction, each cell of
    ``b`` blocks cut into ``floor(b/2)`` and ``ceil(b/2)`` blocks' worth of rows (cells then
    line up with the blocks; inside a block the order does not matter)."""
    if blocks <= 1 or len(idx) <= 2:
        out.append(idx)
        return
    y = x[idx] - x[idx].mean(axis=0)
    o = idx[np.argsort(y @ _direction(y), kind="stable")]
    b1 = blocks // 2
    cut = int(round(len(o) * b1 / blocks))
    _bisect(x, o[:cut], b1, out)
    _bisect(x, o[cut:], blocks - b1, out)


def similarity_order(features: np.ndarray, m: int = 1) -> np.ndarray:
    """A permutation of the rows of ``features`` (N, d) that puts similar rows next to each
    other (module doc); ``m`` the number of blocks it will be cut into (beyond
    :data:`WARD_MAX` rows the bisection makes ``m`` cells, one per block). Deterministic."""
    x = np.asarray(features, dtype=np.float64)
    n = len(x)
    if n <= 2 or x.ndim != 2 or not np.any(np.ptp(x, axis=0) > 0):
        return np.arange(n, dtype=np.int64)
    if n <= WARD_MAX:
        from scipy.cluster.hierarchy import leaves_list, linkage

        return leaves_list(linkage(x, method="ward")).astype(np.int64)
    out: list[np.ndarray] = []
    _bisect(x, np.arange(n, dtype=np.int64), max(int(m), 1), out)
    return np.concatenate(out)


def block_labels(order: np.ndarray, m: int) -> np.ndarray:
    """Block of each client when ``order`` (a permutation of ``range(N)``) is cut into ``m``
    consecutive blocks of ``floor(N/m)`` or ``ceil(N/m)`` clients (int64, by client index)."""
    order = np.asarray(order, dtype=np.int64)
    n = len(order)
    if not 1 <= m <= n:
        raise ValueError(f"m must be in 1..{n}, got {m}")
    labels = np.empty(n, dtype=np.int64)
    labels[order] = (np.arange(n, dtype=np.int64) * int(m)) // n
    return labels
