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


def child_pids(pid: int | None = None) -> list[int]:
    """Live (non-zombie) direct and indirect children of ``pid`` (default: this process)."""
    root = os.getpid() if pid is None else pid
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


def terminate_marked(env_name: str, value: str, grace: float = 5.0) -> list[int]:
    """SIGTERM every process whose environment holds ``env_name=value``, wait up to ``grace``
    s, then SIGKILL the rest. Returns the PIDs that had to be killed with SIGKILL."""
    pids = marked_pids(env_name, value)
    for pid in pids:
        send_signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not marked_pids(env_name, value):
            return []
        time.sleep(0.1)
    killed = marked_pids(env_name, value)
    for pid in killed:
        send_signal(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5.0
    while marked_pids(env_name, value) and time.monotonic() < deadline:
        time.sleep(0.1)
    return killed
