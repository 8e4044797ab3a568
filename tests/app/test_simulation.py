"""End-to-end simulations through our own SuperLink: run directory, resume, no leftovers.

Short runs on digits (10 clients, 3 a round, 2 local steps): ``half`` (2 rounds; the
unmarked end-to-end test) and, for the ``slow`` tests, ``full`` (4 rounds) and ``half``
resumed to 4 rounds. The fast resume-equivalence test is in test_server_inprocess.py.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from fedstrat.app import procs
from fedstrat.app.checkpoint import load_checkpoint
from fedstrat.app.config import ConfigError, RunConfig
from fedstrat.app.rundir import METRIC_COLUMNS, read_jsonl
from fedstrat.app.simulation import (
    RunResult,
    SimulationError,
    resume_config,
    run_simulation_job,
)

BASE = RunConfig(
    dataset="digits",
    num_clients=10,
    clients_per_round=3,
    rounds=4,
    local_steps=2,
    batch_size=16,
    seed=7,
    node_wait_timeout=60.0,
    round_timeout=300.0,
)


@pytest.fixture(scope="module")
def half(tmp_path_factory: pytest.TempPathFactory) -> RunResult:
    """A 2-round run (the end-to-end check, and the start of the resume check)."""
    root = tmp_path_factory.mktemp("sim")
    rounds_seen: list[int] = []
    res = run_simulation_job(
        dataclasses.replace(BASE, rounds=2, out=str(root / "half")),
        on_round=lambda rec: rounds_seen.append(rec["round"]),
        timeout=600,
    )
    assert rounds_seen == [1, 2]
    return res


@pytest.fixture(scope="module")
def runs(half: RunResult, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Uninterrupted 4 rounds, and the 2-round run resumed to 4 (slow tests only)."""
    root = tmp_path_factory.mktemp("sim-resume")
    full = run_simulation_job(dataclasses.replace(BASE, out=str(root / "full")), timeout=600)
    half_ckpt = load_checkpoint(half.run_dir)
    resumed = run_simulation_job(resume_config(half.run_dir, rounds=4), timeout=600)
    return {"full": full, "half": half, "resumed": resumed, "half_ckpt": half_ckpt}


def test_run_directory_has_every_file(half: RunResult) -> None:
    res = half
    d = res.run_dir
    for name in (
        "config.toml",
        "metrics.csv",
        "metrics.json",
        "sampling.jsonl",
        "model.pt",
        "plots/accuracy.png",
        "plots/variance.png",
        "progress.jsonl",
        "summary.json",
        "checkpoint/state.json",
        "logs/flower.log",
    ):
        assert (d / name).is_file() and (d / name).stat().st_size > 0, name
    assert not list(d.rglob("*.tmp")), "temporary files left behind"
    # config.toml reads back as the resolved configuration
    saved = RunConfig.from_toml(d / "config.toml")
    assert saved == dataclasses.replace(BASE, rounds=2, out=str(d))
    # metrics: round 0 (initial model) .. 2, every column, accuracy in [0, 1]
    rows = json.loads((d / "metrics.json").read_text())
    assert [r["round"] for r in rows] == [0, 1, 2]
    assert all(set(r) == set(METRIC_COLUMNS) for r in rows)
    assert all(0.0 <= r["accuracy"] <= 1.0 and r["loss"] > 0 for r in rows)
    assert all(r["train_loss"] is not None and r["n_selected"] == 3 for r in rows[1:])
    # predicted variances come with stratified rounds; FedAvg rounds (issue 11: the policy's
    # decision, recorded in sampling.jsonl) have none in metrics
    records = read_jsonl(d / "sampling.jsonl")
    assert all(rec["decision"]["mode"] in ("stratified", "fedavg") for rec in records)
    stratified = {rec["round"] for rec in records if rec["design"] in ("pps", "srswor")}
    assert all(r["pred_var"] is not None and r["pred_var_uniform"] is not None
               for r in rows[1:] if r["round"] in stratified)
    header = (d / "metrics.csv").read_text().splitlines()[0].split(",")
    assert tuple(header) == METRIC_COLUMNS
    assert res.metrics == rows
    # progress: start, 2 rounds, end; sampling: one record per round
    events = [e["event"] for e in read_jsonl(d / "progress.jsonl")]
    assert events == ["start", "round", "round", "end"]
    assert [r["round"] for r in read_jsonl(d / "sampling.jsonl")] == [1, 2]
    summary = json.loads((d / "summary.json").read_text())
    assert summary["rounds"] == 2 and summary["metric"] == "accuracy"
    assert summary["final"] == rows[-1]["accuracy"]
    assert summary["best"] == max(r["accuracy"] for r in rows)
    assert summary["unstable_nodes"] == 0 and summary["nodes"] == 10
    assert set(summary["runner"]) >= {"superlink_start_s", "total_s"}
    # model.pt is the final global model == the last checkpoint
    state = torch.load(d / "model.pt")
    ckpt = load_checkpoint(d)
    assert ckpt.round == 2 and list(state) == list(ckpt.arrays)
    for k, v in state.items():
        np.testing.assert_array_equal(v.numpy(), ckpt.arrays[k])
    assert (d / "plots/accuracy.png").read_bytes()[:4] == b"\x89PNG"
    # nothing that run started is still alive
    assert res.process_tag and procs.tagged_pids(res.process_tag) == []
    assert procs.child_pids() == []


@pytest.mark.slow
def test_resume_ends_with_the_same_model(runs: dict[str, Any]) -> None:
    assert runs["half_ckpt"].round == 2
    full, resumed = load_checkpoint(runs["full"].run_dir), load_checkpoint(runs["resumed"].run_dir)
    assert resumed.round == 4 and list(resumed.arrays) == list(full.arrays)
    for k in full.arrays:
        np.testing.assert_allclose(resumed.arrays[k], full.arrays[k], rtol=0, atol=1e-6)
    # the model really changed between round 2 and round 4 (the comparison is not vacuous)
    moved = max(
        float(np.abs(full.arrays[k] - runs["half_ckpt"].arrays[k]).max()) for k in full.arrays
    )
    assert moved > 1e-4
    # same selections in rounds 3-4, same metrics rows
    sel = [r["selected"] for r in read_jsonl(runs["full"].run_dir / "sampling.jsonl")]
    sel_r = [r["selected"] for r in read_jsonl(runs["resumed"].run_dir / "sampling.jsonl")]
    assert sel_r == sel
    rows_f = runs["full"].metrics
    rows_r = runs["resumed"].metrics
    assert [r["round"] for r in rows_r] == [0, 1, 2, 3, 4]
    for a, b in zip(rows_f, rows_r, strict=True):
        assert a["accuracy"] == pytest.approx(b["accuracy"], abs=1e-6)
    events = [e["event"] for e in read_jsonl(runs["resumed"].run_dir / "progress.jsonl")]
    assert events == ["start", "round", "round", "end", "start", "round", "round", "end"]
    assert runs["resumed"].summary["resumed_from"] == 2


@pytest.mark.slow
def test_no_process_is_left_behind(runs: dict[str, Any]) -> None:
    for res in (runs["full"], runs["half"], runs["resumed"]):
        assert res.process_tag and procs.tagged_pids(res.process_tag) == []
    assert procs.child_pids() == []


@pytest.mark.slow
def test_failing_app_raises_and_leaves_nothing(tmp_path: Path) -> None:
    # "mnist" needs IDX files: the ServerApp fails while loading data
    cfg = dataclasses.replace(
        BASE, dataset="mnist", data_root=str(tmp_path / "empty"), out=str(tmp_path / "run")
    )
    (tmp_path / "empty").mkdir()
    with pytest.raises(SimulationError, match="simulation failed"):
        run_simulation_job(cfg, timeout=300)
    assert procs.child_pids() == []
    events = read_jsonl(tmp_path / "run" / "progress.jsonl")
    assert events[-1]["event"] == "error"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"selection": "random"}, "unknown selection"),
        ({"clients_per_round": 50}, "exceeds num-clients"),
        ({"resume": "/nonexistent/run"}, "no checkpoint found"),
        pytest.param({"device": "cuda"}, "no CUDA device is visible",
                     marks=pytest.mark.skipif(torch.cuda.is_available(), reason="has a GPU")),
    ],
)
def test_bad_config_raises_before_anything_is_written(
    tmp_path: Path, change: dict, message: str
) -> None:
    out = tmp_path / "run"
    with pytest.raises(ConfigError, match=message):
        run_simulation_job(dataclasses.replace(BASE, out=str(out), **change))
    assert not out.exists()
    assert procs.child_pids() == []


def test_existing_run_dir_and_resume_mismatch_are_refused(tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "something").write_text("x")
    with pytest.raises(ConfigError, match="not empty"):
        run_simulation_job(dataclasses.replace(BASE, out=str(out)))
    # a fake checkpointed run whose saved config differs in lr
    ck = tmp_path / "old"
    (ck / "checkpoint").mkdir(parents=True)
    (ck / "checkpoint" / "state.json").write_text(json.dumps({"round": 1}))
    (ck / "config.toml").write_text(
        "\n".join(f"{k} = {json.dumps(v)}" for k, v in BASE.to_flower().items())
    )
    assert RunConfig.from_toml(ck / "config.toml").lr == BASE.lr
    with pytest.raises(ConfigError, match="lr"):
        run_simulation_job(dataclasses.replace(BASE, lr=0.5, resume=str(ck)))
    with pytest.raises(ConfigError, match="round 1 > rounds=0|rounds must be >= 1"):
        run_simulation_job(dataclasses.replace(BASE, rounds=0, resume=str(ck)))
    assert sorted(p.name for p in ck.iterdir()) == ["checkpoint", "config.toml"]
