"""Strata, stratification by label histograms or update sketches, LDP histograms, sketches."""

from __future__ import annotations

import warnings
from functools import lru_cache

import numpy as np

from ._validate import as_count
from .sketch import count_sketch

__all__ = [
    "Strata",
    "stratify_by_histograms",
    "stratify_by_sketches",
    "privatize_histogram",
    "sketch_update",
    "SKETCH_METHODS",
]


class Strata:
    """A partition of ``N`` clients into ``H`` non-empty strata labelled ``0..H-1``."""

    def __init__(self, labels: np.ndarray | list) -> None:
        lab = np.asarray(labels)
        if lab.ndim != 1 or lab.size == 0:
            raise ValueError("labels must be a non-empty 1-D array")
        if not np.issubdtype(lab.dtype, np.integer):
            if not np.all(np.isfinite(lab)) or not np.all(lab == np.round(lab)):
                raise ValueError("labels must be integers")
        lab = lab.astype(np.int64)
        if lab.min() != 0:
            raise ValueError("labels must start at 0")
        h = int(lab.max()) + 1
        sizes = np.bincount(lab, minlength=h)
        if np.any(sizes == 0):
            empty = np.flatnonzero(sizes == 0).tolist()
            raise ValueError(f"labels must be contiguous 0..H-1; empty strata {empty}")
        self.labels: np.ndarray = lab
        self.labels.setflags(write=False)
        self.sizes: np.ndarray = sizes.astype(np.int64)
        # a stable sort is unique; numpy radix-sorts 16-bit keys (~10x faster at 100k clients)
        key = lab.astype(np.int16) if h <= np.iinfo(np.int16).max else lab
        order = np.argsort(key, kind="stable")
        self._members = np.split(order, np.cumsum(sizes)[:-1])

    @property
    def n_strata(self) -> int:
        """Number of strata ``H``."""
        return len(self.sizes)

    @property
    def n_clients(self) -> int:
        """Number of clients ``N``."""
        return len(self.labels)

    def members(self, h: int) -> np.ndarray:
        """Sorted client ids in stratum ``h``."""
        if not 0 <= h < self.n_strata:
            raise ValueError(f"stratum {h} out of range 0..{self.n_strata - 1}")
        return self._members[h]

    def masses(self, sizes: np.ndarray | list) -> np.ndarray:
        """Per-stratum mass ``P_h = sum_{i in h} p_i`` for client sizes ``n_i``."""
        sz = np.asarray(sizes, dtype=np.float64)
        if sz.shape != self.labels.shape:
            raise ValueError("sizes must have one entry per client")
        return np.bincount(self.labels, weights=sz, minlength=self.n_strata) / sz.sum()

    @classmethod
    def from_labels(cls, labels: np.ndarray | list) -> Strata:
        """Build strata from arbitrary integer labels, relabelled to ``0..H-1`` in sorted order."""
        _, inv = np.unique(np.asarray(labels), return_inverse=True)
        return cls(inv.reshape(-1))

    def merge_small(self, min_size: int, features: np.ndarray | None = None) -> Strata:
        """Merge strata with fewer than ``min_size`` clients into another stratum.

        The smallest offending stratum is merged into the stratum with the nearest centroid
        (Euclidean, on ``features``) or, without features, into the largest stratum; repeated
        until every stratum has at least ``min_size`` clients or one stratum is left.
        """
        min_size = as_count(min_size, "min_size")
        lab = self.labels.copy()
        feats = None if features is None else np.asarray(features, dtype=np.float64)
        if feats is not None and feats.shape[0] != len(lab):
            raise ValueError("features must have one row per client")
        while True:
            uniq, counts = np.unique(lab, return_counts=True)
            if len(uniq) <= 1 or counts.min() >= min_size:
                break
            small = uniq[np.argmin(counts)]
            others = uniq[uniq != small]
            if feats is None:
                target = others[np.argmax(counts[uniq != small])]
            else:
                c0 = feats[lab == small].mean(axis=0)
                d = [np.linalg.norm(feats[lab == o].mean(axis=0) - c0) for o in others]
                target = others[int(np.argmin(d))]
            lab[lab == small] = target
        return Strata.from_labels(lab)

    def __repr__(self) -> str:
        return f"Strata(n_strata={self.n_strata}, sizes={self.sizes.tolist()})"


def _kmeans_strata_impl(
    x: np.ndarray,
    n_strata: int | None,
    seed: int,
    pca_components: int | None,
    max_strata: int | None,
    fit_sample: int | None,
) -> Strata:
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA
    from sklearn.metrics import silhouette_score

    n = x.shape[0]
    if max_strata is not None:
        as_count(max_strata, "max_strata")
    if fit_sample is not None:
        as_count(fit_sample, "fit_sample", minimum=2)
    rng = np.random.default_rng(seed)
    if fit_sample is not None and n > fit_sample:
        fit_idx = np.sort(rng.choice(n, size=fit_sample, replace=False))
    else:
        fit_idx = np.arange(n)
    if pca_components is not None:
        pca_components = as_count(pca_components, "pca_components")
        k_pca = min(pca_components, x.shape[1], len(fit_idx))
        pca = PCA(n_components=k_pca, random_state=seed).fit(x[fit_idx])
        x = pca.transform(x)
    xf = x[fit_idx]
    n_fit = xf.shape[0]
    k_cap = max_strata or 20  # most strata tried when n_strata is None
    n_distinct = _distinct_rows(np.round(xf, 12), k_cap if n_strata is None else n_strata)

    def fit(k: int) -> tuple[object, np.ndarray]:
        km = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(xf)
        return km, km.labels_

    if n_strata is None:
        k_max = min(k_cap, n_fit - 1, n_distinct)
        if k_max < 2:
            return Strata(np.zeros(n, dtype=np.int64))
        best = None
        sil_n = min(n_fit, 2000)
        for k in range(2, k_max + 1):
            km, lab = fit(k)
            if len(np.unique(lab)) < 2:
                continue
            s = silhouette_score(xf, lab, sample_size=sil_n, random_state=seed)
            if best is None or s > best[0]:
                best = (s, km)
        if best is None:
            return Strata(np.zeros(n, dtype=np.int64))
        model = best[1]
    else:
        n_strata = as_count(n_strata, "n_strata")
        if n_strata > n:
            raise ValueError(f"n_strata={n_strata} exceeds the number of clients {n}")
        if n_strata == 1:
            return Strata(np.zeros(n, dtype=np.int64))
        k = min(n_strata, n_distinct)
        if k < n_strata:
            warnings.warn(
                f"only {n_distinct} distinct feature rows; using {k} strata instead of {n_strata}",
                stacklevel=3,
            )
        model, _ = fit(k)
    labels = model.predict(x)  # type: ignore[attr-defined]
    return Strata.from_labels(labels)


def _distinct_rows(x: np.ndarray, enough: object) -> int:
    """Number of distinct rows of ``x`` when below ``enough`` (all that k-means' number of
    strata needs), else a number ``>= enough``: the first ``4 enough`` rows often have that many
    (one sort of all rows per candidate was ~50 ms at 20,000 rows)."""
    if isinstance(enough, (int, np.integer)) and enough >= 1:
        found = len(np.unique(x[:4 * int(enough)], axis=0))
        if found >= enough:
            return found
    return len(np.unique(x, axis=0))


def _kmeans_strata(
    x: np.ndarray,
    n_strata: int | None,
    seed: int,
    pca_components: int | None,
    max_strata: int | None,
    fit_sample: int | None,
) -> Strata:
    # Single-threaded BLAS/OpenMP: on small inputs and shared machines, multi-threaded k-means
    # is up to 20x slower through oversubscription (measured on the 2-core dev machine).
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        return _kmeans_strata_impl(x, n_strata, seed, pca_components, max_strata, fit_sample)


def stratify_by_histograms(
    histograms: np.ndarray,
    n_strata: int | None = None,
    seed: int = 0,
    pca_components: int | None = None,
    max_strata: int | None = None,
    fit_sample: int | None = 100_000,
) -> Strata:
    """Cluster clients by their label distribution with k-means.

    Rows are normalised to proportions ``h_i / sum(h_i)``, optionally projected with PCA, and
    clustered by ``KMeans(n_init=10, random_state=seed)``. With ``n_strata=None`` the number of
    strata is the ``k in 2..min(max_strata or 20, N-1)`` with the largest silhouette score
    (computed on at most 2000 points); if no k is possible a single stratum is returned. For more
    than ``fit_sample`` clients, k-means is fit on a random subsample and all clients are then
    assigned to the nearest centre. Labels are relabelled to ``0..H-1`` (empty clusters dropped).
    """
    h = np.asarray(histograms, dtype=np.float64)
    if h.ndim != 2 or h.shape[0] == 0:
        raise ValueError("histograms must be a 2-D array (N clients, C classes)")
    if not np.all(np.isfinite(h)) or np.any(h < 0):
        raise ValueError("histograms must be finite and non-negative")
    tot = h.sum(axis=1, keepdims=True)
    if np.any(tot <= 0):
        raise ValueError("every client histogram must have a positive total")
    return _kmeans_strata(h / tot, n_strata, seed, pca_components, max_strata, fit_sample)


def stratify_by_sketches(
    sketches: np.ndarray,
    n_strata: int | None = None,
    seed: int = 0,
    normalize: bool = False,
    pca_components: int | None = None,
    max_strata: int | None = None,
    fit_sample: int | None = 100_000,
) -> Strata:
    """Cluster clients by update sketches with k-means (same rules as histograms).

    With ``normalize=True`` each row is scaled to unit Euclidean norm (direction only).
    """
    s = np.asarray(sketches, dtype=np.float64)
    if s.ndim != 2 or s.shape[0] == 0:
        raise ValueError("sketches must be a 2-D array (N clients, dim)")
    if not np.all(np.isfinite(s)):
        raise ValueError("sketches contain NaN or inf")
    if normalize:
        nrm = np.linalg.norm(s, axis=1, keepdims=True)
        s = s / np.where(nrm > 0, nrm, 1.0)
    return _kmeans_strata(s, n_strata, seed, pca_components, max_strata, fit_sample)


def privatize_histogram(
    counts: np.ndarray | list, epsilon: float, rng: np.random.Generator | None = None
) -> np.ndarray:
    """Release a label histogram under epsilon-local differential privacy.

    Adds independent two-sided geometric (discrete Laplace) noise ``Z`` with
    ``P(Z = k) = (1 - a) / (1 + a) * a^|k|``, ``a = exp(-epsilon)`` (scale ``1/epsilon``) to
    every count, then clips at 0 (post-processing). Neighbouring datasets: the client's data
    with one example added or removed, which changes the histogram by 1 in L1 norm
    (sensitivity 1) -> ``epsilon``-DP. (Changing one example's label has sensitivity 2, i.e.
    ``2 epsilon``-DP.) ``epsilon = inf`` returns the counts unchanged (no privacy).

    Raises:
        ValueError: ``epsilon <= 0`` or NaN, negative or non-integer counts.
    """
    c = np.asarray(counts, dtype=np.float64)
    if c.ndim != 1 or not np.all(np.isfinite(c)) or np.any(c < 0) or np.any(c != np.round(c)):
        raise ValueError("counts must be a 1-D array of non-negative integers")
    eps = float(epsilon)
    if np.isnan(eps) or eps <= 0:
        raise ValueError(f"epsilon must be > 0 (or inf for no privacy), got {epsilon}")
    out = c.astype(np.int64)
    if np.isinf(eps):
        return out
    if rng is None:
        rng = np.random.default_rng()
    prob = -np.expm1(-eps)  # 1 - exp(-eps), success prob of the geometric
    noise = (rng.geometric(prob, size=c.shape) - 1) - (rng.geometric(prob, size=c.shape) - 1)
    return np.maximum(out + noise, 0).astype(np.int64)


_CHUNK = 65_536
_CACHE_LIMIT = 1 << 23  # cache projection matrices up to 8M entries (64 MiB float64)


def _projection_chunk(d0: int, d1: int, dim: int, seed: int, chunk: int) -> np.ndarray:
    rng = np.random.default_rng([seed, dim, chunk])
    return rng.standard_normal((d1 - d0, dim), dtype=np.float32)


@lru_cache(maxsize=8)
def _projection(d: int, dim: int, seed: int) -> np.ndarray:
    parts = [
        _projection_chunk(s, min(s + _CHUNK, d), dim, seed, c)
        for c, s in enumerate(range(0, d, _CHUNK))
    ]
    mat = np.concatenate(parts, axis=0).astype(np.float64)
    mat.setflags(write=False)
    return mat


SKETCH_METHODS: tuple[str, ...] = ("gaussian", "countsketch")


def sketch_update(
    vector: np.ndarray, dim: int = 64, seed: int = 0, method: str = "gaussian"
) -> np.ndarray:
    """Random sketch of an update with ``E <s(v), s(w)> = <v, w>``; float64 (dim,) or (B, dim).

    ``method="gaussian"`` (default): ``s = G^T v / sqrt(dim)``, ``G_{jk} ~ N(0, 1)`` iid
    (Johnson-Lindenstrauss, ``Var ||s||^2 = 2 ||v||^4 / dim``). ``G`` is generated in row chunks
    from ``(seed, dim, chunk)``, so the same ``(D, dim, seed)`` gives the same matrix on every
    call site; matrices up to 8M entries are cached (larger ones are regenerated chunk by chunk
    on every call: O(D dim) work). ``method="countsketch"``: :func:`fedstrat.sampling.count_sketch`,
    O(D) work, ``Var ||s||^2 <= 2 ||v||^4 / dim``. ``vector`` may be 1-D (D,) or a batch (B, D).
    """
    if method == "countsketch":
        return count_sketch(vector, dim, seed)
    if method != "gaussian":
        raise ValueError(f"unknown sketch method {method!r}; choose one of: gaussian, countsketch")
    dim = as_count(dim, "dim")
    v = np.asarray(vector, dtype=np.float64)
    if v.ndim not in (1, 2) or v.shape[-1] == 0:
        raise ValueError("vector must be a non-empty 1-D array or a 2-D batch")
    if not np.all(np.isfinite(v)):
        raise ValueError("vector contains NaN or inf")
    d = v.shape[-1]
    scale = 1.0 / np.sqrt(dim)
    if d * dim <= _CACHE_LIMIT:
        return (v @ _projection(d, dim, int(seed))) * scale
    out = np.zeros(v.shape[:-1] + (dim,), dtype=np.float64)
    for c, s in enumerate(range(0, d, _CHUNK)):
        e = min(s + _CHUNK, d)
        out += v[..., s:e] @ _projection_chunk(s, e, dim, int(seed), c).astype(np.float64)
    return out * scale


def check_allocation(strata: Strata, allocation: np.ndarray | list) -> np.ndarray:
    """``allocation`` as int64 ``m_h``, one per stratum with ``1 <= m_h <= N_h`` (else
    ValueError)."""
    alloc = np.asarray(allocation)
    if alloc.shape != (strata.n_strata,) or np.any(alloc != np.round(alloc)):
        raise ValueError(f"allocation must be {strata.n_strata} integers")
    alloc = alloc.astype(np.int64)
    if np.any(alloc < 1) or np.any(alloc > strata.sizes):
        raise ValueError("allocation must satisfy 1 <= m_h <= N_h")
    return alloc
