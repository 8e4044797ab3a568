"""Shared input validation helpers (internal)."""

from __future__ import annotations

import math

import numpy as np

_MIN, _MAX = np.minimum.reduce, np.maximum.reduce


def all_at_least(arr: np.ndarray, low: float, strict: bool = False) -> bool:
    """True when every value of ``arr`` is finite and ``>= low`` (``> low`` if ``strict``):
    one min and one max (NaN fails both comparisons), the fast path before the checks that
    say which condition failed."""
    if arr.size == 0:
        return True
    lo = _MIN(arr, axis=None)
    return bool((lo > low if strict else lo >= low) and _MAX(arr, axis=None) < math.inf)


def as_sizes(sizes: np.ndarray | list, name: str = "sizes") -> np.ndarray:
    """Return ``sizes`` as a 1-D float64 array of finite, strictly positive values."""
    arr = np.asarray(sizes, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array, got shape {arr.shape}")
    if all_at_least(arr, 0.0, strict=True):
        return arr
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or inf")
    if np.any(arr <= 0):
        raise ValueError(f"{name} must be strictly positive")
    return arr


def as_nonneg(values: np.ndarray | list, name: str) -> np.ndarray:
    """Return ``values`` as a 1-D float64 array of finite, non-negative values."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if all_at_least(arr, 0.0):
        return arr
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or inf")
    if np.any(arr < 0):
        raise ValueError(f"{name} must be non-negative")
    return arr


def as_count(value: int, name: str, minimum: int = 1) -> int:
    """Validate an integer count ``>= minimum``."""
    try:
        whole = not isinstance(value, bool) and int(value) == value
    except (TypeError, ValueError, OverflowError):  # None, NaN, inf, text
        whole = False
    if not whole:
        raise ValueError(f"{name} must be an integer, got {value!r}")
    value = int(value)
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def as_updates(updates: np.ndarray, n: int) -> np.ndarray:
    """Return updates as a 2-D float64 array with ``n`` rows (1-D input = scalar updates)."""
    arr = np.asarray(updates, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2 or arr.shape[0] != n:
        raise ValueError(f"updates must have shape ({n}, dim), got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError("updates contain NaN or inf")
    return arr


def make_rng(rng: np.random.Generator | None, default: np.random.Generator) -> np.random.Generator:
    """Return ``rng`` if given, else the sampler's own generator."""
    if rng is None:
        return default
    if not isinstance(rng, np.random.Generator):
        raise ValueError("rng must be a numpy.random.Generator or None")
    return rng
