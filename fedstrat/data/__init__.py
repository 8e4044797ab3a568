"""Datasets and client partitions for fedstrat (numpy / pandas / scikit-learn only).

Embedded, offline: ``mnist5k`` (default), ``digits``, ``movielens-100k``. From local files
(``root=`` or ``$FEDSTRAT_DATA``): ``mnist``, ``fashion-mnist``, ``cifar10``, ``movielens-1m``,
``criteo``.
"""

from fedstrat.data.base import ENV_VAR, DataError, Dataset
from fedstrat.data.info import DATASETS, DatasetInfo, dataset_info
from fedstrat.data.partition import (
    SCHEMES,
    Partition,
    format_summary,
    make_partition,
    partition_dataset,
    partition_summary,
)

__all__ = [
    "DATASETS",
    "ENV_VAR",
    "SCHEMES",
    "DataError",
    "Dataset",
    "DatasetInfo",
    "dataset_info",
    "Partition",
    "describe_datasets",
    "format_summary",
    "list_datasets",
    "load_dataset",
    "make_partition",
    "partition_dataset",
    "partition_summary",
]

_REGISTRY_NAMES = ("describe_datasets", "list_datasets", "load_dataset")


def __getattr__(name: str) -> object:
    # The loaders (pandas for CTR) are imported on first use, so that the dataset metadata
    # (fedstrat.data.info) and the partitions stay cheap to import for the CLI and config.
    if name in _REGISTRY_NAMES:
        from fedstrat.data import registry

        return getattr(registry, name)
    raise AttributeError(f"module 'fedstrat.data' has no attribute {name!r}")
