"""A deployment across network namespaces, as on separate machines.

The test makes its own network: namespaces ``<tag>-sw`` (a bridge: the switch), ``<tag>-sl``
(the SuperLink, 10.231.0.1, and this test's driver thread with the ``flwr`` CLI) and
``<tag>-n<i>`` (SuperNode i, 10.231.0.1<i>), joined by veth pairs created directly inside those
namespaces. Nothing is added to the host's namespace, and the test subnet 10.231.0.0/24 exists
only in them, so all traffic stays inside. TLS certificates are issued for 10.231.0.1,
SuperNodes authenticate with their keys. Scenario: 3 of 4 SuperNodes are online when the run is
submitted, the 4th joins after round 1 (and trains from the next round that sees it); the link of
SuperNode 1 is cut (switch port down) after round 2, during round 3; the run still finishes all
its rounds, the cut node being reported as failed (then offline) and the rounds completing
without it. Everything is removed at the end.

Needs root (``ip netns``); skipped with the reason otherwise. ``pytest -m deploy -k netns``.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fedstrat.app.fileio import read_jsonl
from fedstrat.app.rundir import PROGRESS_FILE
from fedstrat.cli.deploy import app_dir
from fedstrat.deploy.certs import generate_certificates
from fedstrat.deploy.local import LocalFederation, find_marked_processes

# deploy (real SuperLink/SuperNodes) and slow (~2-7 min): not in the default run, whose
# addopts deselect slow tests; `pytest -m deploy -k netns` selects it.
pytestmark = [pytest.mark.deploy, pytest.mark.slow]

CLONE_NEWNET = 0x40000000
SUBNET = "10.231.0"
SUPERLINK_IP = f"{SUBNET}.1"
NODES = 4
ROUNDS = 5
RUN_TIMEOUT = 600.0
BASE: dict[str, Any] = {
    "dataset": "digits",
    "model": "mlp",
    "partition": "dirichlet",
    "alpha": 1.0,
    "num-clients": NODES,
    "clients-per-round": NODES,
    "local-epochs": 1,
    "lr": 0.2,
    "batch-size": 32,
    "seed": 0,
    "rounds": ROUNDS,
    # round 1 waits this long for all 4 nodes, then goes on with those there
    "node-wait-timeout": 20.0,
    # longer than the SuperLink needs to notice a silent node (two missed heartbeats)
    "round-timeout": 90.0,
}


def ip(*args: str) -> None:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {proc.stderr.strip()}")


class NetnsNetwork:
    """The namespaces, bridge and veth pairs of one test (removed by :meth:`remove`)."""

    def __init__(self, nodes: int) -> None:
        tag = "fs" + uuid.uuid4().hex[:6]
        self.switch = f"{tag}-sw"
        self.superlink = f"{tag}-sl"
        self.nodes = [f"{tag}-n{i}" for i in range(nodes)]
        self.created: list[str] = []

    def port(self, i: int | None) -> str:
        """The switch port of SuperNode ``i`` (None: the SuperLink)."""
        return "psl" if i is None else f"pn{i}"

    def build(self) -> None:
        for ns in (self.switch, self.superlink, *self.nodes):
            ip("netns", "add", ns)
            self.created.append(ns)
            ip("-n", ns, "link", "set", "lo", "up")
        ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        ip("-n", self.switch, "link", "set", "br0", "up")
        hosts = [(self.superlink, None, SUPERLINK_IP)]
        hosts += [(ns, i, f"{SUBNET}.{11 + i}") for i, ns in enumerate(self.nodes)]
        for ns, i, addr in hosts:
            port = self.port(i)
            ip("-n", self.switch, "link", "add", port, "type", "veth", "peer", "name", "eth0",
               "netns", ns)
            ip("-n", self.switch, "link", "set", port, "master", "br0", "up")
            ip("-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0")
            ip("-n", ns, "link", "set", "eth0", "up")

    def cut(self, i: int) -> None:
        """Take SuperNode ``i``'s switch port down: its link is cut."""
        ip("-n", self.switch, "link", "set", self.port(i), "down")

    def remove(self) -> None:
        for ns in reversed(self.created):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
        self.created.clear()

    @staticmethod
    def inode(ns: str) -> int:
        return os.stat(f"/run/netns/{ns}").st_ino


def run_in_namespace(ns: str, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` in a new thread that has joined network namespace ``ns`` (setns(2) affects
    only the calling thread; processes it starts inherit the namespace). Re-raises errors."""
    libc = ctypes.CDLL(None, use_errno=True)
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
            try:
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns({ns})")
            finally:
                os.close(fd)
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            box["error"] = exc

    thread = threading.Thread(target=target, name=f"netns-{ns}")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box.get("value")


@pytest.fixture
def network() -> Iterator[NetnsNetwork]:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("network namespaces need root and iproute2 (`ip netns`)")
    net = NetnsNetwork(NODES)
    try:
        net.build()
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        net.remove()
        pytest.skip(f"cannot create network namespaces here: {exc}")
    try:
        yield net
    finally:
        net.remove()
        leftover = set(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else set()
        assert not leftover & {net.switch, net.superlink, *net.nodes}


def progress_rounds(run_dir: Path) -> list[int]:
    """Rounds finished so far, from the run's live ``progress.jsonl`` (partial line ignored)."""
    events = read_jsonl(run_dir / PROGRESS_FILE)
    return [int(ev["round"]) for ev in events if ev.get("event") == "round"]


def wait_for(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def test_federation_across_network_namespaces(network: NetnsNetwork, tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    generate_certificates(certs, hosts=[SUPERLINK_IP], num_supernodes=NODES, overwrite=True)
    run_dir = tmp_path / "run"
    late, cut = NODES - 1, 1
    host_ns = os.stat("/proc/self/ns/net").st_ino  # this (main) thread's namespace

    def scenario() -> dict[str, Any]:
        fed = LocalFederation(
            NODES, tls=True, auth=True, certs_dir=certs, workdir=tmp_path / "fed",
            host=SUPERLINK_IP, startup_timeout=180.0,
            supernode_prefix=lambda i: ["ip", "netns", "exec", network.nodes[i]],
        )
        with fed:
            assert fed.address.startswith(SUPERLINK_IP + ":")
            for i, proc in fed.supernodes.items():  # each SuperNode in its own namespace
                assert os.stat(f"/proc/{proc.pid}/ns/net").st_ino == network.inode(
                    network.nodes[i]
                )
            assert fed.superlink is not None
            sl_ns = os.stat(f"/proc/{fed.superlink.pid}/ns/net").st_ino
            assert sl_ns == network.inode(network.superlink) != host_ns
            fed.kill_supernode(late, signal.SIGTERM)  # offline when the run starts
            run_id = fed.submit(app_dir(), dict(BASE, out=str(run_dir)))
            wait_for(lambda: 1 in progress_rounds(run_dir), RUN_TIMEOUT, "round 1")
            fed.start_supernode(late, timeout=150.0)  # joins late
            wait_for(lambda: 2 in progress_rounds(run_dir), RUN_TIMEOUT, "round 2")
            network.cut(cut)  # mid-run: round 3 has started
            result = fed.wait(run_id, timeout=RUN_TIMEOUT)
            return {"result": result, "marker": fed.marker}

    out = run_in_namespace(network.superlink, scenario)
    assert find_marked_processes(out["marker"]) == []  # every process of the federation ended
    result = out["result"]
    assert result.ok, f"run ended {result.status}"
    records = [json.loads(line) for line in (run_dir / "sampling.jsonl").read_text().splitlines()
               if line.strip()]
    assert [r["round"] for r in records] == list(range(1, ROUNDS + 1))
    # records name nodes 1 + partition-id (as in test_deployment.py)
    late_id, cut_id = late + 1, cut + 1
    assert records[0]["n_available"] == NODES - 1 and late_id not in records[0]["selected"]
    joined = [r["round"] for r in records if late_id in r["responders"]]
    assert joined and min(joined) >= 2, f"the late node never trained: {records}"
    assert cut_id in records[1]["responders"]  # round 2, before the cut
    after = records[2:]
    failed = [r["round"] for r in after if cut_id in {f["node"] for f in r["failures"]}]
    absent = [r["round"] for r in after if cut_id not in r["selected"]]
    assert failed, f"the cut node never failed: {after}"
    assert all(cut_id not in r["responders"] for r in after)  # never heard from again
    assert all(len(r["responders"]) >= NODES - 2 for r in after)  # rounds completed without it
    assert set(failed) | set(absent) == {r["round"] for r in after}
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert [m["round"] for m in metrics if m["round"] >= 1] == list(range(1, ROUNDS + 1))
