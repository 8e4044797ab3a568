"""Process bookkeeping for the local-Flower launcher (Linux ``/proc``; no psutil needed).

Every process :mod:`fedstrat.app.flower_local` starts gets a unique marker in its environment
(``FEDSTRAT_SIM_TAG=<uuid>`` for a simulation, ``FEDSTRAT_FEDERATION_ID=<uuid>`` for
``deploy local``). Children inherit it, also those that start their own session
(Flower's SuperExec, Ray's raylet/GCS/workers), so :func:`marked_pids` finds all of them even
when they are no longer in our process tree or process group.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

TAG_ENV = "FEDSTRAT_SIM_TAG"


def _environ(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return b""


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    # state is the field after the ")" that closes the command name
    return stat.rsplit(")", 1)[-1].split()[0] in ("Z", "X")


def marked_pids(env_name: str, value: str) -> list[int]:
    """PIDs of live (non-zombie) processes whose environment holds ``env_name=value``.

    Reads ``/proc/<pid>/environ`` (Linux); processes of other users are skipped silently.
    """
    needle = f"{env_name}={value}".encode()
    me = os.getpid()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        if pid == me:
            continue
        env = _environ(pid)
        if env and needle in env.split(b"\0") and not _is_zombie(pid):
            found.append(pid)
    return sorted(found)


def tagged_pids(tag: str) -> list[int]:
    """PIDs of live (non-zombie) processes whose environment holds ``FEDSTRAT_SIM_TAG=tag``."""
    return marked_pids(TAG_ENV, tag)


def _start_time(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot (``/proc/<pid>/stat`` field 22), None if
    the process is gone or a zombie: with the PID it identifies one process (PIDs are reused)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()
    except OSError:
        return None
    return None if fields[0] in ("Z", "X") else int(fields[19])


def process_tree(roots: list[int]) -> dict[int, int]:
    """``{pid: start time}`` of ``roots`` and all their live descendants right now.

    A snapshot for :func:`terminate_marked`: some descendants do not show the marker in
    ``/proc/<pid>/environ`` (seen with Ray's dashboard and runtime-env agents left behind after
    a SIGTERM), and once their parent is gone the parent link does not find them either."""
    parent_of = _parent_map()
    pids, frontier = set(roots), list(roots)
    while frontier:
        current = frontier.pop()
        kids = [p for p, pp in parent_of.items() if pp == current and p not in pids]
        pids.update(kids)
        frontier.extend(kids)
    found = {pid: _start_time(pid) for pid in sorted(pids)}
    return {pid: t for pid, t in found.items() if t is not None}


def _alive(snapshot: dict[int, int]) -> list[int]:
    return [pid for pid, t in snapshot.items() if _start_time(pid) == t]


def _parent_map() -> dict[int, int]:
    """``{pid: parent pid}`` of every live (non-zombie) process."""
    parent_of: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[-1].split()
        if fields[0] in ("Z", "X"):
            continue
        parent_of[int(entry.name)] = int(fields[1])
    return parent_of


def child_pids(pid: int | None = None) -> list[int]:
    """Live (non-zombie) direct and indirect children of ``pid`` (default: this process)."""
    root = os.getpid() if pid is None else pid
    parent_of = _parent_map()
    out, frontier = [], [root]
    while frontier:
        current = frontier.pop()
        kids = [p for p, pp in parent_of.items() if pp == current]
        out.extend(kids)
        frontier.extend(kids)
    return sorted(out)


def send_signal(pid: int, sig: int) -> None:
    """``os.kill`` that ignores processes already gone or not ours."""
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def terminate_marked(
    env_name: str, value: str, grace: float = 5.0, also: dict[int, int] | None = None
) -> list[int]:
    """SIGTERM every process whose environment holds ``env_name=value`` (plus the processes of
    ``also``, a :func:`process_tree` snapshot, that are still the same processes), wait up to
    ``grace`` s, then SIGKILL the rest. Returns the PIDs that had to be killed with SIGKILL."""
    snapshot = dict(also or {})

    def targets() -> list[int]:
        return sorted(set(marked_pids(env_name, value)) | set(_alive(snapshot)))

    for pid in targets():
        send_signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not targets():
            return []
        time.sleep(0.1)
    killed = targets()
    for pid in killed:
        send_signal(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5.0
    while targets() and time.monotonic() < deadline:
        time.sleep(0.1)
    return killed
