"""Datasets and client partitions for fedstrat (numpy / pandas / scikit-learn only).

Embedded, offline: ``mnist5k`` (default), ``digits``, ``movielens-100k``. From local files
(``root=`` or ``$FEDSTRAT_DATA``): ``mnist``, ``fashion-mnist``, ``cifar10``, ``movielens-1m``,
``criteo``.
"""

from fedstrat.data.base import ENV_VAR, DataError, Dataset
from fedstrat.data.partition import (
    SCHEMES,
    Partition,
    format_summary,
    make_partition,
    partition_dataset,
    partition_summary,
)
from fedstrat.data.registry import describe_datasets, list_datasets, load_dataset

__all__ = [
    "ENV_VAR",
    "SCHEMES",
    "DataError",
    "Dataset",
    "Partition",
    "describe_datasets",
    "format_summary",
    "list_datasets",
    "load_dataset",
    "make_partition",
    "partition_dataset",
    "partition_summary",
]
