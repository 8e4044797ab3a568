"""Partitioning a dataset's train split over federated clients.

Schemes (all deterministic given ``seed``; every train row goes to exactly one client):

* ``iid``: random permutation split into ``num_clients`` near-equal parts.
* ``shard``: McMahan et al. (2017) pathological non-IID: rows sorted by label (random order
  within a label), cut into ``num_clients * shards_per_client`` near-equal shards; each client
  gets ``shards_per_client`` random shards.
* ``dirichlet``: for each class c, proportions ``q_c ~ Dir(alpha 1_N)`` over clients and the
  class-c rows are cut at ``cumsum(q_c)``. Client sizes vary a lot on purpose (stratified
  selection gains from size variation); they are NOT equalised. Clients below ``min_size`` are
  fixed by redrawing (up to 20 draws, keeping the best) and then by moving random rows from the
  largest clients.
* ``natural``: one client per distinct value of ``ds.keys[key]`` (e.g. "user", "occupation"),
  ordered by key value. With ``num_clients`` smaller than the number of groups, whole groups are
  merged: groups are shuffled by ``seed`` and dealt round-robin into ``num_clients`` clients.
  ``num_clients=None`` or ``0`` means one client per group; more clients than groups is an error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from fedstrat.data.base import Dataset

SCHEMES = ("iid", "shard", "dirichlet", "natural")
_DIRICHLET_DRAWS = 20


@dataclass(eq=False)
class Partition:
    """Client index sets into ``ds.x`` with their label histograms.

    ``label_histograms[i, c]`` = number of rows of class c at client i (CTR: c in {0, 1});
    ``sizes[i] = n_i = label_histograms[i].sum()``.
    """

    indices: list[np.ndarray]
    label_histograms: np.ndarray
    sizes: np.ndarray
    scheme: str = ""

    @property
    def num_clients(self) -> int:
        """Number of clients N."""
        return len(self.indices)

    def client_data(self, ds: Dataset, cid: int) -> tuple[np.ndarray, np.ndarray]:
        """``(x, y)`` train rows of client ``cid``."""
        if not 0 <= cid < self.num_clients:
            raise ValueError(f"client id {cid} out of range [0, {self.num_clients})")
        idx = self.indices[cid]
        return ds.x[idx], ds.y[idx]


def make_partition(
    indices: list[np.ndarray], labels: np.ndarray, num_classes: int, scheme: str = ""
) -> Partition:
    """Build a :class:`Partition` (sorted int64 indices, histograms, sizes) from index sets."""
    idx = [np.sort(np.asarray(i, dtype=np.int64)) for i in indices]
    hist = np.zeros((len(idx), num_classes), dtype=np.int64)
    for k, i in enumerate(idx):
        hist[k] = np.bincount(labels[i], minlength=num_classes)[:num_classes]
    sizes = np.array([len(i) for i in idx], dtype=np.int64)
    return Partition(indices=idx, label_histograms=hist, sizes=sizes, scheme=scheme)


def _check_capacity(n: int, num_clients: int, min_size: int) -> None:
    if num_clients * min_size > n:
        raise ValueError(
            f"cannot give {num_clients} clients at least min_size={min_size} rows each from "
            f"{n} train rows"
        )


def _iid(n: int, num_clients: int, rng: np.random.Generator) -> list[np.ndarray]:
    return list(np.array_split(rng.permutation(n), num_clients))


def _shard(
    labels: np.ndarray, num_clients: int, shards_per_client: int, rng: np.random.Generator
) -> list[np.ndarray]:
    n_shards = num_clients * shards_per_client
    if n_shards > len(labels):
        raise ValueError(
            f"{num_clients} clients x {shards_per_client} shards = {n_shards} shards exceeds "
            f"{len(labels)} train rows"
        )
    perm = rng.permutation(len(labels))
    order = perm[np.argsort(labels[perm], kind="stable")]
    shards = np.array_split(order, n_shards)
    shard_ids = rng.permutation(n_shards).reshape(num_clients, shards_per_client)
    return [np.concatenate([shards[s] for s in row]) for row in shard_ids]


def _dirichlet_draw(
    labels: np.ndarray,
    num_classes: int,
    num_clients: int,
    alpha: float,
    rng: np.random.Generator,
) -> list[np.ndarray]:
    parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
    for c in range(num_classes):
        idx = rng.permutation(np.flatnonzero(labels == c))
        if len(idx) == 0:
            continue
        q = rng.dirichlet(np.full(num_clients, alpha))
        cuts = np.round(np.cumsum(q)[:-1] * len(idx)).astype(np.int64)
        for k, piece in enumerate(np.split(idx, cuts)):
            parts[k].append(piece)
    return [np.concatenate(p) if p else np.empty(0, np.int64) for p in parts]


def _dirichlet(
    labels: np.ndarray,
    num_classes: int,
    num_clients: int,
    alpha: float,
    min_size: int,
    rng: np.random.Generator,
) -> list[np.ndarray]:
    best: list[np.ndarray] | None = None
    best_deficit = None
    for _ in range(_DIRICHLET_DRAWS):
        parts = _dirichlet_draw(labels, num_classes, num_clients, alpha, rng)
        deficit = sum(max(0, min_size - len(p)) for p in parts)
        if best_deficit is None or deficit < best_deficit:
            best, best_deficit = parts, deficit
        if deficit == 0:
            return parts
    assert best is not None
    # Move random rows from the currently largest client to each client below min_size.
    parts = [rng.permutation(p) for p in best]
    for k in range(num_clients):
        while len(parts[k]) < min_size:
            donor = int(np.argmax([len(p) for p in parts]))
            take = min(min_size - len(parts[k]), len(parts[donor]) - min_size)
            parts[k] = np.concatenate([parts[k], parts[donor][:take]])
            parts[donor] = parts[donor][take:]
    return parts


def _natural(
    ds: Dataset, key: str | None, num_clients: int | None, rng: np.random.Generator
) -> list[np.ndarray]:
    if not ds.keys:
        raise ValueError(f"dataset {ds.name!r} has no natural partition keys")
    if key is None:
        if len(ds.keys) != 1:
            raise ValueError(
                f"natural partition of {ds.name!r} needs key=...; one of: {', '.join(ds.keys)}"
            )
        key = next(iter(ds.keys))
    if key not in ds.keys:
        raise ValueError(
            f"dataset {ds.name!r} has no natural key {key!r}; choose one of: {', '.join(ds.keys)}"
        )
    groups, inv = np.unique(ds.keys[key], return_inverse=True)
    inv = inv.reshape(-1)
    order = np.argsort(inv, kind="stable")
    bounds = np.r_[0, np.cumsum(np.bincount(inv, minlength=len(groups)))]
    per_group = [order[bounds[g] : bounds[g + 1]] for g in range(len(groups))]
    if not num_clients or num_clients == len(groups):
        return per_group
    if num_clients > len(groups):
        raise ValueError(
            f"natural partition by {key!r} has only {len(groups)} groups; num_clients="
            f"{num_clients} is too many (at most {len(groups)}: one client per group)"
        )
    dealt = rng.permutation(len(groups))
    return [
        np.concatenate([per_group[g] for g in dealt[k::num_clients]]) for k in range(num_clients)
    ]


def partition_dataset(
    ds: Dataset,
    scheme: str,
    num_clients: int | None,
    alpha: float = 0.1,
    shards_per_client: int = 2,
    key: str | None = None,
    seed: int = 0,
    min_size: int = 1,
) -> Partition:
    """Split ``ds``'s train rows over clients by ``scheme`` (see the module docstring).

    Deterministic given ``seed``. Every train row lands in exactly one client, and every client
    has at least ``min_size`` rows (``min_size=0`` allows empty clients; for ``natural`` every
    client is non-empty by construction).
    """
    if scheme not in SCHEMES:
        raise ValueError(
            f"unknown partition scheme {scheme!r}; choose one of: {', '.join(SCHEMES)}"
        )
    if min_size < 0:
        raise ValueError(f"min_size must be >= 0, got {min_size}")
    labels = ds.labels
    n = len(labels)
    rng = np.random.default_rng(seed)
    if scheme == "natural":
        if num_clients is not None and num_clients < 0:
            raise ValueError(f"num_clients must be >= 0 for natural, got {num_clients}")
        parts = _natural(ds, key, num_clients, rng)
        return make_partition(parts, labels, ds.num_classes, scheme)
    if num_clients is None or num_clients < 1:
        raise ValueError(f"num_clients must be >= 1, got {num_clients}")
    _check_capacity(n, num_clients, min_size)
    if scheme == "iid":
        parts = _iid(n, num_clients, rng)
    elif scheme == "shard":
        if shards_per_client < 1:
            raise ValueError(f"shards_per_client must be >= 1, got {shards_per_client}")
        parts = _shard(labels, num_clients, shards_per_client, rng)
        smallest = min(len(q) for q in parts)
        if smallest < min_size:
            raise ValueError(
                f"shard: a client got {smallest} rows < min_size={min_size} (shards of "
                f"{len(labels) // (num_clients * shards_per_client)} rows); use fewer clients "
                "or a smaller min_size"
            )
    else:
        if not alpha > 0:
            raise ValueError(f"alpha must be > 0, got {alpha}")
        parts = _dirichlet(labels, ds.num_classes, num_clients, alpha, min_size, rng)
    return make_partition(parts, labels, ds.num_classes, scheme)


def partition_summary(p: Partition) -> dict[str, Any]:
    """Size and label-skew statistics of a partition.

    ``size_cv`` = std(n_i) / mean(n_i) (population std). ``mean_classes`` = mean number of
    classes with a non-zero count per client. ``mean_tv`` = mean over non-empty clients of the
    total-variation distance ``0.5 * sum_c |P_i(c) - P(c)|`` between the client's label
    distribution and the global one (0 = IID, 1 = disjoint supports).
    """
    sizes = p.sizes.astype(np.float64)
    hist = p.label_histograms.astype(np.float64)
    total = hist.sum()
    glob = hist.sum(axis=0) / total if total > 0 else np.zeros(hist.shape[1])
    nonempty = sizes > 0
    local = hist[nonempty] / sizes[nonempty, None]
    tv = 0.5 * np.abs(local - glob).sum(axis=1)
    mean = float(sizes.mean()) if len(sizes) else 0.0
    return {
        "scheme": p.scheme,
        "num_clients": int(p.num_clients),
        "num_examples": int(sizes.sum()),
        "num_classes": int(hist.shape[1]),
        "empty_clients": int((~nonempty).sum()),
        "size_min": int(sizes.min()) if len(sizes) else 0,
        "size_median": float(np.median(sizes)) if len(sizes) else 0.0,
        "size_max": int(sizes.max()) if len(sizes) else 0,
        "size_mean": mean,
        "size_cv": float(sizes.std() / mean) if mean > 0 else 0.0,
        "mean_classes": float((hist > 0).sum(axis=1).mean()) if len(sizes) else 0.0,
        "mean_tv": float(tv.mean()) if len(tv) else 0.0,
    }


def format_summary(p: Partition | dict[str, Any]) -> str:
    """Human-readable multi-line summary of :func:`partition_summary` (for the CLI)."""
    s = p if isinstance(p, dict) else partition_summary(p)
    scheme = f" ({s['scheme']})" if s.get("scheme") else ""
    return "\n".join(
        [
            f"partition{scheme}: {s['num_clients']} clients, {s['num_examples']} examples, "
            f"{s['num_classes']} classes",
            f"  client size   min {s['size_min']}  median {s['size_median']:g}  "
            f"max {s['size_max']}  mean {s['size_mean']:.1f}  CV {s['size_cv']:.2f}",
            f"  label skew    {s['mean_classes']:.2f} classes per client, "
            f"mean TV distance from global {s['mean_tv']:.3f}",
        ]
        + ([f"  empty clients {s['empty_clients']}"] if s["empty_clients"] else [])
    )
