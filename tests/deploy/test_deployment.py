"""fedstrat on Flower's Deployment Engine: a real TLS SuperLink + 3 authenticated SuperNodes.

All tests of this module share ONE federation (module fixture; starting one costs ~10-20 s) and
run in file order: integration run (also the uninterrupted reference for resume), resume,
malformed updates, a SuperNode killed mid-run, and finally a check that every process the
federation started is gone. Everything binds to 127.0.0.1. Each run is bounded by a timeout.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from fedstrat.app.fileio import read_jsonl
from fedstrat.app.rundir import PROGRESS_FILE
from fedstrat.cli.deploy import app_dir
from fedstrat.deploy.local import FederationError, LocalFederation, find_marked_processes

pytestmark = pytest.mark.deploy

RUN_TIMEOUT = 300.0  # seconds, per run (a healthy 2-round run takes ~30-50 s on 2 idle cores)

#: A small, fast job on real data: sklearn digits (8x8) in 3 Dirichlet(1.0) partitions, one per
#: SuperNode; an MLP learns visibly in a few rounds with lr 0.2.
BASE: dict[str, Any] = {
    "dataset": "digits",
    "model": "mlp",
    "partition": "dirichlet",
    "alpha": 1.0,
    "num-clients": 3,
    "clients-per-round": 2,
    "local-epochs": 1,
    "lr": 0.2,
    "batch-size": 32,
    "seed": 0,
    "node-wait-timeout": 60.0,
    "round-timeout": 120.0,
}

_shared: dict[str, Path] = {}


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Any:
    workdir = tmp_path_factory.mktemp("federation")
    # The SuperExecs (SuperLink's and each SuperNode's) poll for new ServerApp / ClientApp
    # tasks every 0.1 s instead of Flower's 1 s: every round starts its ClientApps sooner.
    fast = {"FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.1"}
    fed = LocalFederation(
        3, tls=True, auth=True, workdir=workdir, startup_timeout=120.0, env=fast
    )
    with fed:
        yield fed


def _run(fed: LocalFederation, out: Path, app: Path | None = None, **overrides: Any) -> Any:
    cfg = dict(BASE, out=str(out), **overrides)
    result = fed.run(app or app_dir(), cfg, timeout=RUN_TIMEOUT)
    if not result.ok:
        log = result.log_path.read_text() if result.log_path else ""
        pytest.fail(f"run {result.run_id} ended {result.status}:\n{log[-4000:]}")
    return result


def _metrics(run_dir: Path) -> list[dict[str, Any]]:
    return json.loads((run_dir / "metrics.json").read_text())


def _records(run_dir: Path) -> list[dict[str, Any]]:
    lines = (run_dir / "sampling.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def _model(run_dir: Path) -> dict[str, np.ndarray]:
    state = torch.load(run_dir / "model.pt", map_location="cpu", weights_only=True)
    return {k: v.numpy() for k, v in state.items()}


def _reference(fed: LocalFederation, tmp: Path) -> Path:
    """The uninterrupted 2-round run (made by the integration test, or here if run alone)."""
    if "reference" not in _shared:
        _run(fed, tmp / "reference", rounds=2)
        _shared["reference"] = tmp / "reference"
    return _shared["reference"]


def test_federation_is_up_with_tls_and_auth(federation: LocalFederation) -> None:
    assert federation.address.startswith("127.0.0.1:")
    assert len(federation.node_ids) == 3  # one registered public key per SuperNode
    log = federation.superlink.log_path.read_text()
    assert "https://127.0.0.1" in log  # served over TLS
    for i in range(3):
        text = federation.supernodes[i].log_path.read_text()
        assert f"SuperNode ID: {federation.node_ids[i]}" in text  # authenticated identity


def test_integration_stratified_fedavg_improves(
    federation: LocalFederation, tmp_path_factory: pytest.TempPathFactory
) -> None:
    run_dir = _reference(federation, tmp_path_factory.mktemp("integration"))
    for name in (
        "config.toml",
        "metrics.csv",
        "metrics.json",
        "sampling.jsonl",
        "model.pt",
        "summary.json",
        "progress.jsonl",
    ):
        assert (run_dir / name).is_file(), name
    rows = _metrics(run_dir)
    assert [r["round"] for r in rows] == [0, 1, 2]
    acc0, acc_end = rows[0]["accuracy"], rows[-1]["accuracy"]
    assert acc_end >= acc0 + 0.2, (acc0, acc_end)
    assert rows[-1]["loss"] < rows[0]["loss"]
    records = _records(run_dir)
    assert [r["round"] for r in records] == [1, 2]
    for rec in records:
        assert rec["selection"] == "stratified"
        assert len(rec["selected"]) == 2  # clients-per-round of 3 SuperNodes
        assert sorted(rec["responders"]) == sorted(rec["selected"])
        assert not rec["failures"] and not rec["rejected"]
    for value in _model(run_dir).values():
        assert np.isfinite(value).all()


def test_resume_through_deployment_matches_uninterrupted(
    federation: LocalFederation, tmp_path_factory: pytest.TempPathFactory
) -> None:
    tmp = tmp_path_factory.mktemp("resume")
    reference = _reference(federation, tmp)
    part = tmp / "interrupted"
    _run(federation, part, rounds=1)
    assert [r["round"] for r in _metrics(part)] == [0, 1]
    # one round after the resume: its selection, model and metrics all depend on what the
    # checkpoint restored (model, strategy state, generators)
    _run(federation, part, rounds=2, resume=str(part))
    assert [r["round"] for r in _metrics(part)] == [0, 1, 2]
    ref_records, part_records = _records(reference), _records(part)
    assert [r["selected"] for r in part_records] == [r["selected"] for r in ref_records]
    ref_model, resumed = _model(reference), _model(part)
    assert ref_model.keys() == resumed.keys()
    for key in ref_model:
        np.testing.assert_allclose(resumed[key], ref_model[key], rtol=0, atol=1e-6, err_msg=key)
    ref_acc = [r["accuracy"] for r in _metrics(reference)]
    assert [r["accuracy"] for r in _metrics(part)] == pytest.approx(ref_acc, abs=1e-6)


def test_malformed_updates_are_rejected(
    federation: LocalFederation, tmp_path_factory: pytest.TempPathFactory
) -> None:
    tmp = tmp_path_factory.mktemp("faulty")
    app = tmp / "faulty_app"
    app.mkdir()
    pyproject = (app_dir() / "pyproject.toml").read_text()
    assert 'clientapp = "fedstrat.clients.client_app:app"' in pyproject
    pyproject = pyproject.replace(
        'clientapp = "fedstrat.clients.client_app:app"', 'clientapp = "faulty_client:app"'
    ).replace('name = "fedstrat-app"', 'name = "fedstrat-faulty-app"')
    (app / "pyproject.toml").write_text(pyproject)
    shutil.copy(Path(__file__).with_name("faulty_client.py"), app / "faulty_client.py")

    run_dir = tmp / "run"
    # Every node every round: partition 0 sends NaN, partition 1 a wrong shape, 2 is honest.
    _run(federation, run_dir, app=app, rounds=2, **{"clients-per-round": 3})
    records = _records(run_dir)
    assert len(records) == 2
    rec = records[0]
    assert len(rec["selected"]) == 3
    assert len(rec["rejected"]) == 2, rec["rejected"]
    assert len(rec["responders"]) == 1
    reasons = " ".join(json.dumps(r) for r in rec["rejected"]).lower()
    assert "nan" in reasons or "finite" in reasons, reasons
    assert "shape" in reasons, reasons
    # then the two sit out (fedstrat.strategies.bench): round 2 trains the honest node alone
    second = records[1]
    assert sorted(second["benched"]) == sorted(r["node"] for r in rec["rejected"])
    assert second["selected"] == rec["responders"] == second["responders"]
    assert not second["rejected"]
    rows = _metrics(run_dir)
    assert all(np.isfinite(r["loss"]) for r in rows)
    assert rows[-1]["accuracy"] > rows[0]["accuracy"]  # the honest update still helps
    for value in _model(run_dir).values():
        assert np.isfinite(value).all()


def _progress_rounds(run_dir: Path) -> list[int]:
    """Rounds finished so far, from the run's live ``progress.jsonl`` (partial line ignored)."""
    events = read_jsonl(run_dir / PROGRESS_FILE)
    return [int(ev["round"]) for ev in events if ev.get("event") == "round"]


def _wait_for(cond: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.1)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


def _kill_round_timeout() -> float:
    if "reference" not in _shared:
        return 90.0
    seconds = [r["seconds"] for r in _metrics(_shared["reference"])[2:] if r.get("seconds")]
    return float(min(150.0, max(65.0, 3.0 * max(seconds, default=30.0))))


def test_killed_supernode_run_completes_and_restarted_node_rejoins(
    federation: LocalFederation, tmp_path_factory: pytest.TempPathFactory
) -> None:
    tmp = tmp_path_factory.mktemp("kill")
    run_dir = tmp / "run"
    victim = 2
    # round-timeout: longer than the SuperLink needs to notice the SIGKILLed SuperNode (two
    # missed heartbeats, <= 60 s; it then answers for it with an error reply, which ends round
    # 2) and than 3x an honest round (~10-20 s on 2 idle cores, 30-50 s when heavily loaded).
    # Then the crashed node is offline when round 2 ends, its restart is accepted at once and
    # it is back for round 3.
    cfg = dict(BASE, out=str(run_dir), rounds=3, **{"clients-per-round": 3})
    cfg["round-timeout"] = _kill_round_timeout()
    run_id = federation.submit(app_dir(), cfg)
    try:
        _wait_for(lambda: 1 in _progress_rounds(run_dir), RUN_TIMEOUT, "round 1")
        federation.kill_supernode(victim, signal.SIGKILL)  # a crash, mid-run
        _wait_for(lambda: 2 in _progress_rounds(run_dir), RUN_TIMEOUT, "round 2")
        # Same key -> same Flower node id; the SuperLink accepts it again once it has marked
        # the crashed session offline (start_supernode retries until then).
        federation.start_supernode(victim, timeout=150.0)
        result = federation.wait(run_id, timeout=RUN_TIMEOUT)
    finally:
        if not federation.supernodes[victim].alive():
            with contextlib.suppress(FederationError):
                federation.start_supernode(victim, timeout=150.0)
    assert result.ok, result
    records = _records(run_dir)
    assert [r["round"] for r in records] == [1, 2, 3]
    # The grid gives node ids 1 + partition-id, so the victim is node 3 in the records.
    victim_id = victim + 1
    assert victim_id in records[0]["responders"]
    rec2 = records[1]
    assert victim_id in [f["node"] for f in rec2["failures"]], rec2["failures"]
    assert victim_id not in rec2["responders"]
    assert rec2["responders"], "the surviving nodes should have been aggregated"
    # The survivors carry the crashed node's share: HT weights rescaled within the stratum.
    assert sum(rec2["weights"]) == pytest.approx(sum(records[0]["weights"]), rel=0.5)
    assert any("failed" in note or "rescaled" in note for note in rec2["notes"]), rec2["notes"]
    rejoined = [r["round"] for r in records[2:] if victim_id in r["responders"]]
    assert rejoined, "restarted SuperNode never answered again"
    rows = _metrics(run_dir)
    assert rows[-1]["accuracy"] > rows[0]["accuracy"]
    assert rows[2]["n_failed"] >= 1
    _shared["kill"] = run_dir


def test_failure_record_blames_only_the_crashed_node() -> None:
    """The SuperLink answers for a dead node with an error reply whose sender is the SuperLink
    itself (``SUPERLINK_NODE_ID`` = 1); it must be attributed to the node the instruction was
    sent to (via ``reply_to``), never to a node that answered."""
    if "kill" not in _shared:
        pytest.skip(
            "needs the run of test_killed_supernode_run_completes_and_restarted_node_rejoins"
        )
    for rec in _records(_shared["kill"]):
        failed = {f["node"] for f in rec["failures"]}
        assert not failed & set(rec["responders"]), (rec["round"], rec["failures"])
        assert failed <= set(rec["selected"]), (rec["round"], rec["failures"])


def test_stop_leaves_no_process_behind(federation: LocalFederation) -> None:
    marker = federation.marker
    assert federation.pids(), "federation should be running before stop"
    port = int(federation.address.rsplit(":", 1)[1])
    federation.stop()
    assert find_marked_processes(marker) == []
    for proc in [federation.superlink, *federation.supernodes.values()]:
        assert proc is not None and proc.popen.poll() is not None
    import socket

    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0  # SuperLink port closed
