"""``fedstrat simulate --ray-address``: a one-round simulation attached to a Ray cluster that the
test starts itself (``ray start --head`` on a free port, private temp dir) and stops by PID.

Slow (Ray start-up): run with ``pytest -m slow -k ray``. Only the processes started here are
stopped (found by an environment marker), never with ``ray stop``, which would stop every Ray
process of the machine.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedstrat.app.config import RunConfig
from fedstrat.app.flower_local import COMPLETED
from fedstrat.app.procs import marked_pids, terminate_marked
from fedstrat.app.simulation import run_simulation_job

pytestmark = pytest.mark.slow
MARKER = "FEDSTRAT_RAY_TEST_TAG"

BASE = RunConfig(
    dataset="synthetic",
    synthetic_samples=2000,
    synthetic_features=8,
    synthetic_classes=4,
    num_clients=6,
    clients_per_round=3,
    rounds=1,
    local_steps=2,
    batch_size=16,
    seed=3,
    node_wait_timeout=60.0,
    round_timeout=300.0,
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def ray_cluster() -> Iterator[tuple[str, Path]]:
    """``(address, session logs dir)`` of a fresh single-node Ray cluster (2 CPUs)."""
    ray = Path(sys.executable).parent / "ray"
    if not ray.is_file():
        pytest.skip(f"no ray executable next to the interpreter ({ray})")
    tag = uuid.uuid4().hex
    temp_dir = Path(tempfile.mkdtemp(prefix="fsray-", dir="/tmp"))  # short: socket paths
    port = free_port()
    env = {**os.environ, MARKER: tag, "RAY_USAGE_STATS_ENABLED": "0"}
    cmd = [str(ray), "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1",
           "--num-cpus=2", "--include-dashboard=false", f"--temp-dir={temp_dir}",
           "--disable-usage-stats"]
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
        if proc.returncode != 0:
            pytest.fail(f"ray start failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        assert marked_pids(MARKER, tag), "ray start left no process running"
        yield f"127.0.0.1:{port}", temp_dir / "session_latest" / "logs"
    finally:
        killed = terminate_marked(MARKER, tag, grace=10.0)
        shutil.rmtree(temp_dir, ignore_errors=True)
        assert not marked_pids(MARKER, tag), f"Ray processes left running (SIGKILLed: {killed})"


def test_simulation_attaches_to_a_running_ray_cluster(ray_cluster, tmp_path):
    address, logs = ray_cluster
    before = {p.name for p in logs.glob("python-core-driver-*")}
    t0 = time.perf_counter()
    res = run_simulation_job(
        dataclasses.replace(BASE, ray_address=address, out=str(tmp_path / "run")), timeout=600
    )
    assert res.status == COMPLETED, res.details
    rounds = [m for m in res.metrics if m["round"] >= 1]  # round 0: the initial evaluation
    assert [m["round"] for m in rounds] == [1] and rounds[0]["n_selected"] == 3
    # the simulation's Ray driver connected to this cluster, and its ClientApp actors ran there
    drivers = {p.name for p in logs.glob("python-core-driver-*")} - before
    assert drivers, f"no Ray driver connected to the cluster at {address} ({logs})"
    assert any(logs.glob("worker-*")), "no Ray worker ran on the cluster"
    assert time.perf_counter() - t0 < 600
