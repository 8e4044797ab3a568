"""Click-through-rate (CTR) datasets: MovieLens-100k (embedded), MovieLens-1M and Criteo (local).

Every CTR dataset is a table of categorical fields encoded as int64 ids ``x[:, f]`` in
``[0, field_dims[f])`` and a float32 click label.

Encoding. By default each field's vocabulary is built from the whole file (train and test):
the sorted distinct values (numeric order for integer-valued fields) get ids ``0..V-1``. A shared
vocabulary is fine for simulation, where one process builds it; a real deployment has none, so
``hashing=True`` maps a value ``v`` of field ``f`` to ``crc32(f"{f}={v}") mod B_f`` (stable
across processes and machines, unlike Python's ``hash``) with ``B_f = hash_buckets`` (an int for
all fields or a per-field dict). Natural partition keys always use exact vocabulary ids.

Unknown ids. With a vocabulary, each field gets one extra "unknown" id ``V`` (so
``field_dims[f] = V + 1``): a test value never seen in the train split maps to it instead of an
untrained row of its own (:func:`~fedstrat.data.encoding.add_oov_slot`). Hashed fields have none.
"""

from __future__ import annotations

import functools
import io
import itertools
import zipfile
import zlib
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from fedstrat.data.base import (
    DataError,
    Dataset,
    find_file,
    open_maybe_gzip,
    package_dir,
    random_split,
    resolve_root,
)
from fedstrat.data.encoding import (  # noqa: F401  (re-exported: the public encoders)
    add_oov_slot,
    encode_fields,
    stable_hash,
    temporal_split,
    vocab_ids,
)

MOVIELENS_FIELDS = ["user", "item", "gender", "age", "occupation", "zip", "genre", "year"]
MOVIELENS_KEYS = ("user", "occupation", "zip")
ML100K_FILES = ("ml-100k.inter", "ml-100k.user", "ml-100k.item")


# ----------------------------------------------------------------------------- keys
def _group_ids(values: pd.Series) -> np.ndarray:
    """Exact group ids (vocabulary ids of the raw values), independent of hashing."""
    return vocab_ids(values)[0]


def age_bucket(age: np.ndarray) -> np.ndarray:
    """MovieLens-1M age groups: <18, 18-24, 25-34, 35-44, 45-49, 50-55, 56+ (as strings)."""
    edges = np.array([18, 25, 35, 45, 50, 56])
    names = np.array(["<18", "18-24", "25-34", "35-44", "45-49", "50-55", "56+"])
    return names[np.searchsorted(edges, np.asarray(age, dtype=np.int64), side="right")]


def year_bucket(year: pd.Series) -> np.ndarray:
    """Release decade ("1990s"; "<1940" for older; "unknown" when not a year)."""
    y = pd.to_numeric(year, errors="coerce").to_numpy()
    out = np.full(len(y), "unknown", dtype=object)
    ok = ~np.isnan(y)
    dec = (y[ok] // 10 * 10).astype(int)
    out[ok] = np.where(dec < 1940, "<1940", np.char.add(dec.astype(str), "s"))
    return out.astype(str)


_ENCODED: dict[tuple[int, bool, object], tuple[pd.DataFrame, tuple]] = {}


def _encode_movielens(
    table: pd.DataFrame, hashing: bool, hash_buckets: int | Mapping[str, int]
) -> tuple[np.ndarray, np.ndarray, list[int], dict[str, np.ndarray]]:
    """Label, encoded fields and natural keys of a (cached) table; memoised per table object."""
    buckets_key = (
        tuple(sorted(hash_buckets.items())) if isinstance(hash_buckets, Mapping) else hash_buckets
    )
    ck = (id(table), hashing, buckets_key if hashing else None)
    hit = _ENCODED.get(ck)
    if hit is not None and hit[0] is table:
        return hit[1]
    y_all = (table["rating"].to_numpy(dtype=np.float64) >= 4).astype(np.float32)
    x_all, dims = encode_fields(table, MOVIELENS_FIELDS, hashing, hash_buckets)
    keys_all = {k: _group_ids(table[k]) for k in MOVIELENS_KEYS}
    for a in (y_all, x_all, *keys_all.values()):
        a.setflags(write=False)
    out = (y_all, x_all, dims, keys_all)
    if len(_ENCODED) >= 8:
        _ENCODED.clear()
    _ENCODED[ck] = (table, out)
    return out


def _build_movielens(
    name: str,
    table: pd.DataFrame,
    seed: int,
    hashing: bool,
    hash_buckets: int | Mapping[str, int],
    split: str,
    test_fraction: float,
    meta: dict[str, object],
) -> Dataset:
    """Shared by both MovieLens loaders. ``table`` has the raw fields, rating, timestamp."""
    y_all, x_all, dims, keys_all = _encode_movielens(table, hashing, hash_buckets)
    if split == "random":
        tr, te = random_split(len(table), test_fraction, seed)
    elif split == "temporal":
        tr, te = temporal_split(
            keys_all["user"], table["timestamp"].to_numpy(dtype=np.int64), test_fraction
        )
    else:
        raise ValueError(f"split must be 'random' or 'temporal', got {split!r}")
    x_tr, x_te = x_all[tr], x_all[te]
    if not hashing:
        x_tr, x_te, dims = add_oov_slot(x_tr, x_te, dims, list(range(len(dims))))
    return Dataset(
        name=name,
        task="ctr",
        x=x_tr,
        y=y_all[tr],
        num_classes=2,
        x_test=x_te,
        y_test=y_all[te],
        field_dims=list(dims),
        field_names=list(MOVIELENS_FIELDS),
        keys={k: v[tr] for k, v in keys_all.items()},
        keys_test={k: v[te] for k, v in keys_all.items()},
        meta={
            **meta,
            "split": split,
            "split_seed": seed,
            "hashing": hashing,
            "oov": not hashing,
            "label": "rating >= 4",
        },
    )


def _join_movielens(
    name: str,
    ratings: pd.DataFrame,
    users: pd.DataFrame,
    item_id: pd.Series,
    genre: pd.Series,
    year: pd.Series,
) -> pd.DataFrame:
    """One row per rating with the raw MovieLens fields (strings), rating and timestamp.

    ``ratings``: user_id, item_id, rating, timestamp; ``users``: user_id, gender, age,
    occupation, zip_code; items given as aligned columns (id, first genre, release year).
    Per-user and per-item attributes are derived on the small tables, then joined.
    """
    try:
        age = age_bucket(users["age"].astype(int).to_numpy())
        rating = ratings["rating"].astype(float).to_numpy()
        ts = ratings["timestamp"].astype(float).astype(np.int64).to_numpy()
    except ValueError as exc:
        raise DataError(f"{name}: non-numeric rating, timestamp or age ({exc})") from exc
    u = pd.DataFrame(
        {
            "user": users["user_id"].to_numpy(),
            "gender": users["gender"].to_numpy(),
            "age": age,
            "occupation": users["occupation"].to_numpy(),
            "zip": users["zip_code"].str[:1].to_numpy(),
        }
    )
    i = pd.DataFrame(
        {"item": item_id.to_numpy(), "genre": genre.to_numpy(), "year": year_bucket(year)}
    )
    r = pd.DataFrame({"user": ratings["user_id"].to_numpy(), "item": ratings["item_id"].to_numpy()})
    t = r.merge(u, on="user", how="left").merge(i, on="item", how="left")
    if t[["gender", "genre"]].isna().any().any():
        raise DataError(f"{name}: ratings refer to users or items missing from the files")
    t = t[MOVIELENS_FIELDS]
    t["rating"] = rating
    t["timestamp"] = ts
    return t


# ----------------------------------------------------------------------------- MovieLens-100k
def movielens100k_dir() -> Path:
    """``recbole/dataset_example/ml-100k`` of the installed recbole wheel (not imported)."""
    pkg = package_dir("recbole")
    if pkg is None:
        raise DataError(
            "movielens-100k: the recbole wheel is not installed; it ships the data "
            "(pip install --no-deps recbole==1.2.1)"
        )
    folder = pkg / "dataset_example" / "ml-100k"
    for f in ML100K_FILES:
        if not (folder / f).is_file():
            raise DataError(
                f"movielens-100k: {folder / f} is missing; reinstall recbole "
                "(pip install --no-deps --force-reinstall recbole==1.2.1)"
            )
    return folder


def _read_atomic(path: Path, columns: list[str]) -> pd.DataFrame:
    """Read a RecBole atomic file (tab-separated, header ``name:type``), keep ``columns``."""
    try:
        df = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, quoting=3)
    except Exception as exc:  # noqa: BLE001
        raise DataError(f"movielens-100k: cannot parse {path}: {exc}") from exc
    df.columns = [c.split(":")[0] for c in df.columns]
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DataError(f"movielens-100k: {path} lacks columns {missing}")
    return df[columns]


@functools.lru_cache(maxsize=1)
def _ml100k_table() -> pd.DataFrame:
    folder = movielens100k_dir()
    inter = _read_atomic(folder / "ml-100k.inter", ["user_id", "item_id", "rating", "timestamp"])
    users = _read_atomic(
        folder / "ml-100k.user", ["user_id", "age", "gender", "occupation", "zip_code"]
    )
    items = _read_atomic(folder / "ml-100k.item", ["item_id", "release_year", "class"])
    return _join_movielens(
        "movielens-100k",
        inter,
        users,
        items["item_id"],
        items["class"].str.split(" ").str[0],
        items["release_year"],
    )


def movielens100k_frame() -> pd.DataFrame:
    """A copy of the raw joined MovieLens-100k table :func:`load_movielens100k` encodes: one row
    per rating (file order) with the string fields ``MOVIELENS_FIELDS``, ``rating`` and
    ``timestamp`` (e.g. to export it to CSV for :mod:`fedstrat.data.table`)."""
    return _ml100k_table().copy()


def load_movielens100k(
    seed: int = 0,
    hashing: bool = False,
    hash_buckets: int | Mapping[str, int] = 4096,
    split: str = "random",
    test_fraction: float = 0.2,
) -> Dataset:
    """MovieLens-100k as CTR: 100,000 ratings, label ``rating >= 4`` (55.4% positive).

    Fields: user, item, gender, age (bucket), occupation, zip (region = first character of the
    zip code), genre (first listed), year (release decade). Natural keys: user, occupation, zip.
    ``split="random"``: seeded random ``test_fraction`` of rows; ``"temporal"``: each user's
    latest ``test_fraction`` of ratings by timestamp. Read from the recbole wheel's example data.
    """
    return _build_movielens(
        "movielens-100k",
        _ml100k_table(),
        seed,
        hashing,
        hash_buckets,
        split,
        test_fraction,
        {"source": str(movielens100k_dir())},
    )


# ----------------------------------------------------------------------------- MovieLens-1M
_ML1M_FILES = {
    "ratings.dat": ["user_id", "item_id", "rating", "timestamp"],
    "users.dat": ["user_id", "gender", "age", "occupation", "zip_code"],
    "movies.dat": ["item_id", "title", "genres"],
}


def _read_dat(raw: bytes, where: str, columns: list[str]) -> pd.DataFrame:
    """Parse a MovieLens-1M ``.dat`` file ('::'-separated, latin-1) into string columns."""
    lines = [ln for ln in raw.replace(b"\r\n", b"\n").split(b"\n") if ln.strip()]
    bad = next((i for i, ln in enumerate(lines) if ln.count(b"::") != len(columns) - 1), None)
    if bad is not None or not lines:
        detail = (
            f"line {bad + 1} has {lines[bad].count(b'::') + 1} fields"
            if bad is not None
            else "empty"
        )
        raise DataError(
            f"movielens-1m: {where} is corrupt ({detail}; expected {len(columns)} "
            f"'::'-separated fields: {'::'.join(columns)})"
        )
    if b"\t" not in raw:  # fast path: C parser on tab-separated bytes
        body = b"\n".join(lines).replace(b"::", b"\t")
        return pd.read_csv(
            io.BytesIO(body),
            sep="\t",
            header=None,
            names=columns,
            dtype=str,
            keep_default_na=False,
            quoting=3,
            encoding="latin-1",
        )
    rows = [ln.decode("latin-1").split("::") for ln in lines]
    return pd.DataFrame(rows, columns=columns)


@functools.lru_cache(maxsize=1)
def _ml1m_table(root: Path | None) -> pd.DataFrame:
    raw: dict[str, tuple[bytes, str]] = {}
    zpath = None
    if root is not None:
        for cand in (root / "ml-1m.zip", root / "movielens-1m" / "ml-1m.zip"):
            if cand.is_file():
                zpath = cand
    folder_ok = root is not None and any(
        (root / sub / "ratings.dat").is_file() for sub in ("ml-1m", "movielens-1m", "")
    )
    if zpath is not None and not folder_ok:
        try:
            with zipfile.ZipFile(zpath) as zf:
                for f in _ML1M_FILES:
                    raw[f] = (zf.read(f"ml-1m/{f}"), f"{zpath}:ml-1m/{f}")
        except (KeyError, zipfile.BadZipFile, OSError) as exc:
            raise DataError(
                f"movielens-1m: {zpath} is not the MovieLens-1M archive ({exc}); replace it "
                f"with ml-1m.zip or extract it to {root}/ml-1m/"
            ) from exc
    else:
        for f in _ML1M_FILES:
            p = find_file(
                "movielens-1m",
                root,
                ["ml-1m", "movielens-1m", ""],
                [f],
                f"MovieLens-1M {f} (from ml-1m.zip)",
            )
            raw[f] = (p.read_bytes(), str(p))
    r = _read_dat(*raw["ratings.dat"], _ML1M_FILES["ratings.dat"])
    u = _read_dat(*raw["users.dat"], _ML1M_FILES["users.dat"])
    m = _read_dat(*raw["movies.dat"], _ML1M_FILES["movies.dat"])
    return _join_movielens(
        "movielens-1m",
        r,
        u,
        m["item_id"],
        m["genres"].str.split("|").str[0],
        m["title"].str.extract(r"\((\d{4})\)\s*$")[0],
    )


def load_movielens1m(
    root: str | None = None,
    seed: int = 0,
    hashing: bool = False,
    hash_buckets: int | Mapping[str, int] = 8192,
    split: str = "random",
    test_fraction: float = 0.2,
) -> Dataset:
    """MovieLens-1M as CTR from ``ratings.dat``, ``users.dat``, ``movies.dat`` ('::'-separated).

    Looks in ``<root>/ml-1m/`` (or ``<root>/movielens-1m/``, ``<root>/``), else reads
    ``<root>/ml-1m.zip``. Same fields, label and splits as :func:`load_movielens100k`
    (year = decade parsed from the title).
    """
    r = resolve_root(root)
    table = _ml1m_table(r.resolve() if r is not None else None)
    return _build_movielens(
        "movielens-1m",
        table,
        seed,
        hashing,
        hash_buckets,
        split,
        test_fraction,
        {"source": str(r)},
    )


# ----------------------------------------------------------------------------- Criteo
CRITEO_INT = [f"I{i}" for i in range(1, 14)]
CRITEO_CAT = [f"C{i}" for i in range(1, 27)]
INT_BUCKETS = 34  # 0 missing, 1 negative, 2 + floor(log2(1 + v)) capped at 33


def log_bucket(values: np.ndarray) -> np.ndarray:
    """Integer feature -> bucket: NaN -> 0, v < 0 -> 1, v >= 0 -> min(2 + floor(log2(1+v)), 33)."""
    v = np.asarray(values, dtype=np.float64)
    out = np.zeros(len(v), dtype=np.int64)
    neg = v < 0
    pos = v >= 0
    out[neg] = 1
    out[pos] = np.minimum(2 + np.floor(np.log2(1.0 + v[pos])).astype(np.int64), INT_BUCKETS - 1)
    return out


def load_criteo(
    root: str | None = None,
    seed: int = 0,
    max_rows: int | None = 1_000_000,
    hash_buckets: int | Mapping[str, int] = 10_000,
    test_fraction: float = 0.2,
) -> Dataset:
    """Criteo display-advertising ``train.txt`` (label, I1..I13, C1..C26; tab-separated).

    Reads the first ``max_rows`` rows (None = all). Integer features are log-bucketised
    (:func:`log_bucket`, 34 buckets), categorical ones hashed (crc32 of ``"C7=value"`` mod
    ``hash_buckets``; empty = its own value). Seeded random ``test_fraction`` test split.
    Looks for ``train.txt`` (optionally gzipped, or ``dac_sample.txt``) in ``<root>/criteo/``
    or ``<root>/``. No natural keys.
    """
    if max_rows is not None and max_rows < 1:
        raise ValueError(f"max_rows must be >= 1 or None, got {max_rows}")
    r = resolve_root(root)
    path = find_file(
        "criteo",
        r,
        ["criteo", ""],
        ["train.txt", "train.txt.gz", "dac_sample.txt"],
        "Criteo display-ads train.txt",
    )
    cols = ["label", *CRITEO_INT, *CRITEO_CAT]
    try:
        with open_maybe_gzip(path) as fh:
            lines = [ln for ln in itertools.islice(fh, max_rows) if ln.strip(b"\r\n")]
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"criteo: cannot read {path}: {exc}") from exc
    if not lines:
        raise DataError(f"criteo: {path} is empty")
    bad = next((i for i, ln in enumerate(lines) if ln.count(b"\t") != 39), None)
    if bad is not None:
        ncols = lines[bad].count(b"\t") + 1
        raise DataError(
            f"criteo: {path} line {bad + 1} has {ncols} tab-separated "
            "columns, expected 40 (label, 13 integer, 26 categorical): not a Criteo train.txt"
        )
    try:
        df = pd.read_csv(
            io.BytesIO(b"".join(lines)),
            sep="\t",
            header=None,
            names=cols,
            dtype={
                **{c: "float64" for c in ["label", *CRITEO_INT]},
                **{c: str for c in CRITEO_CAT},
            },
            keep_default_na=False,
            na_values={c: [""] for c in ["label", *CRITEO_INT]},
            quoting=3,
            encoding="utf-8",
            encoding_errors="replace",
        )
    except (ValueError, pd.errors.ParserError) as exc:
        raise DataError(
            f"criteo: {path} is not a Criteo train.txt (label, 13 integer and 26 categorical "
            f"tab-separated columns): {exc}"
        ) from exc
    del lines
    label = df["label"].to_numpy()
    if np.isnan(label).any() or not np.isin(label, (0.0, 1.0)).all():
        raise DataError(f"criteo: {path}: the first column (label) must be 0 or 1")
    table = pd.DataFrame({c: log_bucket(df[c].to_numpy()) for c in CRITEO_INT})
    for c in CRITEO_CAT:
        table[c] = df[c].fillna("")
    x_all, dims = encode_fields(
        table,
        CRITEO_INT + CRITEO_CAT,
        hashing=True,
        hash_buckets=hash_buckets,
        fixed_dims={c: INT_BUCKETS for c in CRITEO_INT},
    )
    y_all = label.astype(np.float32)
    tr, te = random_split(len(df), test_fraction, seed)
    return Dataset(
        name="criteo",
        task="ctr",
        x=x_all[tr],
        y=y_all[tr],
        num_classes=2,
        x_test=x_all[te],
        y_test=y_all[te],
        field_dims=dims,
        field_names=CRITEO_INT + CRITEO_CAT,
        meta={"source": str(path), "rows": len(df), "split_seed": seed, "hashing": True},
    )
