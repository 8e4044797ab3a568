r"""FedAvg rounds drawn balanced: uniform inclusion, one client from each block of similar ones.

A FedAvg round keeps FedAvg's estimator (self-normalised weights) and, with
``balanced_fedavg`` (default), replaces the plain uniform draw by
:mod:`fedstrat.sampling.ordering`'s balanced draw: the nodes are ordered so that similar ones are
adjacent and cut into ``m`` blocks of ``floor(N/m)`` or ``ceil(N/m)`` nodes, one drawn
uniformly from each (stratified SRSWOR with proportional allocation; :math:`\pi_i = 1/N_h`,
``m/N`` when ``m`` divides ``N``). In expectation this is never worse than the uniform draw and
better wherever the order carries information about the updates (module doc there).

The order uses what the server knows before the draw, never the round's updates: the profiled
label histograms (as proportions), else the node's last update sketch, each group ordered on
its own (:func:`~fedstrat.sampling.ordering.similarity_order`) and concatenated, nodes with
neither last in the frame's order. Measured on IID MNIST-5k (equal sizes, 100 clients, 10 a
round; experiments section 4): FedAvg's MSE / the balanced draw's 1.08-1.10 with histograms.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fedstrat.sampling import Strata, StratifiedSampler
from fedstrat.sampling.ordering import block_labels, similarity_order

from .plan import PopulationFrame


class BalancedDraw:
    """The balanced sampler of a frame (module doc), cached while the nodes and the registry's
    histograms are unchanged and no node is ordered by its (changing) sketch."""

    def __init__(self) -> None:
        self._cache: tuple[Any, ...] | None = None
        #: the features the last order used: "histograms", "sketches", mixed or "none"
        self.basis_ = "none"

    def sampler(self, frame: PopulationFrame) -> StratifiedSampler:
        """Stratified SRSWOR, one draw in each of ``frame.m`` blocks of similar nodes."""
        reg = frame.registry
        key = (frame.key if frame.key is not None else tuple(frame.nodes),
               getattr(reg, "version", None), frame.m)
        c = self._cache
        if c is not None and c[0] == key and np.array_equal(c[1], frame.sizes):
            return c[2]
        order, basis, static = self._order(frame)
        self.basis_ = basis
        strata = Strata(block_labels(order, frame.m))
        smp = StratifiedSampler(frame.sizes, strata, np.ones(strata.n_strata, dtype=np.int64),
                                "srswor")
        self._cache = (key, frame.sizes, smp) if static else None
        return smp

    @staticmethod
    def _order(frame: PopulationFrame) -> tuple[np.ndarray, str, bool]:
        """(order of frame positions, basis, whether it depends on histograms alone)."""
        reg, nodes, m = frame.registry, frame.nodes, frame.m
        hist = getattr(reg, "histograms", {})
        sk = getattr(reg, "sketches", {})
        pos_h = [i for i, n in enumerate(nodes) if n in hist]
        pos_s = [i for i, n in enumerate(nodes) if n not in hist and n in sk]
        rest = [i for i, n in enumerate(nodes) if n not in hist and n not in sk]
        parts: list[np.ndarray] = []
        if pos_h:
            h = reg.histogram_matrix([nodes[i] for i in pos_h])
            h = h / np.maximum(h.sum(axis=1, keepdims=True), 1e-300)
            parts.append(np.asarray(pos_h)[similarity_order(h, m)])
        if pos_s:
            s = reg.sketch_matrix([nodes[i] for i in pos_s])
            parts.append(np.asarray(pos_s)[similarity_order(s, m)])
        parts.append(np.asarray(rest, dtype=np.int64))
        basis = ("histograms" if pos_h and not pos_s else "sketches" if pos_s and not pos_h
                 else "histograms+sketches" if pos_h else "none")
        return np.concatenate(parts).astype(np.int64), basis, not pos_s
