"""Client samplers: uniform, multinomial, stratified (srswor / pps), clustered, Power-of-Choice.

All samplers target ``T = sum_i p_i Delta_i`` with ``p_i = n_i / n``.
"""

from __future__ import annotations

import warnings

import numpy as np

from ._validate import as_count, as_sizes, as_updates, make_rng
from .selection import Sampler, Selection
from .strata import Strata, check_allocation

__all__ = [
    "UniformSampler",
    "MultinomialSampler",
    "StratifiedSampler",
    "ClusteredSampler",
    "PowerOfChoiceSampler",
    "pps_inclusion",
    "systematic_pps",
]


def _check_m(m: int, n: int) -> int:
    m = as_count(m, "m")
    if m > n:
        raise ValueError(f"m={m} exceeds the number of clients {n}")
    return m


class UniformSampler:
    """Simple random sampling without replacement (SRSWOR) of ``m`` of ``N`` clients.

    ``pi_i = m / N``, ``w_i = N p_i / m`` (Horvitz-Thompson), so
    ``E[sum_s w_i Delta_i] = T``; ``Var = N^2 (1 - m/N) S_y^2 / m`` with ``y_i = p_i Delta_i``.
    """

    def __init__(self, sizes: np.ndarray | list, m: int, seed: int = 0) -> None:
        self.sizes = as_sizes(sizes)
        self.p = self.sizes / self.sizes.sum()
        self.n_clients = len(self.sizes)
        self.m = _check_m(m, self.n_clients)
        self._rng = np.random.default_rng(seed)

    def sample(self, rng: np.random.Generator | None = None) -> Selection:
        g = make_rng(rng, self._rng)
        ids = np.sort(g.choice(self.n_clients, size=self.m, replace=False)).astype(np.int64)
        pi = self.m / self.n_clients
        return Selection(
            ids=ids,
            inclusion=np.full(self.m, pi),
            weights=self.p[ids] / pi,
        )


class SelfNormalisedSampler:
    """``sampler`` with its weights rescaled to sum to 1: the ratio (Hajek) estimator
    ``sum_s w_i Delta_i / sum_s w_i``; around :class:`UniformSampler` it is FedAvg
    (``w_i = p_i / sum_{j in s} p_j``). Biased (``unbiased=False``), its MSE to first order the
    design variance of ``Delta_i - T`` (:func:`fedstrat.sampling.baseline.fedavg_variance`)."""

    def __init__(self, sampler: Sampler) -> None:
        self.sampler = sampler
        self.n_clients = sampler.n_clients
        self.m = sampler.m

    def sample(self, rng: np.random.Generator | None = None) -> Selection:
        sel = self.sampler.sample(rng)
        w = np.asarray(sel.weights, dtype=np.float64)
        return Selection(ids=sel.ids, inclusion=sel.inclusion, weights=w / w.sum(),
                         strata=sel.strata, allocation=sel.allocation, unbiased=False)


class MultinomialSampler:
    """MD sampling (Li et al. 2020): ``m`` iid draws with ``P(i) = p_i``.

    Estimator ``(1/m) sum_draws Delta_i``; a client drawn ``c_i`` times gets ``w_i = c_i / m``,
    ids are distinct, so FEWER than ``m`` distinct clients may be selected. ``inclusion`` holds
    the expected number of draws ``m p_i``. ``Var = (1/m) sum_i p_i ||Delta_i - T||^2``.
    """

    def __init__(self, sizes: np.ndarray | list, m: int, seed: int = 0) -> None:
        self.sizes = as_sizes(sizes)
        self.p = self.sizes / self.sizes.sum()
        self.n_clients = len(self.sizes)
        self.m = as_count(m, "m")
        self._cdf = np.cumsum(self.p)
        self._cdf[-1] = 1.0
        self._rng = np.random.default_rng(seed)

    def sample(self, rng: np.random.Generator | None = None) -> Selection:
        g = make_rng(rng, self._rng)
        draws = np.searchsorted(self._cdf, g.random(self.m), side="right")
        ids, counts = np.unique(np.minimum(draws, self.n_clients - 1), return_counts=True)
        return Selection(
            ids=ids.astype(np.int64),
            inclusion=self.m * self.p[ids],
            weights=counts / self.m,
        )


def pps_inclusion(p: np.ndarray, m: int) -> np.ndarray:
    """Inclusion probabilities ``pi_i = min(1, c p_i)`` with ``sum pi_i = m`` (πps, certainty).

    Iteratively: units with ``m' p_i / P' >= 1`` are taken with certainty (``pi_i = 1``) and the
    remaining ``m' = m - #certain`` are spread proportionally to ``p`` over the rest.
    """
    p = np.asarray(p, dtype=np.float64)
    m = as_count(m, "m", minimum=0)
    if p.ndim != 1 or not np.isfinite(p).all() or (p < 0).any():
        raise ValueError("p must be a 1-D array of finite, non-negative values")
    if m > int(np.count_nonzero(p)):
        raise ValueError(f"cannot draw {m} distinct units with probability proportional to p "
                         f"from {int(np.count_nonzero(p))} units with p > 0")
    pi = np.zeros(len(p))
    certain = np.zeros(len(p), dtype=bool)
    while True:
        rest = ~certain
        m_rest = m - int(certain.sum())
        if m_rest == 0:
            break
        pi_rest = m_rest * p[rest] / p[rest].sum()
        over = pi_rest >= 1.0
        if not over.any():
            pi[rest] = pi_rest
            break
        idx = np.flatnonzero(rest)[over]
        certain[idx] = True
    pi[certain] = 1.0
    return pi


def systematic_pps(pi: np.ndarray, g: np.random.Generator) -> np.ndarray:
    """Randomized systematic πps: random order, then systematic sampling with random start.

    Given ``0 < pi_i < 1`` with integer sum ``k``, returns ``k`` distinct positions with
    ``P(i selected) = pi_i`` exactly.
    """
    total = float(pi.sum())
    k = int(round(total))
    if abs(total - k) > 1e-6 * max(1.0, total):
        raise ValueError(f"inclusion probabilities must sum to an integer, got {total:.12g}")
    if k == 0:
        return np.empty(0, dtype=np.int64)
    perm = g.permutation(len(pi))
    c = np.cumsum(pi[perm])
    c *= k / c[-1]
    pos = g.random() + np.arange(k)
    idx = np.minimum(np.searchsorted(c, pos, side="right"), len(pi) - 1)
    return perm[idx]


def single_pps(cum: np.ndarray, g: np.random.Generator) -> np.ndarray:
    """One position drawn with ``P(i) = pi_i`` from ``cum = cumsum(pi)`` (``sum pi = 1``, up
    to rounding): what :func:`systematic_pps` gives for ``k = 1`` (its random order does not
    change a single draw's distribution), without its ``O(N)`` permutation per call."""
    u = g.random() * cum[-1]
    return np.array([min(int(np.searchsorted(cum, u, side="right")), len(cum) - 1)])


class StratifiedSampler:
    """Stratified sampling with allocation ``m_h`` (``1 <= m_h <= N_h``) per stratum.

    design="srswor": SRSWOR of ``m_h`` in stratum ``h``; ``w_i = N_h p_i / m_h``.
    ``Var = sum_h N_h^2 (1 - m_h/N_h) S_{y,h}^2 / m_h``.

    design="pps": without-replacement probability-proportional-to-size in stratum ``h``:
    ``pi_i = m_h p_i / P_h`` (units that would exceed 1 are certainties, iterated), drawn by
    randomized systematic πps; Horvitz-Thompson ``w_i = p_i / pi_i`` (= ``P_h' / m_h'`` for
    non-certainty units). Exactly ``m = sum_h m_h`` distinct clients every round.
    """

    def __init__(
        self,
        sizes: np.ndarray | list,
        strata: Strata | np.ndarray | list,
        allocation: np.ndarray | list,
        design: str = "pps",
        seed: int = 0,
    ) -> None:
        self.sizes = as_sizes(sizes)
        self.p = self.sizes / self.sizes.sum()
        self.n_clients = len(self.sizes)
        self.strata = strata if isinstance(strata, Strata) else Strata(strata)
        if self.strata.n_clients != self.n_clients:
            raise ValueError("strata must label every client")
        alloc = check_allocation(self.strata, allocation)
        if design not in ("pps", "srswor"):
            raise ValueError(f"design must be 'pps' or 'srswor', got {design!r}")
        self.design = design
        self.allocation = alloc
        self.m = int(alloc.sum())
        self._rng = np.random.default_rng(seed)
        lab = self.strata.labels
        # Inclusion probabilities of every client (exact, by design).
        self.inclusion = np.empty(self.n_clients)
        self._certain: list[np.ndarray] = []
        self._random: list[np.ndarray] = []
        self._single: list[np.ndarray | None] = []  # cumulative pi of a one-draw stratum
        for h in range(self.strata.n_strata):
            mem = self.strata.members(h)
            if design == "srswor":
                self.inclusion[mem] = alloc[h] / len(mem)
            else:
                pi = pps_inclusion(self.p[mem], int(alloc[h]))
                self.inclusion[mem] = pi
                rnd = pi < 1.0
                self._certain.append(mem[~rnd])
                self._random.append(mem[rnd])
                one = rnd.any() and int((~rnd).sum()) == alloc[h] - 1  # certainties + 1 draw
                self._single.append(np.cumsum(pi[rnd]) if one else None)
        self.weights = self.p / self.inclusion
        self._labels = lab

    def sample(self, rng: np.random.Generator | None = None) -> Selection:
        g = make_rng(rng, self._rng)
        parts = []
        for h in range(self.strata.n_strata):
            if self.design == "srswor":
                mem = self.strata.members(h)
                parts.append(mem[g.choice(len(mem), size=int(self.allocation[h]), replace=False)])
            else:
                rnd, cum = self._random[h], self._single[h]
                parts.append(self._certain[h])
                if cum is not None:  # one random draw: P(i) = pi_i, O(log N_h)
                    parts.append(rnd[single_pps(cum, g)])
                elif len(rnd):
                    parts.append(rnd[systematic_pps(self.inclusion[rnd], g)])
        ids = np.sort(np.concatenate(parts)).astype(np.int64)
        return Selection(
            ids=ids,
            inclusion=self.inclusion[ids],
            weights=self.weights[ids],
            strata=self._labels[ids],
            allocation=self.allocation.copy(),
        )


class ClusteredSampler:
    """Clustered sampling (Fraboni et al., ICML 2021).

    Builds ``m`` distributions ``r_k`` over clients with ``sum_k r_{k,i} = m p_i`` and
    ``sum_i r_{k,i} = 1``, and draws one client independently from each ``r_k``; each draw has
    weight ``1/m``, so ``E = (1/m) sum_k sum_i r_{k,i} Delta_i = T`` (unbiased) and
    ``Var = (1/m^2) sum_k sum_i r_{k,i} ||Delta_i - mu_k||^2`` with ``mu_k = sum_i r_{k,i}
    Delta_i``.

    algorithm=1 (by sample size): clients sorted by ``n_i`` (descending) and their masses
    ``m p_i`` laid end to end on ``[0, m]``; ``r_k`` is the part lying in ``[k, k+1)`` (a
    client's mass may be split across consecutive distributions).

    algorithm=2 (by similarity): Ward hierarchical clustering (scipy) of ``updates``
    (representative gradients or sketches); clients are ordered by the dendrogram leaf order,
    in which each of the ``m`` Ward clusters is contiguous and similar clusters are adjacent,
    and masses are laid out as in algorithm 1. A cluster of mass ``M`` thus fills whole
    distributions, and clusters whose mass exceeds 1 are split across consecutive ones. Without
    ``updates`` it falls back to algorithm 1 with a warning. Ward linkage needs O(N^2) memory:
    pass low-dimensional sketches and keep N in the thousands.

    Because draws are independent, a client whose mass is split across two distributions can
    be drawn twice: multiplicity is folded into ``weights`` and fewer than ``m`` distinct ids
    may be returned. ``inclusion`` holds the expected number of draws ``m p_i``.
    """

    def __init__(
        self,
        sizes: np.ndarray | list,
        m: int,
        algorithm: int = 1,
        updates: np.ndarray | None = None,
        seed: int = 0,
    ) -> None:
        self.sizes = as_sizes(sizes)
        self.p = self.sizes / self.sizes.sum()
        self.n_clients = len(self.sizes)
        self.m = _check_m(m, self.n_clients)
        if algorithm not in (1, 2):
            raise ValueError(f"algorithm must be 1 or 2, got {algorithm!r}")
        if algorithm == 2 and updates is None:
            warnings.warn(
                "ClusteredSampler(algorithm=2) without updates: falling back to algorithm 1",
                stacklevel=2,
            )
            algorithm = 1
        self.algorithm = algorithm
        self._rng = np.random.default_rng(seed)
        if algorithm == 1:
            order = np.argsort(-self.sizes, kind="stable")
        else:
            from scipy.cluster.hierarchy import leaves_list, linkage

            upd = as_updates(updates, self.n_clients)  # type: ignore[arg-type]
            if self.n_clients == 1:
                order = np.zeros(1, dtype=np.int64)
            else:
                order = leaves_list(linkage(upd, method="ward"))
        self._build(order)

    def _build(self, order: np.ndarray) -> None:
        mass = self.m * self.p[order]
        end = np.cumsum(mass)
        end *= self.m / end[-1]
        snap = np.round(end)
        end = np.where(np.abs(end - snap) < 1e-9, snap, end)  # exact bucket boundaries
        start = np.concatenate([[0.0], end[:-1]])
        first = np.minimum(np.floor(start).astype(np.int64), self.m - 1)
        last = np.minimum(np.ceil(end).astype(np.int64) - 1, self.m - 1)
        last = np.maximum(last, first)
        span = last - first + 1
        rep = np.repeat(np.arange(len(order)), span)
        bucket = np.repeat(first, span) + (
            np.arange(span.sum()) - np.repeat(np.cumsum(span) - span, span)
        )
        lo = np.maximum(start[rep], bucket)
        hi = np.minimum(end[rep], bucket + 1.0)
        prob = hi - lo
        keep = prob > 0
        self._client = order[rep[keep]].astype(np.int64)
        self._bucket = bucket[keep]
        self._prob = prob[keep]
        self._cum = np.cumsum(self._prob)
        self._cum *= self.m / self._cum[-1]

    def distributions(self) -> np.ndarray:
        """Dense ``(m, N)`` matrix ``r_{k,i}`` (for inspection and tests)."""
        r = np.zeros((self.m, self.n_clients))
        np.add.at(r, (self._bucket, self._client), self._prob)
        return r

    def variance(self, updates: np.ndarray) -> float:
        """Exact variance ``(1/m^2) sum_k sum_i r_{k,i} ||Delta_i - mu_k||^2``."""
        upd = as_updates(updates, self.n_clients)
        r = self.distributions()
        mu = r @ upd
        second = r @ np.sum(upd * upd, axis=1)
        return float(np.sum(second - np.sum(mu * mu, axis=1)) / self.m**2)

    def sample(self, rng: np.random.Generator | None = None) -> Selection:
        g = make_rng(rng, self._rng)
        pos = np.arange(self.m) + g.random(self.m)
        idx = np.minimum(np.searchsorted(self._cum, pos, side="right"), len(self._cum) - 1)
        ids, counts = np.unique(self._client[idx], return_counts=True)
        return Selection(
            ids=ids.astype(np.int64),
            inclusion=self.m * self.p[ids],
            weights=counts / self.m,
        )


def default_poc_d(n_clients: int, m: int, d: int | None = None) -> int:
    """Power-of-Choice candidate-set size: ``min(N, d)``, with ``d = 2 m`` when not given
    (None or 0), the default of Cho et al. (2020)."""
    return min(int(n_clients), int(d) if d else 2 * int(m))


class PowerOfChoiceSampler:
    """Power-of-Choice (Cho et al. 2020). BIASED BY DESIGN (``unbiased=False``).

    Draws a candidate set of ``d`` distinct clients with probability ∝ ``p_i`` (successive
    sampling without replacement), then keeps the ``m`` candidates with the highest last known
    local loss (unknown losses count as +inf, so unseen clients are explored first; ties broken
    at random). Weights are FedAvg-style ``p_i / sum_{j in s} p_j``. ``inclusion`` is NaN (not
    available in closed form).
    """

    def __init__(self, sizes: np.ndarray | list, m: int, d: int, seed: int = 0) -> None:
        self.sizes = as_sizes(sizes)
        self.p = self.sizes / self.sizes.sum()
        self.n_clients = len(self.sizes)
        self.m = _check_m(m, self.n_clients)
        d = as_count(d, "d")
        if not self.m <= d <= self.n_clients:
            raise ValueError(f"d must satisfy m <= d <= N, got d={d}")
        self.d = d
        self.losses = np.full(self.n_clients, np.inf)
        self._rng = np.random.default_rng(seed)

    def set_losses(self, losses: np.ndarray | list, ids: np.ndarray | list | None = None) -> None:
        """Record last known local losses, for all clients or for ``ids`` only."""
        val = np.asarray(losses, dtype=np.float64)
        if np.any(np.isnan(val)):
            raise ValueError("losses contain NaN")
        if ids is None:
            if val.shape != (self.n_clients,):
                raise ValueError(f"losses must have shape ({self.n_clients},)")
            self.losses = val.copy()
        else:
            idx = np.asarray(ids, dtype=np.int64)
            if idx.shape != val.shape or np.any((idx < 0) | (idx >= self.n_clients)):
                raise ValueError("ids must be valid client indices matching losses")
            self.losses[idx] = val

    def sample(self, rng: np.random.Generator | None = None) -> Selection:
        g = make_rng(rng, self._rng)
        cand = g.choice(self.n_clients, size=self.d, replace=False, p=self.p)
        tiebreak = g.random(self.d)
        order = np.lexsort((tiebreak, -self.losses[cand]))
        ids = np.sort(cand[order[: self.m]]).astype(np.int64)
        w = self.p[ids] / self.p[ids].sum()
        return Selection(
            ids=ids,
            inclusion=np.full(self.m, np.nan),
            weights=w,
            unbiased=False,
        )
