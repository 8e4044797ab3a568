"""Core types of :mod:`fedstrat.data`: :class:`Dataset`, :class:`DataError`, data-folder lookup."""

from __future__ import annotations

import gzip
import importlib.util
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Literal

import numpy as np

ENV_VAR = "FEDSTRAT_DATA"


class DataError(ValueError):
    """A dataset file is missing or unreadable; the message says which file to put where."""


@dataclass(eq=False)
class Dataset:
    """A dataset with a train split (``x``, ``y``) and a held-out test split.

    Vision: ``x`` float32 ``(N, C, H, W)``, ``y`` int64 in ``[0, num_classes)``.
    CTR: ``x`` int64 ``(N, F)`` with ``0 <= x[:, f] < field_dims[f]``, ``y`` float32 in {0, 1},
    ``num_classes == 2``. ``keys`` maps a natural partition key (e.g. ``"user"``) to an int64
    group id per train row; ``keys_test`` the same for test rows.
    """

    name: str
    task: Literal["classification", "ctr"]
    x: np.ndarray
    y: np.ndarray
    num_classes: int
    x_test: np.ndarray
    y_test: np.ndarray
    field_dims: list[int] | None = None
    field_names: list[str] | None = None
    keys: dict[str, np.ndarray] = field(default_factory=dict)
    keys_test: dict[str, np.ndarray] = field(default_factory=dict)
    meta: dict[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.x) != len(self.y):
            raise ValueError(f"x has {len(self.x)} rows but y has {len(self.y)}")
        if len(self.x_test) != len(self.y_test):
            raise ValueError(
                f"x_test has {len(self.x_test)} rows but y_test has {len(self.y_test)}"
            )
        for k, v in self.keys.items():
            if len(v) != len(self.x):
                raise ValueError(f"key {k!r} has {len(v)} entries, expected {len(self.x)}")

    @property
    def num_train(self) -> int:
        """Number of train rows."""
        return int(len(self.y))

    @property
    def num_test(self) -> int:
        """Number of test rows."""
        return int(len(self.y_test))

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one example: (C, H, W) for images, (F,) for CTR rows."""
        return tuple(int(d) for d in self.x.shape[1:])

    @property
    def labels(self) -> np.ndarray:
        """Train labels as int64 class ids (CTR clicks become 0/1)."""
        return self.y.astype(np.int64, copy=False)

    def __repr__(self) -> str:
        extra = f", fields={self.field_names}" if self.field_names else ""
        return (
            f"Dataset({self.name!r}, task={self.task!r}, train={self.num_train}, "
            f"test={self.num_test}, x={tuple(self.x.shape)} {self.x.dtype}, "
            f"classes={self.num_classes}{extra}, keys={sorted(self.keys)})"
        )


def resolve_root(root: str | os.PathLike[str] | None) -> Path | None:
    """The data folder: ``root`` if given (non-empty), else ``$FEDSTRAT_DATA``, else None."""
    if root is not None and str(root) != "":
        return Path(root).expanduser()
    env = os.environ.get(ENV_VAR, "")
    return Path(env).expanduser() if env else None


def _where_hint(root: Path | None) -> str:
    if root is None:
        return (
            f"no data folder was given: pass root=... (CLI: --data-root) or set the "
            f"environment variable {ENV_VAR}"
        )
    return f"data folder: {root} (from root=... or the environment variable {ENV_VAR})"


def find_file(
    dataset: str,
    root: Path | None,
    subdirs: Sequence[str],
    names: Sequence[str],
    describe: str,
) -> Path:
    """First existing ``root/<subdir>/<name>``; otherwise raise :class:`DataError` saying where.

    ``subdirs`` may contain ``""`` for ``root`` itself. ``names`` are alternative file names.
    """
    if root is None:
        raise DataError(
            f"{dataset}: cannot find {describe}: {_where_hint(root)}. Put {names[0]} into "
            f"<data folder>/{subdirs[0] or '.'}/."
        )
    tried = []
    for sub in subdirs:
        for name in names:
            p = root / sub / name if sub else root / name
            tried.append(str(p))
            if p.is_file():
                return p
    raise DataError(
        f"{dataset}: {describe} not found. Put {' or '.join(names)} into "
        f"{root / subdirs[0] if subdirs[0] else root}/ ({_where_hint(root)}). "
        f"Looked for: {', '.join(tried)}"
    )


def open_maybe_gzip(path: Path) -> IO[bytes]:
    """Open ``path`` for binary reading, transparently un-gzipping (by magic bytes)."""
    with open(path, "rb") as fh:
        magic = fh.read(2)
    if magic == b"\x1f\x8b":
        return gzip.open(path, "rb")
    return open(path, "rb")


def package_dir(package: str) -> Path | None:
    """Folder of an installed package, located with ``find_spec`` WITHOUT importing it."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if spec.submodule_search_locations:
        return Path(list(spec.submodule_search_locations)[0])
    if spec.origin:
        return Path(spec.origin).parent
    return None


def stratified_split(
    y: np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic stratified train/test index split (sorted index arrays).

    Within each class c with n_c rows, ``round(test_fraction * n_c)`` rows (seeded choice) go to
    test, so class proportions agree between the splits up to rounding.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    rng = np.random.default_rng(seed)
    test_parts = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        k = int(round(test_fraction * len(idx)))
        test_parts.append(rng.choice(idx, size=k, replace=False))
    test = np.sort(np.concatenate(test_parts)) if test_parts else np.empty(0, np.int64)
    mask = np.ones(len(y), dtype=bool)
    mask[test] = False
    return np.flatnonzero(mask), test.astype(np.int64)


def random_split(n: int, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic uniformly random train/test index split: ``round(test_fraction * n)`` test."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    k = int(round(test_fraction * n))
    return np.sort(perm[k:]), np.sort(perm[:k])
