"""Start, watch and stop Flower processes on this machine: the one local-Flower launcher.

Both runners compose :class:`FlowerLauncher`:

* ``fedstrat simulate`` (:mod:`fedstrat.app.simulation`): ``flower-superlink --simulation`` +
  ``flwr run``;
* ``fedstrat deploy local`` (:mod:`fedstrat.deploy.local`): a SuperLink (TLS, SuperNode
  authentication) + N ``flower-supernode`` processes + ``flwr`` CLI calls.

What the launcher owns:

* executables: Flower's console scripts are taken from the running interpreter's environment
  (``Path(sys.executable).parent``, then ``PATH``), and that folder is put first on the
  children's ``PATH`` - Flower itself starts ``flower-superexec``/``flwr-serverapp`` by name,
  so ``.venv/bin/fedstrat simulate`` works without an activated virtualenv;
* a free ``127.0.0.1`` port per server, and a SuperLink start that waits until its HTTP API
  answers ``/health`` (over TLS when a CA certificate is given);
* ``FLWR_HOME`` folders and the SuperLink connection file (``config.toml``) the ``flwr`` CLI
  reads;
* process ownership: every process is started in its own session with the environment marker
  ``<marker_env>=<random id>``, which Flower's and Ray's children inherit.
  :meth:`FlowerLauncher.stop` ends the processes it launched (SIGTERM, grace, SIGKILL; in the
  caller's order) and then every process still carrying the marker or in the process tree
  taken when the stop began (PID and start time), by PID (:mod:`fedstrat.app.procs`);
* log files (``<logs>/<name>.log``, each start preceded by a ``$ command`` line) and their tails.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import fedstrat
from fedstrat.app import procs
from fedstrat.app.tomlwrite import flat_toml

LOOPBACK = "127.0.0.1"
#: The ``status`` of a run that ended normally (Flower's run status spelling).
COMPLETED = "finished:completed"


class LaunchError(RuntimeError):
    """A Flower executable is missing, or a Flower process did not start or died."""


@dataclass
class RunResult:
    """Outcome of one fedstrat job on a local Flower (simulation or local deployment).

    ``status`` is Flower's run status (``"finished:completed"`` when :attr:`ok`); ``run_dir``,
    ``metrics`` and ``summary`` are the run directory and its ``metrics.json``/``summary.json``
    when the runner read them (the simulation runner does); ``run_id``, ``details`` and ``info``
    are what the SuperLink reported (``flwr list``; deployment runner); ``log_path`` is the
    run's log; ``process_tag`` the marker of the processes the run started (all stopped).
    """

    status: str
    elapsed: float = 0.0
    run_dir: Path | None = None
    metrics: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    run_id: int | None = None
    details: str = ""
    log_path: Path | None = None
    info: dict[str, Any] = field(default_factory=dict)
    process_tag: str = ""

    @property
    def ok(self) -> bool:
        return self.status == COMPLETED


# ---------------------------------------------------------------------------- helpers
def flwr_app_dir() -> Path:
    """The Flower App directory shipped inside the package (the ``flwr run`` target)."""
    return Path(__file__).resolve().parent / "flwr_app"


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port on ``host`` that nothing listens on right now (bind to port 0, release)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def interpreter_bin_dir() -> Path:
    """The folder of the running interpreter (a virtualenv's ``bin``; symlinks not resolved)."""
    return Path(sys.executable).parent


def find_executable(name: str) -> str:
    """Path of the console script ``name``: next to the running interpreter, else on ``PATH``.

    Raises :class:`LaunchError` when it is in neither place.
    """
    local = interpreter_bin_dir() / name
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    found = shutil.which(name)
    if found is None:
        raise LaunchError(
            f"cannot find the `{name}` executable next to {sys.executable} or on PATH "
            "(is flwr installed in this environment?)"
        )
    return found


def tail(path: Path, n: int = 30) -> str:
    """The last ``n`` lines of a text file ("" if it cannot be read)."""
    try:
        lines = Path(path).read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(lines[-n:])


def superlink_healthy(port: int, ca_cert: Path | None = None, host: str = LOOPBACK) -> bool:
    """Whether a SuperLink's HTTP API on ``host:port`` answers ``GET /health`` with 2xx.

    With ``ca_cert`` the request goes over HTTPS, verified against that CA.
    """
    if ca_cert is None:
        url, context = f"http://{host}:{port}/health", None
    else:
        url, context = (
            f"https://{host}:{port}/health",
            ssl.create_default_context(cafile=str(ca_cert)),
        )
    try:
        with urllib.request.urlopen(url, timeout=0.5, context=context) as r:
            return 200 <= r.status < 300
    except (urllib.error.URLError, OSError, ssl.SSLError):
        return False


def write_flwr_config(
    home: Path, connection: str, address: str, *, root_certificates: Path | None = None
) -> Path:
    """Write ``<home>/config.toml``: one SuperLink connection, the default for ``flwr``.

    ``root_certificates`` (the CA) makes it a TLS connection; without it, ``insecure = true``.
    """
    conn: dict[str, Any] = {"address": address}
    if root_certificates is not None:
        conn["root-certificates"] = str(root_certificates)
    else:
        conn["insecure"] = True
    text = flat_toml({"default": connection}, "superlink") + "\n"
    text += flat_toml(conn, f"superlink.{connection}")
    path = Path(home) / "config.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def child_env(
    marker_env: str, marker: str, home: Path, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Environment of a Flower process: ours, plus the ownership marker, ``FLWR_HOME``, no
    telemetry or update check, fedstrat importable, the interpreter's folder first on ``PATH``,
    one BLAS/OpenMP thread unless set; ``extra`` last."""
    env = dict(os.environ)
    pkg_root = str(Path(fedstrat.__file__).resolve().parents[1])
    pythonpath = env.get("PYTHONPATH", "")
    bin_dir = str(interpreter_bin_dir())
    path = env.get("PATH", "")
    if path.split(os.pathsep)[0] != bin_dir:
        path = bin_dir + (os.pathsep + path if path else "")
    env.update(
        {
            marker_env: marker,
            "FLWR_HOME": str(home),
            "FLWR_TELEMETRY_ENABLED": "0",
            "FLWR_DISABLE_UPDATE_CHECK": "1",
            "PYTHONPATH": pkg_root + (os.pathsep + pythonpath if pythonpath else ""),
            "PATH": path,
        }
    )
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env.setdefault(var, "1")
    env.update(extra or {})
    return env


def _pump(stream: IO[bytes], sink: IO[bytes]) -> None:
    for line in iter(stream.readline, b""):
        sink.write(line)
        sink.flush()
        sys.stderr.write(line.decode("utf-8", "replace"))
    stream.close()


# ---------------------------------------------------------------------------- processes
@dataclass
class ManagedProcess:
    """A process the launcher started (its own session; output in ``log_path``)."""

    name: str
    cmd: list[str]
    popen: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None


class FlowerLauncher:
    """Starts Flower processes that carry one marker, and stops all of them.

    ``cwd``: working folder of every process; ``logs_dir``: where ``<name>.log`` files go;
    ``marker_env``: the environment variable that marks ownership (value: :attr:`marker`, a
    random id unless given); ``env``: extra environment for every process; ``error``: the
    :class:`LaunchError` subclass raised for a failed start.
    """

    def __init__(
        self,
        *,
        cwd: Path,
        logs_dir: Path,
        marker_env: str,
        marker: str | None = None,
        env: Mapping[str, str] | None = None,
        error: type[LaunchError] = LaunchError,
    ) -> None:
        self.cwd = Path(cwd)
        self.logs_dir = Path(logs_dir)
        self.marker_env = marker_env
        self.marker = marker or uuid.uuid4().hex
        self.extra_env = dict(env or {})
        self.error = error
        self.processes: list[ManagedProcess] = []
        self._files: list[IO[bytes]] = []
        self._threads: list[threading.Thread] = []
        self._lock = threading.RLock()

    def env(self, home: Path) -> dict[str, str]:
        """The environment of a process whose ``FLWR_HOME`` is ``home``."""
        return child_env(self.marker_env, self.marker, home, self.extra_env)

    def launch(
        self,
        name: str,
        cmd: Sequence[str],
        *,
        home: Path,
        echo: bool = False,
        env: Mapping[str, str] | None = None,
    ) -> ManagedProcess:
        """Start ``cmd`` (own session, stdin closed) with output appended to ``<logs>/<name>.log``.

        With ``echo`` the output also goes to our stderr (through a pipe and a thread); ``env``
        adds to this process's environment.
        """
        cmd = list(cmd)
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        Path(home).mkdir(parents=True, exist_ok=True)
        log_path = self.logs_dir / f"{name}.log"
        sink = open(log_path, "ab")  # noqa: SIM115 - closed below or in stop()
        sink.write(f"\n$ {' '.join(cmd)}\n".encode())
        sink.flush()
        try:
            popen = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE if echo else sink,
                stderr=subprocess.STDOUT,
                cwd=str(self.cwd),
                env={**self.env(home), **(env or {})},
                start_new_session=True,
            )
        except BaseException:
            sink.close()
            raise
        if echo:
            assert popen.stdout is not None
            thread = threading.Thread(target=_pump, args=(popen.stdout, sink), daemon=True)
            thread.start()
            with self._lock:
                self._threads.append(thread)
                self._files.append(sink)
        else:
            sink.close()
        proc = ManagedProcess(name=name, cmd=cmd, popen=popen, log_path=log_path)
        with self._lock:
            self.processes.append(proc)
        return proc

    def start_superlink(
        self,
        flags: Sequence[str],
        *,
        home: Path,
        timeout: float,
        attempts: int = 1,
        ca_cert: Path | None = None,
        echo: bool = False,
        host: str = LOOPBACK,
    ) -> tuple[ManagedProcess, int]:
        """``flower-superlink --host <host> --port <free> <flags>``; wait for ``/health``.

        ``host``: the address the SuperLink listens on and is checked at (127.0.0.1 by
        default; a network namespace's address when the caller runs inside that namespace).

        Returns the process and its port. A SuperLink that exits or does not answer within
        ``timeout`` s is stopped and started again on a new port, ``attempts`` times in all;
        then :attr:`error` is raised with the tail of ``superlink.log``.
        """
        exe = self.executable("flower-superlink")
        reason = ""
        for _attempt in range(attempts):
            port = free_port()
            proc = self.launch(
                "superlink",
                [exe, "--host", host, "--port", str(port), *flags],
                home=home,
                echo=echo,
            )
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and proc.alive():
                if superlink_healthy(port, ca_cert, host):
                    return proc, port
                time.sleep(0.1)
            reason = (
                f"exited with code {proc.popen.returncode}"
                if not proc.alive()
                else f"did not answer on {host}:{port} within {timeout:g} s"
            )
            self.stop_processes([proc], grace=10.0)
        raise self.error(
            f"the Flower SuperLink did not start ({reason}):\n" + tail(proc.log_path, 30)
        )

    def executable(self, name: str) -> str:
        """:func:`find_executable`, raising :attr:`error` when ``name`` is missing."""
        try:
            return find_executable(name)
        except LaunchError as exc:
            if isinstance(exc, self.error):
                raise
            raise self.error(str(exc)) from None

    def pids(self) -> list[int]:
        """PIDs of live processes carrying this launcher's marker (ours and their children)."""
        if not Path("/proc").is_dir():  # pragma: no cover - non-Linux
            return []
        return procs.marked_pids(self.marker_env, self.marker)

    @staticmethod
    def stop_processes(group: Sequence[ManagedProcess], grace: float) -> None:
        """SIGTERM every live process of ``group``, wait up to ``grace`` s, SIGKILL the rest."""
        alive = [p for p in group if p.alive()]
        for proc in alive:
            procs.send_signal(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in alive:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
        for proc in alive:
            if proc.alive():
                procs.send_signal(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(timeout=5)

    def stop(
        self,
        order: Sequence[Sequence[ManagedProcess]] | None = None,
        *,
        grace: float = 10.0,
        sweep_grace: float = 5.0,
    ) -> None:
        """Stop everything: the groups of ``order`` one after the other (default: each launched
        process alone, last started first), then the launched processes not in ``order``, then
        every process still carrying the marker (SIGTERM, ``sweep_grace`` s, SIGKILL)."""
        with self._lock:
            launched = list(self.processes)
        groups = [list(g) for g in order] if order is not None else [[p] for p in launched[::-1]]
        listed = {id(p) for g in groups for p in g}
        groups.append([p for p in launched[::-1] if id(p) not in listed])
        # every process of ours before anything stops: once orphaned, a process that does not
        # show the marker (Ray's agents were seen so) is found through this snapshot only
        tree = procs.process_tree([p.pid for p in launched if p.alive()] + self.pids())
        try:
            for group in groups:
                self.stop_processes(group, grace)
            procs.terminate_marked(self.marker_env, self.marker, grace=sweep_grace, also=tree)
        finally:
            with self._lock:
                threads, files = list(self._threads), list(self._files)
                self._threads.clear()
                self._files.clear()
            for thread in threads:
                thread.join(timeout=5)
            for f in files:
                f.close()
