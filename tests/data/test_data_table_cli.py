"""``--dataset table --data FILE --schema SCHEMA.toml`` through the CLI and the Flower App.

The README's worked example: export MovieLens-100k to CSV, describe it with a schema, train on it;
the table run must give exactly the native loader's AUC.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from tablehelpers import (  # same folder (pytest prepends it)
    needs_recbole,
    write_movielens_csv,
)
from typer.testing import CliRunner

from fedstrat.app.config import ConfigError, RunConfig
from fedstrat.app.server_app import run_server
from fedstrat.cli.main import app
from fedstrat.clients.client_app import app as client_app
from fedstrat.clients.data import clear_cache, load_client_data
from fedstrat.data import DataError, load_dataset
from fedstrat.strategies import LocalGrid
from fedstrat.strategies.local_grid import client_app_handler

SMALL_SCHEMA = """
[label]
column = "click"
[fields]
categorical = ["site", "user"]
[clients]
key = "user"
"""


@pytest.fixture(scope="module")
def ml_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return write_movielens_csv(tmp_path_factory.mktemp("ml"))


def _small(tmp_path: Path, n: int = 120) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    rows = ["click,site,user"] + [
        f"{rng.integers(0, 2)},{'abc'[rng.integers(0, 3)]},u{rng.integers(0, 6)}" for _ in range(n)
    ]
    (tmp_path / "t.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "s.toml").write_text(SMALL_SCHEMA)
    return tmp_path / "t.csv", tmp_path / "s.toml"


def _cli(*args: str) -> tuple[int, str]:
    res = CliRunner().invoke(app, ["simulate", *args])
    return res.exit_code, res.output


def test_dry_run_resolves_table_paths_to_absolute(tmp_path, monkeypatch):
    _small(tmp_path)
    monkeypatch.chdir(tmp_path)
    code, out = _cli(
        "--dataset", "table", "--data", "t.csv", "--schema", "s.toml",
        "--partition", "natural", "--num-clients", "6", "--clients-per-round", "2",
        "--model", "lr", "--dry-run",
    )  # fmt: skip
    assert code == 0, out
    assert f'data = "{tmp_path / "t.csv"}"' in out and f'schema = "{tmp_path / "s.toml"}"' in out


def test_schema_error_is_one_line_naming_the_column(tmp_path):
    data, schema = _small(tmp_path)
    schema.write_text(SMALL_SCHEMA.replace('"site"', '"country"'))
    code, out = _cli(
        "--dataset", "table", "--data", str(data), "--schema", str(schema), "--dry-run"
    )  # fmt: skip
    assert code == 2
    lines = [line for line in out.splitlines() if line.strip()]
    assert len(lines) == 1 and "'country'" in lines[0], out


def test_table_needs_data_and_schema_and_they_need_table(tmp_path):
    code, out = _cli("--dataset", "table", "--dry-run")
    assert code == 2 and "--data" in out
    with pytest.raises(ConfigError, match="dataset table"):
        RunConfig(dataset="digits", data="x.csv").validate()
    with pytest.raises(ConfigError, match="split"):
        RunConfig(split="sideways").validate()
    with pytest.raises(DataError, match="schema"):
        load_dataset("table", data="x.csv")


def test_every_node_loads_its_partition_of_the_table(tmp_path):
    data, schema = _small(tmp_path)
    cfg = RunConfig(
        dataset="table", data=str(data), schema=str(schema), partition="natural",
        num_clients=6, clients_per_round=2, model="lr",
    )  # fmt: skip
    clear_cache()
    nodes = [
        load_client_data(cfg.to_flower(), {"partition-id": i, "num-partitions": 6})
        for i in range(6)
    ]
    ds = load_dataset("table", data=str(data), schema=str(schema))
    assert sum(n.num_examples for n in nodes) == len(ds.y)
    assert all(n.field_dims == ds.field_dims for n in nodes)


def _grid(cfg: RunConfig) -> LocalGrid:
    ids = list(range(101, 101 + cfg.num_clients))
    return LocalGrid(ids, client_app_handler(client_app, ids, cfg.to_flower()))


def _final_auc(run_dir: Path) -> float:
    rows = [json.loads(s) for s in (run_dir / "progress.jsonl").read_text().splitlines()]
    return [r for r in rows if r.get("event") == "round"][-1]["auc"]


@pytest.mark.ctr
@needs_recbole
def test_movielens_csv_trains_to_the_native_loaders_auc(ml_files, tmp_path):
    """A 1-round ServerApp run (real ClientApps, in-process grid) on the CSV export gives exactly
    the AUC of the same run on ``--dataset movielens-100k``."""
    base = RunConfig(
        dataset="movielens-100k", model="lr", partition="natural", num_clients=20,
        clients_per_round=4, rounds=1, local_steps=3, batch_size=256, optimizer="adam",
        lr=0.01, seed=3, node_wait_timeout=5.0, round_timeout=60.0,
    )  # fmt: skip
    native = dataclasses.replace(base, out=str(tmp_path / "native"))
    table = dataclasses.replace(
        base, dataset="table", data=str(ml_files[0]), schema=str(ml_files[1]),
        out=str(tmp_path / "table"),
    )  # fmt: skip
    for cfg in (native, table):
        clear_cache()
        run_server(_grid(cfg), cfg.validate())
    auc = _final_auc(tmp_path / "table")
    assert auc == _final_auc(tmp_path / "native") and auc > 0.5


def test_parquet_file_through_the_cli(tmp_path):
    pytest.importorskip("pyarrow")
    import pandas as pd

    data, schema = _small(tmp_path)
    pd.read_csv(data).to_parquet(tmp_path / "t.parquet")
    code, out = _cli(
        "--dataset", "table", "--data", str(tmp_path / "t.parquet"), "--schema", str(schema),
        "--partition", "natural", "--num-clients", "6", "--clients-per-round", "2", "--dry-run",
    )  # fmt: skip
    assert code == 0, out
    a = load_dataset("table", data=str(tmp_path / "t.parquet"), schema=str(schema))
    b = load_dataset("table", data=str(data), schema=str(schema))
    assert np.array_equal(a.x, b.x) and np.array_equal(a.y, b.y)
