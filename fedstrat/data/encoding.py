"""Encoding of categorical CTR columns: vocabulary ids, stable hashing, out-of-vocabulary slots.

Shared by the built-in CTR loaders (:mod:`fedstrat.data.ctr`) and the table loader
(:mod:`fedstrat.data.table`). Everything is vectorised numpy / pandas.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping

import numpy as np
import pandas as pd


def stable_hash(field: str, values: np.ndarray, buckets: int) -> np.ndarray:
    """``crc32(f"{field}={value}") mod buckets`` for each value (int64)."""
    if buckets < 1:
        raise ValueError(f"hash_buckets must be >= 1, got {buckets} for field {field!r}")
    v = np.asarray(values)
    if v.dtype.kind != "O":
        v = v.astype(str)
    # factorize first, so only distinct values are turned into strings and hashed
    inv, uniq = pd.factorize(v, use_na_sentinel=False)
    codes = np.fromiter(
        (zlib.crc32(f"{field}={u}".encode()) % buckets for u in map(str, uniq)),
        dtype=np.int64,
        count=len(uniq),
    )
    return codes[inv]


def encode_fields(
    table: pd.DataFrame,
    fields: list[str],
    hashing: bool = False,
    hash_buckets: int | Mapping[str, int] = 4096,
    fixed_dims: Mapping[str, int] | None = None,
) -> tuple[np.ndarray, list[int]]:
    """Encode string-valued columns to int64 ids: vocabulary (default) or stable hashing.

    Columns in ``fixed_dims`` already hold ids in ``[0, dim)`` and are passed through.
    Returns ``(x (N, F) int64, field_dims)``.
    """
    fixed_dims = dict(fixed_dims or {})
    cols, dims = [], []
    for f in fields:
        if f in fixed_dims:
            cols.append(table[f].to_numpy(dtype=np.int64))
            dims.append(int(fixed_dims[f]))
            continue
        values = table[f].astype(str).to_numpy()
        if hashing:
            if isinstance(hash_buckets, Mapping) and f not in hash_buckets:
                raise ValueError(
                    f"hash_buckets has no entry for field {f!r}; it needs all of {fields}"
                )
            b = hash_buckets[f] if isinstance(hash_buckets, Mapping) else hash_buckets
            cols.append(stable_hash(f, values, int(b)))
            dims.append(int(b))
        else:
            codes, size = vocab_ids(values)
            cols.append(codes)
            dims.append(size)
    x = np.stack(cols, axis=1) if cols else np.empty((len(table), 0), np.int64)
    return x, dims


def vocab_ids(values: np.ndarray | pd.Series) -> tuple[np.ndarray, int]:
    """Vocabulary encoding: distinct values sorted (numerically if all are integers, else as
    strings) get ids ``0..V-1``. Returns ``(ids int64, V)``."""
    v = np.asarray(values)
    if v.dtype.kind != "O" or not all(isinstance(u, str) for u in pd.unique(v)):
        v = v.astype(str)
    codes, uniq = pd.factorize(v)
    uniq = np.asarray(uniq, dtype=str)
    num = pd.to_numeric(pd.Series(uniq), errors="coerce").to_numpy(dtype=np.float64)
    if len(uniq) and not np.isnan(num).any() and (num == np.floor(num)).all():
        order = np.argsort(num, kind="stable")
    else:
        order = np.argsort(uniq, kind="stable")
    rank = np.empty(len(uniq), dtype=np.int64)
    rank[order] = np.arange(len(uniq))
    return rank[codes], len(uniq)


def temporal_split(
    users: np.ndarray, timestamps: np.ndarray, test_fraction: float
) -> tuple[np.ndarray, np.ndarray]:
    """Per-user temporal split: each user's latest ``round(test_fraction * n_u)`` rows are test."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    order = np.lexsort((np.arange(len(users)), timestamps, users))
    u_sorted = users[order]
    starts = np.r_[0, np.flatnonzero(np.diff(u_sorted)) + 1]
    counts = np.diff(np.r_[starts, len(users)])
    rank = np.arange(len(users)) - np.repeat(starts, counts)
    n_test = np.round(test_fraction * counts).astype(np.int64)
    is_test = rank >= np.repeat(counts - n_test, counts)
    test_mask = np.zeros(len(users), dtype=bool)
    test_mask[order[is_test]] = True
    return np.flatnonzero(~test_mask), np.flatnonzero(test_mask)


def add_oov_slot(
    x_train: np.ndarray,
    x_test: np.ndarray,
    field_dims: list[int],
    fields: list[int],
    min_count: int = 1,
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Give each field ``f`` in ``fields`` an "unknown" id ``OOV_f = field_dims[f]``.

    An id seen fewer than ``min_count`` times in ``x_train[:, f]`` is unknown: in the test rows
    (and, for ``min_count > 1``, in the train rows too) it becomes ``OOV_f``; ``field_dims[f]``
    grows by one. Ids keep their values otherwise. Returns new ``(x_train, x_test, field_dims)``.
    """
    if min_count < 1:
        raise ValueError(f"min_count must be >= 1, got {min_count}")
    x_train, x_test = np.array(x_train, dtype=np.int64), np.array(x_test, dtype=np.int64)
    dims = [int(d) for d in field_dims]
    for f in fields:
        v = dims[f]
        known = np.bincount(x_train[:, f], minlength=v) >= min_count
        x_test[:, f] = np.where(known[x_test[:, f]], x_test[:, f], v)
        if min_count > 1:
            x_train[:, f] = np.where(known[x_train[:, f]], x_train[:, f], v)
        dims[f] = v + 1
    return x_train, x_test, dims
