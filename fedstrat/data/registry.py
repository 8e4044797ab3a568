"""Dataset registry: :func:`load_dataset` by name, :func:`list_datasets`."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any

from fedstrat.data.base import Dataset
from fedstrat.data.ctr import load_criteo, load_movielens1m, load_movielens100k
from fedstrat.data.info import DATASET_INFO, DATASETS, dataset_info
from fedstrat.data.synthetic import load_synthetic
from fedstrat.data.table import load_table_dataset
from fedstrat.data.vision import load_cifar10, load_digits, load_idx_dataset, load_mnist5k

# name -> loader; what each name means (task, files, description) is in fedstrat.data.info.
_LOADERS: dict[str, Callable[..., Dataset]] = {
    "mnist5k": load_mnist5k,
    "digits": load_digits,
    "movielens-100k": load_movielens100k,
    "synthetic": load_synthetic,
    "mnist": functools.partial(load_idx_dataset, "mnist"),
    "fashion-mnist": functools.partial(load_idx_dataset, "fashion-mnist"),
    "cifar10": load_cifar10,
    "movielens-1m": load_movielens1m,
    "criteo": load_criteo,
    "table": load_table_dataset,
}
if set(_LOADERS) != set(DATASETS):  # pragma: no cover - a programming error, caught on import
    raise RuntimeError(f"loaders {sorted(_LOADERS)} do not match fedstrat.data.info {DATASETS}")


def list_datasets(local_only: bool | None = None) -> list[str]:
    """Registered dataset names. ``local_only=False``: only the embedded (offline) ones;
    ``True``: only those that read user-provided files; None: all."""
    return [
        n for n in DATASETS if local_only is None or DATASET_INFO[n].local_files == local_only
    ]


def describe_datasets() -> dict[str, str]:
    """Name -> one-line description (with "[local files]" for the file-based loaders)."""
    return {
        n: i.description + (" [local files]" if i.local_files else "")
        for n, i in DATASET_INFO.items()
    }


#: loader keyword <- run-config key, per dataset (sizes of the generated data)
_RUN_OPTIONS: dict[str, dict[str, str]] = {
    "synthetic": {
        "samples": "synthetic-samples",
        "features": "synthetic-features",
        "classes": "synthetic-classes",
    },
}


def run_options(name: str, config: Mapping[str, Any]) -> dict[str, Any]:
    """Loader keywords of dataset ``name`` that come from run-config keys in ``config``
    (``synthetic-samples`` or ``synthetic_samples`` -> ``samples`` for ``"synthetic"``); keys
    that are absent keep the loader's defaults, other datasets get ``{}``."""
    out: dict[str, Any] = {}
    for kw, key in _RUN_OPTIONS.get(name, {}).items():
        for spelling in (key, key.replace("-", "_")):
            if spelling in config:
                out[kw] = config[spelling]
                break
    return out


def load_dataset(
    name: str,
    root: str | None = None,
    seed: int = 0,
    *,
    data: str = "",
    schema: str = "",
    split: str = "",
    **kw: Any,
) -> Dataset:
    """Load dataset ``name`` (see :func:`list_datasets`).

    ``root``: data folder for the local-file datasets (default ``$FEDSTRAT_DATA``; ignored by
    the embedded ones). ``seed``: train/test split seed. ``data`` / ``schema``: the file and
    schema TOML of ``"table"``; ``split``: ``"random"`` or ``"temporal"`` (empty = the
    loader's default); all three are run-config keys and only passed on when non-empty.
    ``kw``: loader options, e.g. ``normalize`` (vision), ``hashing``/``hash_buckets``
    (MovieLens), ``max_rows`` (Criteo, table), ``test_fraction``. Raises ``ValueError`` for an
    unknown name or option and :class:`~fedstrat.data.DataError` for missing or corrupt files.
    """
    local = dataset_info(name).local_files  # ValueError for an unknown name
    kw.update({k: v for k, v in (("data", data), ("schema", schema), ("split", split)) if v})
    loader = _LOADERS[name]
    params = inspect.signature(loader).parameters
    unknown = sorted(set(kw) - set(params))
    if unknown:
        allowed = sorted(set(params) - {"root", "seed"})
        raise ValueError(f"dataset {name!r} does not take option(s) {unknown}; it takes: {allowed}")
    if local:
        return loader(root=root, seed=seed, **kw)
    return loader(seed=seed, **kw)
