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

import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fedstrat.data.base import DataError, Dataset, random_split
from fedstrat.data.ctr import log_bucket
from fedstrat.data.encoding import add_oov_slot, stable_hash, temporal_split, vocab_ids

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

_SECTIONS = {
    "table": {"format", "sep"},
    "label": {"column", "threshold"},
    "fields": {"categorical", "numeric", "buckets", "multi_valued"},
    "encoding": {"mode", "hash_buckets", "min_count"},
    "clients": {"key", "extra_keys"},
    "split": {"kind", "test_fraction", "timestamp"},
}


@dataclass(frozen=True)
class TableSchema:
    """A parsed schema (see the module docstring for the TOML form)."""

    label: str
    categorical: list[str]
    numeric: list[str] = field(default_factory=list)
    threshold: float | None = None
    buckets: dict[str, int | str | list[float]] = field(default_factory=dict)
    multi_column: str | None = None
    multi_sep: str = "|"
    multi_max_len: int = 3
    hashing: bool = False
    hash_buckets: int | dict[str, int] = 4096
    min_count: int = 1
    client_key: str | None = None
    extra_keys: list[str] = field(default_factory=list)
    split: str = "random"
    test_fraction: float = 0.2
    timestamp: str | None = None
    format: str | None = None
    sep: str = ","

    @property
    def fields(self) -> list[str]:
        """Encoded field names in order: categorical, numeric, multi-valued slots."""
        multi = [f"{self.multi_column}_{i + 1}" for i in range(self.multi_max_len)]
        return [*self.categorical, *self.numeric, *(multi if self.multi_column else [])]

    @property
    def key_columns(self) -> list[str]:
        return ([self.client_key] if self.client_key else []) + self.extra_keys

    @property
    def columns(self) -> list[str]:
        """Every table column the schema reads (each once)."""
        cols = [self.label, *self.categorical, *self.numeric, *self.key_columns]
        cols += [c for c in (self.multi_column, self.timestamp) if c]
        return list(dict.fromkeys(cols))


def _err(where: str, msg: str) -> DataError:
    return DataError(f"table schema {where}: {msg}")


def _names(sec: Mapping[str, Any], key: str, where: str) -> list[str]:
    v = sec.get(key, [])
    if not isinstance(v, list) or not all(isinstance(c, str) and c for c in v):
        raise _err(where, f"[{key}] must be a list of column names, got {v!r}")
    dup = sorted({c for c in v if v.count(c) > 1})
    if dup:
        raise _err(where, f"column {dup[0]!r} is listed twice in {key}")
    return list(v)


def parse_schema(raw: Mapping[str, Any], where: str = "<schema>") -> TableSchema:
    """Validate a schema mapping (parsed TOML); raises a one-line :class:`DataError`."""
    unknown = sorted(set(raw) - set(_SECTIONS))
    if unknown:
        raise _err(where, f"unknown section [{unknown[0]}]; known: {sorted(_SECTIONS)}")
    for sec, known in _SECTIONS.items():
        extra = sorted(set(raw.get(sec, {})) - known) if isinstance(raw.get(sec), dict) else []
        if extra:
            raise _err(where, f"[{sec}] has unknown key {extra[0]!r}; known: {sorted(known)}")
    lab, fields = raw.get("label"), raw.get("fields")
    if not isinstance(lab, Mapping) or not isinstance(lab.get("column"), str):
        raise _err(where, '[label] needs column = "<label column>"')
    if not isinstance(fields, Mapping):
        raise _err(where, "[fields] is missing (categorical = [...], numeric = [...])")
    label = lab["column"]
    threshold = lab.get("threshold")
    if threshold is not None and (
        isinstance(threshold, bool) or not isinstance(threshold, int | float)
    ):
        raise _err(where, f"column {label!r}: label threshold must be a number, got {threshold!r}")
    cat, num = _names(fields, "categorical", where), _names(fields, "numeric", where)
    both = sorted(set(cat) & set(num))
    if both:
        raise _err(where, f"column {both[0]!r} is both categorical and numeric")
    buckets = dict(fields.get("buckets", {}))
    for c, b in buckets.items():
        if c not in num:
            raise _err(where, f"column {c!r}: [fields.buckets] names a column not in numeric")
        ok = (isinstance(b, int) and not isinstance(b, bool) and b >= 1) or b == "log"
        ok = ok or (isinstance(b, list) and all(isinstance(e, int | float) for e in b))
        if not ok:
            raise _err(where, f"column {c!r}: buckets must be a bin count >= 1, 'log' or edges")
    multi = fields.get("multi_valued")
    m_col, m_sep, m_len = None, "|", 3
    if multi is not None:
        if not isinstance(multi, Mapping) or not isinstance(multi.get("column"), str):
            raise _err(where, '[fields.multi_valued] needs column = "<column>"')
        m_col, m_sep, m_len = multi["column"], multi.get("sep", "|"), multi.get("max_len", 3)
        if not isinstance(m_sep, str) or not m_sep or not isinstance(m_len, int) or m_len < 1:
            raise _err(where, f"column {m_col!r}: multi_valued needs a non-empty sep, max_len >= 1")
    if not cat and not num and m_col is None:
        raise _err(where, "[fields] lists no feature columns")
    if label in cat or label in num or label == m_col:
        raise _err(where, f"column {label!r} is the label and cannot also be a feature")
    enc = raw.get("encoding", {})
    mode = enc.get("mode", "vocabulary")
    if mode not in ("vocabulary", "hashing"):
        raise _err(where, f"[encoding] mode must be 'vocabulary' or 'hashing', got {mode!r}")
    hb = enc.get("hash_buckets", 4096)
    if isinstance(hb, Mapping):
        hb = dict(hb)
        bad = [c for c, b in hb.items() if not isinstance(b, int) or b < 1]
        if bad:
            raise _err(where, f"column {bad[0]!r}: hash_buckets must be an integer >= 1")
    elif not isinstance(hb, int) or hb < 1:
        raise _err(where, f"[encoding] hash_buckets must be an integer >= 1, got {hb!r}")
    min_count = enc.get("min_count", 1)
    if not isinstance(min_count, int) or min_count < 1:
        raise _err(where, f"[encoding] min_count must be an integer >= 1, got {min_count!r}")
    cl, sp, tb = raw.get("clients", {}), raw.get("split", {}), raw.get("table", {})
    key = cl.get("key")
    if key is not None and not isinstance(key, str):
        raise _err(where, f"[clients] key must be a column name, got {key!r}")
    extra = _names(cl, "extra_keys", where)
    kind, ts = sp.get("kind", "random"), sp.get("timestamp")
    if kind not in ("random", "temporal"):
        raise _err(where, f"[split] kind must be 'random' or 'temporal', got {kind!r}")
    if kind == "temporal" and not isinstance(ts, str):
        raise _err(where, '[split] kind = "temporal" needs timestamp = "<column>"')
    fmt = tb.get("format")
    if fmt not in (None, "csv", "parquet"):
        raise _err(where, f"[table] format must be 'csv' or 'parquet', got {fmt!r}")
    return TableSchema(
        label=label,
        categorical=cat,
        numeric=num,
        threshold=None if threshold is None else float(threshold),
        buckets=buckets,
        multi_column=m_col,
        multi_sep=m_sep,
        multi_max_len=m_len,
        hashing=mode == "hashing",
        hash_buckets=hb,
        min_count=min_count,
        client_key=key,
        extra_keys=extra,
        split=kind,
        test_fraction=float(sp.get("test_fraction", 0.2)),
        timestamp=ts,
        format=fmt,
        sep=str(tb.get("sep", ",")),
    )


def read_schema(path: str | Path) -> TableSchema:
    """Parse a schema TOML file (see the module docstring)."""
    p = Path(path)
    try:
        raw = tomllib.loads(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise _err(str(p), f"cannot read it ({exc.strerror or exc})") from exc
    except tomllib.TOMLDecodeError as exc:
        raise _err(str(p), f"not valid TOML ({exc})") from exc
    return parse_schema(raw, str(p))


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
            f"{v[~np.isin(v, (0.0, 1.0))][0]!r}); add threshold = ... to [label]"
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


def _replace(schema: TableSchema, over: dict[str, Any], where: str) -> TableSchema:
    new = replace(schema, **over)
    if new.split not in ("random", "temporal"):
        raise _err(where, f"split must be 'random' or 'temporal', got {new.split!r}")
    if new.split == "temporal" and not new.timestamp:
        raise _err(where, '[split] kind = "temporal" needs timestamp = "<column>"')
    return new
