"""Schema of :mod:`fedstrat.data.table` (the TOML format is documented there): parsing and checks.

Every problem is one :class:`~fedstrat.data.DataError` line that names the column or key.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedstrat.data.base import DataError

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


def schema_error(where: str, msg: str) -> DataError:
    """``DataError("table schema <where>: <msg>")`` (one line)."""
    return DataError(f"table schema {where}: {msg}")


def _names(sec: Mapping[str, Any], key: str, where: str) -> list[str]:
    v = sec.get(key, [])
    if not isinstance(v, list) or not all(isinstance(c, str) and c for c in v):
        raise schema_error(where, f"[{key}] must be a list of column names, got {v!r}")
    dup = sorted({c for c in v if v.count(c) > 1})
    if dup:
        raise schema_error(where, f"column {dup[0]!r} is listed twice in {key}")
    return list(v)


def parse_schema(raw: Mapping[str, Any], where: str = "<schema>") -> TableSchema:
    """Validate a schema mapping (parsed TOML); raises a one-line :class:`DataError`."""
    unknown = sorted(set(raw) - set(_SECTIONS))
    if unknown:
        raise schema_error(where, f"unknown section [{unknown[0]}]; known: {sorted(_SECTIONS)}")
    for sec, known in _SECTIONS.items():
        extra = sorted(set(raw.get(sec, {})) - known) if isinstance(raw.get(sec), dict) else []
        if extra:
            raise schema_error(
                where, f"[{sec}] has unknown key {extra[0]!r}; known: {sorted(known)}"
            )
    lab, fields = raw.get("label"), raw.get("fields")
    if not isinstance(lab, Mapping) or not isinstance(lab.get("column"), str):
        raise schema_error(where, '[label] needs column = "<label column>"')
    if not isinstance(fields, Mapping):
        raise schema_error(where, "[fields] is missing (categorical = [...], numeric = [...])")
    label = lab["column"]
    threshold = lab.get("threshold")
    if threshold is not None and (
        isinstance(threshold, bool) or not isinstance(threshold, int | float)
    ):
        raise schema_error(
            where, f"column {label!r}: label threshold must be a number, got {threshold!r}"
        )
    cat, num = _names(fields, "categorical", where), _names(fields, "numeric", where)
    both = sorted(set(cat) & set(num))
    if both:
        raise schema_error(where, f"column {both[0]!r} is both categorical and numeric")
    buckets = dict(fields.get("buckets", {}))
    for c, b in buckets.items():
        if c not in num:
            raise schema_error(
                where, f"column {c!r}: [fields.buckets] names a column not in numeric"
            )
        ok = (isinstance(b, int) and not isinstance(b, bool) and b >= 1) or b == "log"
        ok = ok or (isinstance(b, list) and all(isinstance(e, int | float) for e in b))
        if not ok:
            raise schema_error(
                where, f"column {c!r}: buckets must be a bin count >= 1, 'log' or edges"
            )
    multi = fields.get("multi_valued")
    m_col, m_sep, m_len = None, "|", 3
    if multi is not None:
        if not isinstance(multi, Mapping) or not isinstance(multi.get("column"), str):
            raise schema_error(where, '[fields.multi_valued] needs column = "<column>"')
        m_col, m_sep, m_len = multi["column"], multi.get("sep", "|"), multi.get("max_len", 3)
        if not isinstance(m_sep, str) or not m_sep or not isinstance(m_len, int) or m_len < 1:
            raise schema_error(
                where, f"column {m_col!r}: multi_valued needs a non-empty sep, max_len >= 1"
            )
    if not cat and not num and m_col is None:
        raise schema_error(where, "[fields] lists no feature columns")
    if label in cat or label in num or label == m_col:
        raise schema_error(where, f"column {label!r} is the label and cannot also be a feature")
    enc = raw.get("encoding", {})
    mode = enc.get("mode", "vocabulary")
    if mode not in ("vocabulary", "hashing"):
        raise schema_error(
            where, f"[encoding] mode must be 'vocabulary' or 'hashing', got {mode!r}"
        )
    hb = enc.get("hash_buckets", 4096)
    if isinstance(hb, Mapping):
        hb = dict(hb)
        bad = [c for c, b in hb.items() if not isinstance(b, int) or b < 1]
        if bad:
            raise schema_error(where, f"column {bad[0]!r}: hash_buckets must be an integer >= 1")
    elif not isinstance(hb, int) or hb < 1:
        raise schema_error(where, f"[encoding] hash_buckets must be an integer >= 1, got {hb!r}")
    min_count = enc.get("min_count", 1)
    if not isinstance(min_count, int) or min_count < 1:
        raise schema_error(
            where, f"[encoding] min_count must be an integer >= 1, got {min_count!r}"
        )
    cl, sp, tb = raw.get("clients", {}), raw.get("split", {}), raw.get("table", {})
    key = cl.get("key")
    if key is not None and not isinstance(key, str):
        raise schema_error(where, f"[clients] key must be a column name, got {key!r}")
    extra = _names(cl, "extra_keys", where)
    kind, ts = sp.get("kind", "random"), sp.get("timestamp")
    if kind not in ("random", "temporal"):
        raise schema_error(where, f"[split] kind must be 'random' or 'temporal', got {kind!r}")
    if kind == "temporal" and not isinstance(ts, str):
        raise schema_error(where, '[split] kind = "temporal" needs timestamp = "<column>"')
    tf = sp.get("test_fraction", 0.2)
    if isinstance(tf, bool) or not isinstance(tf, int | float) or not 0 < tf < 1:
        raise schema_error(where, f"[split] test_fraction must be in (0, 1), got {tf!r}")
    fmt = tb.get("format")
    if fmt not in (None, "csv", "parquet"):
        raise schema_error(where, f"[table] format must be 'csv' or 'parquet', got {fmt!r}")
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
        test_fraction=float(tf),
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
        raise schema_error(str(p), f"cannot read it ({exc.strerror or exc})") from exc
    except tomllib.TOMLDecodeError as exc:
        raise schema_error(str(p), f"not valid TOML ({exc})") from exc
    return parse_schema(raw, str(p))
