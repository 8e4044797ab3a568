"""Process bookkeeping (fedstrat.app.procs): a process-tree snapshot stops orphans that do not
carry the marker, and never a process that merely reuses a PID."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid

from fedstrat.app import procs


def _wait_gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pid not in procs.process_tree([pid]):
            return True
        time.sleep(0.05)
    return False


def test_snapshot_stops_an_orphan_without_the_marker() -> None:
    parent = subprocess.Popen(["bash", "-c", "sleep 60 & echo $!; wait"], stdout=subprocess.PIPE)
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    tree = procs.process_tree([parent.pid])
    assert set(tree) == {parent.pid, child}
    os.kill(parent.pid, signal.SIGKILL)  # the child is orphaned (re-parented away from us)
    parent.wait()
    assert child in procs.process_tree([child])  # still running, and not a child of ours
    assert child not in procs.child_pids()
    marker = uuid.uuid4().hex  # nothing carries it
    procs.terminate_marked("FEDSTRAT_TEST_NOTHING", marker, grace=5.0, also=tree)
    assert _wait_gone(child)


def test_snapshot_does_not_touch_a_reused_pid() -> None:
    proc = subprocess.Popen(["sleep", "60"])
    try:
        (start,) = procs.process_tree([proc.pid]).values()
        # the same PID with another start time: a different process
        procs.terminate_marked("FEDSTRAT_TEST_NOTHING", "x", grace=0.5, also={proc.pid: start + 1})
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait()
