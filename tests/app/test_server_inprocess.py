"""The ServerApp's job (``run_server``) in-process: real ClientApp handlers behind an
in-process Grid (no SuperLink, no Ray), with random Flower node ids that change between runs.

Covers the run directory, checkpoints and resume equivalence quickly; test_simulation.py runs
the same job through a real SuperLink.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fedstrat.app.checkpoint import load_checkpoint
from fedstrat.app.config import RunConfig
from fedstrat.app.rundir import read_jsonl
from fedstrat.app.server_app import run_server
from fedstrat.clients.client_app import app as client_app
from fedstrat.strategies import LocalGrid
from fedstrat.strategies.local_grid import client_app_handler

BASE = RunConfig(
    dataset="digits",
    num_clients=10,
    clients_per_round=3,
    rounds=4,
    local_steps=2,
    batch_size=16,
    seed=11,
    node_wait_timeout=5.0,
    round_timeout=30.0,
)


def make_grid(cfg: RunConfig, id_seed: int) -> LocalGrid:
    """10 nodes with random 62-bit Flower ids (different for each ``id_seed``)."""
    rng = np.random.default_rng(id_seed)
    flower_ids = [int(x) for x in rng.integers(2**40, 2**62, size=cfg.num_clients)]
    return LocalGrid(flower_ids, client_app_handler(client_app, flower_ids, cfg.to_flower()))


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("inproc")
    full = dataclasses.replace(BASE, out=str(root / "full"))
    run_server(make_grid(full, 1), full)
    half = dataclasses.replace(BASE, rounds=2, out=str(root / "half"))
    run_server(make_grid(half, 2), half)
    resumed = dataclasses.replace(BASE, out=str(root / "half"), resume=str(root / "half"))
    run_server(make_grid(resumed, 3), resumed)
    return {"full": root / "full", "resumed": root / "half"}


def test_resume_matches_uninterrupted_run(runs: dict[str, Path]) -> None:
    full, resumed = load_checkpoint(runs["full"]), load_checkpoint(runs["resumed"])
    assert full.round == resumed.round == 4
    for k in full.arrays:
        np.testing.assert_allclose(resumed.arrays[k], full.arrays[k], rtol=0, atol=1e-6)
    # the final model files agree too
    a, b = torch.load(runs["full"] / "model.pt"), torch.load(runs["resumed"] / "model.pt")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    sel_f = [r["selected"] for r in read_jsonl(runs["full"] / "sampling.jsonl")]
    sel_r = [r["selected"] for r in read_jsonl(runs["resumed"] / "sampling.jsonl")]
    assert sel_f == sel_r and len(sel_f) == 4
    rows_f = json.loads((runs["full"] / "metrics.json").read_text())
    rows_r = json.loads((runs["resumed"] / "metrics.json").read_text())
    assert [r["accuracy"] for r in rows_f] == pytest.approx([r["accuracy"] for r in rows_r])
    assert json.loads((runs["resumed"] / "summary.json").read_text())["resumed_from"] == 2


def test_a_resumed_runs_time_counts_the_rounds_before_the_resume(tmp_path: Path) -> None:
    half = dataclasses.replace(BASE, rounds=2, out=str(tmp_path / "run"))
    run_server(make_grid(half, 2), half)
    state = tmp_path / "run" / "checkpoint" / "state.json"
    saved = json.loads(state.read_text())
    saved["elapsed"] = 1000.0  # as if its first two rounds had taken 1,000 s
    state.write_text(json.dumps(saved))
    resumed = dataclasses.replace(BASE, rounds=3, out=half.out, resume=half.out)
    run_server(make_grid(resumed, 3), resumed)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["wall_seconds"] > 1000.0  # it counted only the resumed part


def test_stable_ids_do_not_depend_on_flower_ids(runs: dict[str, Path]) -> None:
    summary = json.loads((runs["full"] / "summary.json").read_text())
    assert summary["unstable_nodes"] == 0 and summary["nodes"] == 10
    for rec in read_jsonl(runs["full"] / "sampling.jsonl"):
        assert all(1 <= int(n) <= 10 for n in rec["selected"])


def test_model_changes_and_learns(runs: dict[str, Path]) -> None:
    rows = json.loads((runs["full"] / "metrics.json").read_text())
    assert [r["round"] for r in rows] == [0, 1, 2, 3, 4]
    assert rows[-1]["loss"] < rows[0]["loss"]


def test_a_round_cut_short_by_a_stop_is_not_recorded_and_resume_matches(
    runs: dict[str, Path], tmp_path: Path
) -> None:
    """The runner writes rundir.STOP_FILE before it stops the processes (SIGTERM, Ctrl-C):
    the round under way when it appears is not checkpointed (its replies may have failed in the
    shutdown), the ServerApp stops with RunStopped, and the resumed run is the uninterrupted
    one."""
    from fedstrat.app.rundir import STOP_FILE
    from fedstrat.app.server_app import RunStopped

    cfg = dataclasses.replace(BASE, out=str(tmp_path / "stopped"))
    grid = make_grid(cfg, 4)
    push, trains = grid.push_messages, []

    def stopping_during_round_3(messages):
        msgs = list(messages)
        ids = list(push(msgs))
        if msgs and msgs[0].metadata.message_type == "train":
            trains.append(1)
            if len(trains) == 3:  # the shutdown arrives while round 3 is under way
                (tmp_path / "stopped" / STOP_FILE).touch()
        return ids

    grid.push_messages = stopping_during_round_3  # the ServerApp's grid pushes, then pulls
    with pytest.raises(RunStopped, match="round 3 not recorded"):
        run_server(grid, cfg)
    assert load_checkpoint(tmp_path / "stopped").round == 2
    assert not (tmp_path / "stopped" / "summary.json").exists()
    (tmp_path / "stopped" / STOP_FILE).unlink()  # the runner removes it when a run starts
    resumed = dataclasses.replace(cfg, resume=str(tmp_path / "stopped"))
    run_server(make_grid(resumed, 5), resumed)
    full, back = load_checkpoint(runs["full"]), load_checkpoint(tmp_path / "stopped")
    assert back.round == 4
    for k in full.arrays:
        np.testing.assert_allclose(back.arrays[k], full.arrays[k], rtol=0, atol=1e-6)
