"""Run-directory helpers, checkpoints and the shipped Flower App config (no Flower run)."""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

from fedstrat.app.checkpoint import find_checkpoint_dir, load_checkpoint, save_checkpoint
from fedstrat.app.config import ConfigError, RunConfig
from fedstrat.app.rundir import (
    METRIC_COLUMNS,
    append_jsonl,
    flat_toml,
    read_jsonl,
    summarize,
    write_config,
    write_json_atomic,
    write_metrics,
    write_plots,
)
from fedstrat.app.simulation import flwr_app_dir

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROWS = [
    {"round": 0, "accuracy": 0.1, "loss": 2.3},
    {"round": 1, "accuracy": 0.5, "loss": 1.5, "pred_var": 2.0, "pred_var_uniform": 6.0,
     "var_ratio": 3.0, "train_loss": 1.9},
    {"round": 2, "accuracy": 0.9, "loss": 0.5, "pred_var": 1.0, "pred_var_uniform": 1.0,
     "var_ratio": 1.0, "train_loss": float("nan")},
    {"round": 3, "accuracy": 0.85, "loss": 0.6},
]


def test_config_toml_roundtrip(tmp_path: Path) -> None:
    cfg = RunConfig(dataset="digits", out=str(tmp_path), lr=0.1, model='we"ird\\name')
    write_config(tmp_path, cfg)
    assert RunConfig.from_toml(tmp_path / "config.toml") == cfg
    assert flat_toml({"a": 1.0, "b": True}, "t") == "[t]\na = 1.0\nb = true\n"
    with pytest.raises(ValueError, match="non-finite"):
        flat_toml({"a": math.inf})


def test_metrics_files(tmp_path: Path) -> None:
    write_metrics(tmp_path, ROWS)
    lines = (tmp_path / "metrics.csv").read_text().splitlines()
    assert lines[0].split(",") == list(METRIC_COLUMNS)
    assert len(lines) == 1 + len(ROWS)
    rows = json.loads((tmp_path / "metrics.json").read_text())
    assert rows[2]["train_loss"] is None  # NaN -> null
    assert rows[1]["var_ratio"] == 3.0 and rows[0]["pred_var"] is None
    assert not list(tmp_path.glob(".*.tmp"))


def test_summary_and_plots(tmp_path: Path) -> None:
    cfg = RunConfig(dataset="digits", target_accuracy=0.8)
    s = summarize(ROWS, cfg, "classification", wall_seconds=1.0)
    assert (s["final"], s["best"], s["best_round"]) == (0.85, 0.9, 2)
    assert s["rounds_to_target"] == 2 and s["target"] == 0.8
    assert s["mean_var_ratio"] == pytest.approx(2.0)
    s = summarize(ROWS, dataclasses.replace(cfg, target_accuracy=0.95), "classification", 1.0)
    assert s["rounds_to_target"] is None
    paths = write_plots(tmp_path, ROWS, "classification")
    assert [p.name for p in paths] == ["accuracy.png", "variance.png"]
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in paths)


def test_jsonl(tmp_path: Path) -> None:
    p = tmp_path / "x.jsonl"
    append_jsonl(p, {"a": 1, "b": float("nan")})
    with open(p, "a") as fh:
        fh.write('{"partial": ')  # a line being written is not read
    assert read_jsonl(p) == [{"a": 1, "b": None}]
    write_json_atomic(tmp_path / "y.json", {"v": np.float32(1.5), "w": np.arange(2)})
    assert json.loads((tmp_path / "y.json").read_text()) == {"v": 1.5, "w": [0, 1]}


def test_checkpoint_roundtrip(tmp_path: Path) -> None:
    arrays = {"fc.weight": np.arange(6, dtype=np.float32).reshape(2, 3), "n": np.array([3])}
    opt = {"m_t": {"fc.weight": np.ones((2, 3))}, "v_t": {"fc.weight": np.zeros((2, 3))}}
    for rnd in (1, 2):
        save_checkpoint(tmp_path, round=rnd, arrays=arrays, strategy_state={"s": rnd},
                        metrics=ROWS[: rnd + 1], elapsed=1.5, config={"seed": 0},
                        server_opt=opt)
    ck = load_checkpoint(tmp_path)
    assert ck.round == 2 and ck.strategy_state == {"s": 2} and len(ck.metrics) == 3
    assert list(ck.arrays) == ["fc.weight", "n"]
    np.testing.assert_array_equal(ck.arrays["fc.weight"], arrays["fc.weight"])
    assert ck.arrays["n"].dtype == arrays["n"].dtype
    np.testing.assert_array_equal(ck.server_opt["m_t"]["fc.weight"], 1.0)
    # only the files of the latest round are kept
    names = sorted(p.name for p in (tmp_path / "checkpoint").iterdir())
    assert names == ["arrays-r2.npz", "server-opt-r2.npz", "state.json"]
    assert find_checkpoint_dir(tmp_path / "checkpoint") == find_checkpoint_dir(tmp_path)
    with pytest.raises(ConfigError, match="no checkpoint"):
        find_checkpoint_dir(tmp_path / "nothing")


@pytest.mark.parametrize(
    "path",
    [flwr_app_dir() / "pyproject.toml", Path(__file__).parents[2] / "pyproject.toml"],
)
def test_flower_app_config_lists_every_option_with_its_default(path: Path) -> None:
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    flwr = data["tool"]["flwr"]["app"]
    assert flwr["components"] == {
        "serverapp": "fedstrat.app.server_app:app",
        "clientapp": "fedstrat.clients.client_app:app",
    }
    assert flwr["config"] == RunConfig().to_flower()
    assert "federations" not in data["tool"]["flwr"]  # legacy; `flwr run` would rewrite it
