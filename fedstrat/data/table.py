"""Bring your own click logs: a CSV or Parquet table plus a schema TOML -> a CTR :class:`Dataset`.

``load_table(data_path, schema_path, seed=0, ...)`` reads the table (pandas; Parquet needs
pyarrow), builds the label, encodes every feature column to int64 ids, splits train/test and
returns the same :class:`~fedstrat.data.Dataset` the MovieLens loaders return (``task="ctr"``,
``x (N, F)`` with ``0 <= x[:, f] < field_dims[f]``, ``y`` in {0, 1}, natural ``keys``).

Schema format (TOML; only ``[label]`` and ``[fields]`` are required)::

    [table]
    format = "csv"               # "csv" | "parquet" (default: from the file extension)
    sep = ","                    # CSV delimiter

    [label]
    column = "rating"
    threshold = 4                # optional: y = (value >= threshold); without it the
                                 # column must hold 0/1 (or true/false)

    [fields]
    categorical = ["user", "item", "gender"]   # one id per distinct value (or hash bucket)
    numeric = ["age", "price"]   # bucketised: bucket 0 = missing, then 1, 2, ...

    [fields.buckets]             # optional, per numeric field (default: 10 quantile bins)
    age = 8                      # int: quantile bins, edges from the train rows
    price = "log"                # 0 missing, 1 negative, 2 + floor(log2(1 + v)), capped at 33
    score = [0.5, 1.0, 2.0]      # explicit edges: bucket 1 + #{edges <= v}

    [fields.multi_valued]        # optional: one column holding a list of values
    column = "genres"
    sep = "|"
    max_len = 3                  # fields genres_1..genres_3 (0 = empty slot), one shared
                                 # vocabulary; the first max_len values are kept

    [encoding]
    mode = "vocabulary"          # or "hashing"
    hash_buckets = 4096          # hashing: an int for all fields or a table {field = n}
    min_count = 1                # vocabulary: ids seen < min_count times in train -> unknown

    [clients]
    key = "user"                 # client key: ds.keys["user"] for the natural partition
    extra_keys = ["zip"]         # optional further natural keys

    [split]
    kind = "random"              # or "temporal" (needs timestamp)
    test_fraction = 0.2
    timestamp = "ts"             # numbers or date strings; temporal: each client's latest
                                 # test_fraction of rows is test (all rows by time without key)

Encoding is the MovieLens loaders' (:mod:`fedstrat.data.encoding`): vocabulary ids over the
whole file (sorted distinct values, numeric order for integers) plus one "unknown" id per field
for test values unseen in the train rows, or ``crc32(f"{field}={value}") mod B`` with hashing
(no unknown slot). Missing categorical values are the empty string (their own value). Keys are
exact vocabulary ids of the key column. Every schema or data error is one :class:`DataError`
line naming the column.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fedstrat.data.base import DataError, Dataset, random_split
from fedstrat.data.ctr import log_bucket
from fedstrat.data.encoding import add_oov_slot, stable_hash, temporal_split, vocab_ids
from fedstrat.data.table_schema import TableSchema, parse_schema, read_schema, schema_error

__all__ = ["TableSchema", "load_table", "load_table_dataset", "parse_schema", "read_schema"]


def _read(path: Path, schema: TableSchema, max_rows: int | None) -> pd.DataFrame:
    """Read only the schema's columns; categorical-like columns as strings ('' = missing)."""
    fmt = schema.format or ("parquet" if path.suffix.lower() in (".parquet", ".pq") else "csv")
    text_cols = [*schema.categorical, *schema.key_columns]
    text_cols += [schema.multi_column] if schema.multi_column else []
    if fmt == "parquet":
        try:
            df = pd.read_parquet(path)
        except ImportError as exc:
            raise DataError(
                f"table {path}: reading Parquet needs pyarrow (pip install pyarrow), or export "
                "the table to CSV"
            ) from exc
        except (OSError, ValueError) as exc:
            raise DataError(f"table {path}: cannot read Parquet ({exc})") from exc
        _check_columns(path, list(df.columns), schema)
        df = df[schema.columns].iloc[:max_rows]
        for c in dict.fromkeys(text_cols):
            df[c] = df[c].astype(object).where(df[c].notna(), "").astype(str)
        return df.reset_index(drop=True)
    try:
        header = pd.read_csv(path, sep=schema.sep, nrows=0).columns
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise DataError(f"table {path}: cannot read CSV header ({exc})") from exc
    _check_columns(path, list(header), schema)
    try:
        return pd.read_csv(
            path,
            sep=schema.sep,
            usecols=schema.columns,
            nrows=max_rows,
            dtype={c: str for c in text_cols},
            keep_default_na=False,
            na_values={c: [""] for c in schema.columns if c not in text_cols},
        )
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise DataError(f"table {path}: cannot parse CSV ({exc})") from exc


def _check_columns(path: Path, have: list[str], schema: TableSchema) -> None:
    missing = [c for c in schema.columns if c not in have]
    if missing:
        raise DataError(
            f"table {path}: column {missing[0]!r} named in the schema is not in the file "
            f"(columns: {', '.join(map(str, have[:20]))})"
        )


def _numeric(df: pd.DataFrame, col: str, path: Path) -> np.ndarray:
    """Column as float64 (NaN = missing); error naming the column on non-numbers."""
    s = df[col]
    if s.dtype == bool or pd.api.types.is_numeric_dtype(s):
        return s.to_numpy(dtype=np.float64)
    v = pd.to_numeric(s, errors="coerce")
    bad = v.isna() & s.notna() & (s.astype(str) != "")
    if bad.any():
        raise DataError(
            f"table {path}: column {col!r} must be numeric; row {int(np.argmax(bad))} holds "
            f"{s[bad].iloc[0]!r}"
        )
    return v.to_numpy(dtype=np.float64)


def _label(df: pd.DataFrame, schema: TableSchema, path: Path) -> np.ndarray:
    col = schema.label
    s = df[col]
    if schema.threshold is None and not pd.api.types.is_numeric_dtype(s):
        low = s.astype(str).str.strip().str.lower()
        if low.isin(["true", "false"]).all():
            return (low == "true").to_numpy(dtype=np.float32)
    v = _numeric(df, col, path)
    if np.isnan(v).any():
        raise DataError(
            f"table {path}: label column {col!r} has {int(np.isnan(v).sum())} empty rows"
        )
    if schema.threshold is not None:
        return (v >= schema.threshold).astype(np.float32)
    if not np.isin(v, (0.0, 1.0)).all():
        raise DataError(
            f"table {path}: label column {col!r} holds values other than 0/1 (e.g. "
            f"{float(v[~np.isin(v, (0.0, 1.0))][0]):g}); add threshold = ... to [label]"
        )
    return v.astype(np.float32)


def _timestamps(df: pd.DataFrame, col: str, path: Path) -> np.ndarray:
    v = pd.to_numeric(df[col], errors="coerce")
    if v.notna().all():
        return v.to_numpy(dtype=np.float64)
    try:
        t = pd.to_datetime(df[col], errors="raise")
    except (ValueError, TypeError) as exc:
        raise DataError(
            f"table {path}: timestamp column {col!r} is neither numbers nor dates"
        ) from exc
    if t.isna().any():
        raise DataError(f"table {path}: timestamp column {col!r} has empty rows")
    return t.astype("int64").to_numpy(dtype=np.float64)


def _bucketise(
    v: np.ndarray, spec: int | str | list[float], tr: np.ndarray
) -> tuple[np.ndarray, int]:
    """Numeric values -> bucket ids: 0 missing, then 1 + #{edges <= v}. Returns (ids, dim)."""
    if spec == "log":
        out = log_bucket(v)
        out[np.isnan(v)] = 0
        return out, 34
    if isinstance(spec, list):
        edges = np.unique(np.asarray(spec, dtype=np.float64))
    else:
        train = v[tr][~np.isnan(v[tr])]
        q = np.linspace(0.0, 1.0, int(spec) + 1)[1:-1]
        edges = np.unique(np.quantile(train, q)) if len(train) and len(q) else np.empty(0)
    out = 1 + np.searchsorted(edges, np.nan_to_num(v), side="right")
    out[np.isnan(v)] = 0
    return out.astype(np.int64), len(edges) + 2


def _multi(
    df: pd.DataFrame, schema: TableSchema, tr: np.ndarray, te: np.ndarray
) -> tuple[np.ndarray, list[int]]:
    """Multi-valued column -> ``max_len`` slot fields with one shared vocabulary (0 = empty)."""
    col, k = schema.multi_column, schema.multi_max_len
    codes, uniq = pd.factorize(df[col].astype(str).to_numpy())  # split each distinct list once
    rows = [[t.strip() for t in u.split(schema.multi_sep)[:k]] for u in uniq]
    parts = np.array([r + [""] * (k - len(r)) for r in rows], dtype=object).reshape(-1, k)
    filled_u = parts != ""
    ids_u = np.zeros(parts.shape, dtype=np.int64)
    if schema.hashing:
        b = _buckets_for(schema, col)
        ids_u[filled_u] = 1 + stable_hash(col, parts[filled_u], b)
        return ids_u[codes], [b + 1] * k
    tok_codes, size = vocab_ids(parts[filled_u].astype(str))
    ids_u[filled_u] = 1 + tok_codes
    ids = ids_u[codes]
    known = np.bincount(ids[tr].ravel(), minlength=size + 1) >= schema.min_count
    known[0] = True
    oov = size + 1
    ids[te] = np.where(known[ids[te]], ids[te], oov)
    if schema.min_count > 1:
        ids[tr] = np.where(known[ids[tr]], ids[tr], oov)
    return ids, [size + 2] * k


def _buckets_for(schema: TableSchema, col: str) -> int:
    hb = schema.hash_buckets
    if isinstance(hb, dict):
        if col not in hb:
            raise DataError(f"table schema: column {col!r} has no entry in [encoding] hash_buckets")
        return int(hb[col])
    return int(hb)


def load_table(
    data_path: str | Path,
    schema_path: str | Path,
    seed: int = 0,
    *,
    split: str | None = None,
    test_fraction: float | None = None,
    hashing: bool | None = None,
    hash_buckets: int | Mapping[str, int] | None = None,
    max_rows: int | None = None,
) -> Dataset:
    """Load a CSV / Parquet click log described by a schema TOML as a CTR :class:`Dataset`.

    ``seed`` seeds the random split. Keyword options override the schema: ``split``
    ("random" | "temporal"), ``test_fraction``, ``hashing``, ``hash_buckets``; ``max_rows``
    reads only the first rows. Raises a one-line :class:`DataError` naming the column.
    """
    schema = read_schema(schema_path)
    over: dict[str, Any] = {}
    if split is not None:
        over["split"] = split
    if test_fraction is not None:
        over["test_fraction"] = float(test_fraction)
    if hashing is not None:
        over["hashing"] = bool(hashing)
    if hash_buckets is not None:
        over["hash_buckets"] = (
            dict(hash_buckets) if isinstance(hash_buckets, Mapping) else hash_buckets
        )
    if over:
        schema = _replace(schema, over, str(schema_path))
    path = Path(data_path)
    if not path.is_file():
        raise DataError(f"table {path}: no such file")
    if max_rows is not None and max_rows < 1:
        raise ValueError(f"max_rows must be >= 1 or None, got {max_rows}")
    df = _read(path, schema, max_rows)
    if len(df) < 2:
        raise DataError(f"table {path}: needs at least 2 rows, has {len(df)}")
    y_all = _label(df, schema, path)
    keys_all = {k: vocab_ids(df[k].to_numpy())[0] for k in schema.key_columns}
    if schema.split == "temporal":
        ts = _timestamps(df, schema.timestamp, path)
        groups = keys_all[schema.client_key] if schema.client_key else np.zeros(len(df), np.int64)
        tr, te = temporal_split(groups, ts, schema.test_fraction)
    else:
        tr, te = random_split(len(df), schema.test_fraction, seed)
    cols, dims = [], []
    for c in schema.categorical:
        values = df[c].to_numpy()
        if schema.hashing:
            b = _buckets_for(schema, c)
            cols.append(stable_hash(c, values, b))
            dims.append(b)
        else:
            codes, size = vocab_ids(values)
            cols.append(codes)
            dims.append(size)
    for c in schema.numeric:
        ids, dim = _bucketise(_numeric(df, c, path), schema.buckets.get(c, 10), tr)
        cols.append(ids)
        dims.append(dim)
    x_all = np.stack(cols, axis=1) if cols else np.empty((len(df), 0), np.int64)
    x_tr, x_te = x_all[tr], x_all[te]
    if not schema.hashing and schema.categorical:
        cat = list(range(len(schema.categorical)))
        x_tr, x_te, dims = add_oov_slot(x_tr, x_te, dims, cat, schema.min_count)
    if schema.multi_column:
        m_ids, m_dims = _multi(df, schema, tr, te)
        x_tr = np.concatenate([x_tr, m_ids[tr]], axis=1)
        x_te = np.concatenate([x_te, m_ids[te]], axis=1)
        dims = [*dims, *m_dims]
    return Dataset(
        name="table",
        task="ctr",
        x=x_tr,
        y=y_all[tr],
        num_classes=2,
        x_test=x_te,
        y_test=y_all[te],
        field_dims=[int(d) for d in dims],
        field_names=schema.fields,
        keys={k: v[tr] for k, v in keys_all.items()},
        keys_test={k: v[te] for k, v in keys_all.items()},
        meta={
            "source": str(path),
            "schema": str(schema_path),
            "rows": len(df),
            "split": schema.split,
            "split_seed": seed,
            "hashing": schema.hashing,
            "oov": not schema.hashing,
            "client_key": schema.client_key,
            "label": schema.label
            if schema.threshold is None
            else f"{schema.label} >= {schema.threshold:g}",
        },
    )


def load_table_dataset(
    root: str | None = None,
    seed: int = 0,
    data: str = "",
    schema: str = "",
    split: str | None = None,
    test_fraction: float | None = None,
    max_rows: int | None = None,
) -> Dataset:
    """The registry's ``"table"`` loader: :func:`load_table` of ``data`` with ``schema``.

    Relative paths are taken from ``root`` (``--data-root``) when it is given, else from the
    working directory. Missing ``data`` / ``schema`` is a one-line :class:`DataError`.
    """
    if not data or not schema:
        missing = "data" if not data else "schema"
        raise DataError(
            f"dataset 'table' needs --{missing} (--data <CSV or Parquet file> "
            "--schema <schema TOML>)"
        )
    base = Path(root).expanduser() if root else Path()
    return load_table(
        base / Path(data).expanduser(),
        base / Path(schema).expanduser(),
        seed,
        split=split or None,
        test_fraction=test_fraction,
        max_rows=max_rows,
    )


def _replace(schema: TableSchema, over: dict[str, Any], where: str) -> TableSchema:
    new = replace(schema, **over)
    if new.split not in ("random", "temporal"):
        raise schema_error(where, f"split must be 'random' or 'temporal', got {new.split!r}")
    if new.split == "temporal" and not new.timestamp:
        raise schema_error(where, '[split] kind = "temporal" needs timestamp = "<column>"')
    return new
