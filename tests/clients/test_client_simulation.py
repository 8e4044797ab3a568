"""The ClientApp under Flower's Ray simulation engine (slow, opt-in: ``pytest -m slow``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fedstrat.data import load_dataset, partition_dataset

pytestmark = pytest.mark.slow


def test_client_app_in_ray_simulation(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    if "slow" not in (request.config.getoption("-m") or ""):
        pytest.skip("about 100 s with Ray start-up: run with `pytest -m slow`")
    out = tmp_path / "out.json"
    script = Path(__file__).with_name("sim_client_check.py")
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0"}
    proc = subprocess.Popen(
        [sys.executable, str(script), str(out)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        log, _ = proc.communicate(timeout=500)
    except subprocess.TimeoutExpired:
        proc.kill()
        log, _ = proc.communicate()
        pytest.fail("simulation did not finish in 500 s:\n" + log.decode()[-3000:])
    assert proc.returncode == 0 and out.is_file(), log.decode()[-3000:]
    res = json.loads(out.read_text())

    part = partition_dataset(load_dataset("mnist5k", seed=0), "dirichlet", 3, alpha=0.1, seed=0)
    assert res["nodes"] == 3
    by_pid = {p["partition-id"]: p for p in res["profiles"]}
    assert sorted(by_pid) == [0, 1, 2]
    for pid, prof in by_pid.items():
        assert prof["num-examples"] == part.sizes[pid] == sum(prof["label-hist"])
        assert prof["label-hist"] == [float(c) for c in part.label_histograms[pid]]
    ok = [r for r in res["train"] if "error" not in r]
    errors = [r for r in res["train"] if "error" in r]
    assert sorted(r["num-examples"] for r in ok) == sorted(int(s) for s in part.sizes)
    assert all(r["train-steps"] == 5 for r in ok)
    assert len(errors) == 1 and "no ArrayRecord 'arrays'" in errors[0]["error"]
