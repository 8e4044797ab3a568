"""The :class:`Selection` result type and the :class:`Sampler` protocol."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np


@dataclass(frozen=True)
class Selection:
    """Clients chosen for one round and their aggregation weights.

    The aggregate ``sum_{i in s} weights[i] * Delta_i`` is design-unbiased for the
    full-participation target ``T = sum_i p_i Delta_i`` whenever ``unbiased`` is True.

    Attributes:
        ids: int64 selected client indices in ``[0, N)``, distinct (multiplicity of
            with-replacement designs is folded into ``weights``).
        inclusion: float64 ``pi_i = P(i in s)``; for with-replacement designs (multinomial,
            clustered) the expected number of draws ``E[#draws of i]``.
        weights: float64 aggregation weights ``w_i``.
        strata: int64 stratum of each selected client, or None.
        allocation: int64 ``m_h`` per stratum, or None.
        unbiased: False for biased-by-design samplers (Power-of-Choice).
    """

    ids: np.ndarray
    inclusion: np.ndarray
    weights: np.ndarray
    strata: np.ndarray | None = None
    allocation: np.ndarray | None = None
    unbiased: bool = True

    def __post_init__(self) -> None:
        n = len(self.ids)
        if len(self.inclusion) != n or len(self.weights) != n:
            raise ValueError("ids, inclusion and weights must have the same length")
        if self.strata is not None and len(self.strata) != n:
            raise ValueError("strata must have the same length as ids")

    def __len__(self) -> int:
        return len(self.ids)

    def aggregate(self, updates: np.ndarray) -> np.ndarray:
        """Return ``sum_{i in s} w_i Delta_i`` for ``updates`` indexed by client id (N, ...)."""
        upd = np.asarray(updates, dtype=np.float64)
        return np.tensordot(self.weights, upd[self.ids], axes=(0, 0))


@runtime_checkable
class Sampler(Protocol):
    """A client-selection design. ``rng=None`` uses the sampler's own seeded Generator."""

    n_clients: int
    m: int

    def sample(self, rng: np.random.Generator | None = None) -> Selection:
        """Draw one round's selection."""
        ...
