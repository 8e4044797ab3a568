"""``fedstrat.data.table``: bring-your-own CSV / Parquet click logs driven by a schema TOML."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from tablehelpers import (  # same folder (pytest prepends it)
    needs_recbole,
    write_movielens_csv,
)

from fedstrat.data import DataError
from fedstrat.data.ctr import load_movielens100k
from fedstrat.data.table import load_table, parse_schema
from fedstrat.models import build_model, evaluate, train_steps


@pytest.fixture(scope="module")
def ml_csv(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return write_movielens_csv(tmp_path_factory.mktemp("ml"))


def _same(a, b) -> None:
    for k in ("x", "y", "x_test", "y_test"):
        assert np.array_equal(getattr(a, k), getattr(b, k)), k
    assert a.field_dims == b.field_dims and a.field_names == b.field_names
    assert set(a.keys) == set(b.keys) == {"user", "occupation", "zip"}
    for k in b.keys:
        assert np.array_equal(a.keys[k], b.keys[k]) and np.array_equal(
            a.keys_test[k], b.keys_test[k]
        )


@pytest.mark.ctr
@needs_recbole
@pytest.mark.parametrize(
    "kw", [{}, {"seed": 3}, {"split": "temporal"}, {"hashing": True, "hash_buckets": 97}]
)
def test_movielens_csv_round_trip_is_exact(ml_csv, kw):
    _same(load_table(*ml_csv, **kw), load_movielens100k(**kw))


@pytest.mark.ctr
@needs_recbole
def test_movielens_csv_round_trip_gives_the_same_lr_auc(ml_csv):
    aucs = []
    for ds in (load_table(*ml_csv, seed=0), load_movielens100k(seed=0)):
        torch.manual_seed(0)
        model = build_model("lr", ds)
        x, y = ds.x[:20_000], ds.y[:20_000]
        train_steps(model, x, y, ds.task, epochs=1, batch_size=512, lr=1e-2, optimizer="adam")
        aucs.append(evaluate(model, ds.x_test, ds.y_test, ds.task)["auc"])
    assert aucs[0] == aucs[1] and aucs[0] > 0.6


def _write(tmp_path: Path, df: pd.DataFrame, schema: str) -> tuple[Path, Path]:
    df.to_csv(tmp_path / "t.csv", index=False)
    (tmp_path / "s.toml").write_text(schema)
    return tmp_path / "t.csv", tmp_path / "s.toml"


def _small(n: int = 200, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "click": rng.integers(0, 2, n),
            "site": rng.choice(["a", "b", "c"], n),
            "price": np.where(rng.random(n) < 0.1, np.nan, rng.exponential(10.0, n)),
            "tags": rng.choice(["x|y", "y", "", "z|x|y|w"], n),
            "device": rng.integers(0, 7, n),
            "ts": rng.integers(0, 10_000, n),
        }
    )


BASE = """
[label]
column = "click"
[fields]
categorical = ["site"]
numeric = ["price"]
[fields.buckets]
price = 4
[clients]
key = "device"
"""


def test_numeric_buckets_keys_and_temporal_split(tmp_path):
    df = _small()
    ds = load_table(*_write(tmp_path, df, BASE + '[split]\nkind = "temporal"\ntimestamp = "ts"\n'))
    # site: 3 values + unknown; price: missing + 4 quantile bins
    assert ds.field_names == ["site", "price"] and ds.field_dims == [4, 5]
    x = np.concatenate([ds.x, ds.x_test])
    assert (x[:, 1] == 0).sum() == df["price"].isna().sum()  # bucket 0 = missing
    assert set(np.unique(ds.x[:, 1])) == {0, 1, 2, 3, 4}  # quartiles of the train rows
    assert set(ds.keys) == {"device"} and ds.meta["split"] == "temporal"
    assert abs(ds.num_test - 40) <= 7  # round(0.2 * n_device) per device
    full = load_table(*_write(tmp_path, df, BASE), test_fraction=0.5)
    assert full.num_test == 100


def test_temporal_split_is_latest_rows_per_client(tmp_path):
    df = pd.DataFrame({"click": [0, 1] * 6, "site": list("abcabcabcabc"), "u": [1] * 6 + [2] * 6})
    df["ts"] = [5, 1, 3, 2, 6, 4, 10, 30, 20, 60, 50, 40]
    schema = BASE.replace('"device"', '"u"').replace('numeric = ["price"]', "numeric = []")
    schema = schema.replace("[fields.buckets]\nprice = 4\n", "")
    ds = load_table(*_write(tmp_path, df, schema + '[split]\nkind="temporal"\ntimestamp="ts"\n'))
    # round(0.2 * 6) = 1 per user: rows with ts 6 (user 1) and 60 (user 2)
    assert ds.num_test == 2 and sorted(ds.y_test.tolist()) == [0.0, 1.0]
    assert sorted(ds.keys_test["u"].tolist()) == [0, 1]


def test_multi_valued_field_shares_one_vocabulary(tmp_path):
    df = _small()
    schema = BASE + '[fields.multi_valued]\ncolumn = "tags"\nsep = "|"\nmax_len = 3\n'
    ds = load_table(*_write(tmp_path, df, schema), seed=1)
    assert ds.field_names == ["site", "price", "tags_1", "tags_2", "tags_3"]
    assert ds.field_dims[2:] == [5, 5, 5]  # empty + {x, y, z} + unknown ("w" is 4th only)
    x = np.concatenate([ds.x, ds.x_test])
    assert (x[:, 2:] < 5).all()
    # "z|x|y|w" keeps its first three values; "" fills no slot; "y" only the first
    n_empty = (df["tags"] == "").sum()
    assert ((x[:, 2:] == 0).all(axis=1)).sum() == n_empty
    hashed = load_table(*_write(tmp_path, df, schema), hashing=True, hash_buckets=11)
    assert hashed.field_dims == [11, 5, 12, 12, 12]


def test_hashing_uses_the_documented_stable_hash(tmp_path):
    import zlib

    df = _small()
    ds = load_table(
        *_write(tmp_path, df, BASE + '[encoding]\nmode = "hashing"\nhash_buckets = 7\n')
    )
    assert ds.field_dims == [7, 5] and ds.meta["hashing"] is True
    site = np.concatenate([ds.x[:, 0], ds.x_test[:, 0]])
    assert set(site.tolist()) == {zlib.crc32(f"site={v}".encode()) % 7 for v in "abc"}


def test_label_true_false_and_explicit_and_log_buckets(tmp_path):
    df = _small(50)
    df["click"] = np.where(df["click"] == 1, "true", "false")
    schema = BASE.replace("price = 4", "price = [1.0, 10.0]")
    ds = load_table(*_write(tmp_path, df, schema))
    assert ds.field_dims == [4, 4]
    y = np.concatenate([ds.y, ds.y_test])
    assert y.sum() == (df["click"] == "true").sum()
    ds = load_table(*_write(tmp_path, df, BASE.replace("price = 4", 'price = "log"')))
    assert ds.field_dims[1] == 34


@pytest.mark.parametrize(
    ("change", "column", "needle"),
    [
        (('categorical = ["site"]', 'categorical = ["nope"]'), "nope", "not in the file"),
        (('column = "click"', 'column = "device"'), "device", "other than 0/1"),
        (('categorical = ["site"]', 'categorical = ["site"]\nnumerics = ["x"]'), "numerics", "key"),
        (('numeric = ["price"]', 'numeric = ["site"]'), "site", "both categorical and numeric"),
        (('numeric = ["price"]', 'numeric = ["price", "tags"]'), "tags", "must be numeric"),
        (("price = 4", "price = 0"), "price", "bin count"),
        (('key = "device"', 'key = "owner"'), "owner", "not in the file"),
        (('column = "click"', 'column = "site"'), "site", "cannot also be a feature"),
    ],
)
def test_schema_errors_are_one_line_naming_the_column(tmp_path, change, column, needle):
    df = _small(20)
    with pytest.raises(DataError) as exc:
        load_table(*_write(tmp_path, df, BASE.replace(*change)))
    msg = str(exc.value)
    assert "\n" not in msg and repr(column) in msg and needle in msg and "np." not in msg


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("[label]\ncolumn = 'y'\n", "[fields] is missing"),
        ("[fields]\ncategorical = ['a']\n", "[label] needs column"),
        ("[label]\ncolumn='y'\n[fields]\ncategorical=['a']\n[bogus]\n", "unknown section [bogus]"),
        (
            "[label]\ncolumn='y'\n[fields]\ncategorical=['a']\n[split]\nkind='temporal'\n",
            "needs timestamp",
        ),
        ("[label]\ncolumn='y'\n[fields]\ncategorical=['a', 'a']\n", "'a' is listed twice"),
        ("[label]\ncolumn='y'\n[fields]\ncategorical=['a']\n[encoding]\nmode='x'\n", "mode"),
        ("[label\n", "not valid TOML"),
        ("[label]\ncolumn='y'\n[fields]\ncategorical=['a']\n[split]\ntest_fraction=1\n", "(0, 1)"),
    ],
)
def test_schema_file_errors(tmp_path, text, needle):
    (tmp_path / "s.toml").write_text(text)
    (tmp_path / "t.csv").write_text("y,a\n0,p\n1,q\n")
    with pytest.raises(DataError) as exc:
        load_table(tmp_path / "t.csv", tmp_path / "s.toml")
    assert "\n" not in str(exc.value) and needle in str(exc.value)


def test_parse_schema_defaults():
    s = parse_schema({"label": {"column": "y"}, "fields": {"categorical": ["a"]}})
    assert s.split == "random" and s.test_fraction == 0.2 and not s.hashing and s.min_count == 1
    assert s.fields == ["a"] and s.columns == ["y", "a"]


def test_missing_file_and_empty_label_rows(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_table(tmp_path / "none.csv", _write(tmp_path, _small(5), BASE)[1])
    df = _small(20)
    df.loc[3, "click"] = np.nan
    with pytest.raises(DataError, match="'click' has 1 empty rows"):
        load_table(*_write(tmp_path, df, BASE))


def test_parquet(tmp_path):
    df = _small(40)
    (tmp_path / "s.toml").write_text(BASE)
    if (
        importlib.util.find_spec("pyarrow") is None
        and importlib.util.find_spec("fastparquet") is None
    ):
        (tmp_path / "t.parquet").write_bytes(b"PAR1")
        with pytest.raises(DataError, match="needs pyarrow") as exc:
            load_table(tmp_path / "t.parquet", tmp_path / "s.toml")
        assert "\n" not in str(exc.value)
        return
    df.to_parquet(tmp_path / "t.parquet")
    df.to_csv(tmp_path / "t.csv", index=False)
    a = load_table(tmp_path / "t.parquet", tmp_path / "s.toml")
    b = load_table(tmp_path / "t.csv", tmp_path / "s.toml")
    assert np.array_equal(a.x, b.x) and np.array_equal(a.y, b.y)
