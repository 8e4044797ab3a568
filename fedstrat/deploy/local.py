"""A real Flower federation on this machine: one SuperLink and N SuperNodes on 127.0.0.1.

:class:`LocalFederation` is a context manager that owns every process it starts::

    with LocalFederation(num_supernodes=3, tls=True, auth=True) as fed:
        result = fed.run(app_dir, {"dataset": "digits", "rounds": 3}, timeout=300)
        print(result.status, result.run_id)

It uses Flower's Deployment Engine exactly as a multi-machine deployment would (see
docs/deploy.md): ``flower-superlink`` (TLS, SuperNode authentication, ServerApp isolation
``subprocess``, no runtime dependency installation), ``flower-supernode`` per node with
``--node-config "partition-id=i num-partitions=N"``, ``flwr supernode register`` for each
SuperNode's public key, and ``flwr run`` / ``flwr list`` / ``flwr log`` / ``flwr stop`` through a
SuperLink connection written to a private ``FLWR_HOME``. Nothing binds outside 127.0.0.1; ports
are picked free at start.

Process ownership: every process is started in its own session and with the environment
variable ``FEDSTRAT_FEDERATION_ID=<random id>``, which Flower's own children (SuperExec,
``flwr-serverapp``, ``flwr-clientapp``) inherit. :meth:`LocalFederation.stop` terminates the
processes it launched (SIGTERM, then SIGKILL after a grace period) and then every remaining
process carrying that marker, by PID. It runs on ``__exit__`` (also after an exception or
Ctrl-C) and at interpreter exit.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedstrat.app.procs import child_pids, marked_pids, send_signal
from fedstrat.deploy.certs import CertificateSet, generate_certificates

MARKER_ENV = "FEDSTRAT_FEDERATION_ID"
CONNECTION_NAME = "fedstrat-local"
LOOPBACK = "127.0.0.1"


class FederationError(RuntimeError):
    """A process of the federation failed to start, died, or a ``flwr`` command failed."""


# ---------------------------------------------------------------------------- helpers


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port on ``host`` that nothing listens on right now (bind to port 0, release)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def find_marked_processes(marker: str) -> list[int]:
    """PIDs of live (non-zombie) processes whose environment has ``FEDSTRAT_FEDERATION_ID=marker``.

    Reads ``/proc/<pid>/environ`` (Linux); processes of other users are skipped silently.
    """
    if not Path("/proc").is_dir():  # pragma: no cover - non-Linux
        return []
    return marked_pids(MARKER_ENV, marker)


def format_run_config(values: Mapping[str, Any]) -> str:
    """TOML text for ``flwr run --run-config <file.toml>`` (flat keys, scalar values).

    Keys are written with hyphens (``num_clients`` -> ``num-clients``), as Flower's run config
    spells them. Raises ``ValueError`` for a value that is not bool/int/float/str.
    """
    lines = []
    for raw_key, value in values.items():
        key = str(raw_key).replace("_", "-")
        if not key or any(c in key for c in " =\"'\n[]."):
            raise ValueError(f"invalid run-config key {raw_key!r}")
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, int):
            text = str(value)
        elif isinstance(value, float):
            if value != value or value in (float("inf"), float("-inf")):
                raise ValueError(f"run-config value for {key} must be finite, got {value}")
            text = repr(value)
        elif isinstance(value, str):
            text = json.dumps(value)  # a TOML basic string for printable text
        else:
            raise ValueError(
                f"run-config value for {key} must be bool, int, float or str, got {value!r}"
            )
        lines.append(f'"{key}" = {text}')
    return "\n".join(lines) + "\n"


def _tail(path: Path, n: int = 40) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(lines[-n:])


@dataclass
class ManagedProcess:
    """A process this federation started (its own session; log file on disk)."""

    name: str
    cmd: list[str]
    popen: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None


@dataclass
class RunResult:
    """Outcome of one ``flwr run`` on the federation."""

    run_id: int
    status: str  # Flower's run status, e.g. "finished:completed", "finished:failed"
    details: str
    elapsed: float
    log_path: Path | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "finished:completed"


# ---------------------------------------------------------------------------- federation


class LocalFederation:
    """One SuperLink + ``num_supernodes`` SuperNodes on 127.0.0.1 (a context manager).

    Parameters
    ----------
    num_supernodes:
        Number of SuperNodes; node i gets ``--node-config "partition-id=i num-partitions=N"``
        plus ``node_config`` extras (a mapping, or a callable ``i -> mapping``).
    tls:
        Serve the SuperLink over TLS with a test CA (generated into ``<workdir>/certs`` unless
        ``certs_dir`` points to files written by
        :func:`fedstrat.deploy.certs.generate_certificates`).
    auth:
        Enable SuperNode authentication (requires ``tls``): each SuperNode's public key is
        registered with ``flwr supernode register`` before it starts.
    workdir:
        Where logs, ``FLWR_HOME`` folders and certificates go (default: a new temp dir, removed
        on :meth:`stop` unless ``keep_workdir``).
    startup_timeout:
        Seconds to wait for the SuperLink to listen and for all SuperNodes to be online.
    """

    def __init__(
        self,
        num_supernodes: int = 3,
        *,
        tls: bool = True,
        auth: bool = True,
        certs_dir: str | Path | None = None,
        workdir: str | Path | None = None,
        keep_workdir: bool = False,
        node_config: Mapping[str, Any] | Callable[[int], Mapping[str, Any]] | None = None,
        startup_timeout: float = 90.0,
        env: Mapping[str, str] | None = None,
        echo: Callable[[str], None] | None = None,
    ) -> None:
        if num_supernodes < 1:
            raise ValueError(f"num_supernodes must be >= 1, got {num_supernodes}")
        if auth and not tls:
            raise ValueError("SuperNode authentication requires TLS (tls=True)")
        if startup_timeout <= 0:
            raise ValueError("startup_timeout must be > 0")
        self.num_supernodes = num_supernodes
        self.tls = tls
        self.auth = auth
        self.startup_timeout = startup_timeout
        self._node_config = node_config
        self._extra_env = dict(env or {})
        self._echo = echo or (lambda _msg: None)
        self._own_workdir = workdir is None
        self.keep_workdir = keep_workdir
        self.workdir = Path(workdir) if workdir is not None else None
        self._certs_dir = Path(certs_dir) if certs_dir is not None else None
        self.certs: CertificateSet | None = None
        self.marker = uuid.uuid4().hex
        self.superlink: ManagedProcess | None = None
        self.supernodes: dict[int, ManagedProcess] = {}
        self.superlink_port: int | None = None
        self.node_ids: dict[int, int] = {}  # supernode index -> Flower node id (auth only)
        self._supernode_ports: dict[int, int] = {}
        self._launched: list[ManagedProcess] = []
        self._lock = threading.RLock()
        self._started = False
        self._stopped = False
        self._atexit_registered = False

    # ------------------------------------------------------------------ properties
    @property
    def address(self) -> str:
        """SuperLink address (Fleet, Control and Runtime API share one port in Flower 1.41)."""
        if self.superlink_port is None:
            raise FederationError("federation not started")
        return f"{LOOPBACK}:{self.superlink_port}"

    @property
    def flwr_home(self) -> Path:
        """``FLWR_HOME`` for ``flwr`` CLI calls (holds the ``fedstrat-local`` connection)."""
        return self._dir / "home" / "cli"

    @property
    def logs_dir(self) -> Path:
        return self._dir / "logs"

    @property
    def _dir(self) -> Path:
        if self.workdir is None:
            raise FederationError("federation not started")
        return self.workdir

    def pids(self) -> list[int]:
        """PIDs of live processes started by this federation, including Flower's children."""
        return find_marked_processes(self.marker)

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> LocalFederation:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> LocalFederation:
        """Start the SuperLink, register SuperNode keys, start the SuperNodes, wait until online."""
        with self._lock:
            if self._started:
                raise FederationError("federation already started")
            self._started = True
            if not self._atexit_registered:
                atexit.register(self.stop)
                self._atexit_registered = True
        try:
            self._prepare_dirs()
            self._start_superlink()
            self._write_cli_config()
            if self.auth:
                self._register_keys()
            for i in range(self.num_supernodes):
                self.start_supernode(i, wait=False)
            self.wait_for_nodes(timeout=self.startup_timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _prepare_dirs(self) -> None:
        if self.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="fedstrat-federation-"))
        self.workdir = self.workdir.resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        for sub in ("logs", "home/superlink", "home/cli"):
            (self.workdir / sub).mkdir(parents=True, exist_ok=True)
        if self.tls:
            if self._certs_dir is not None:
                self.certs = CertificateSet.from_directory(self._certs_dir)
                if self.auth and len(self.certs.supernode_private_keys) < self.num_supernodes:
                    raise FederationError(
                        f"{self._certs_dir} holds {len(self.certs.supernode_private_keys)} "
                        f"SuperNode key pairs, {self.num_supernodes} needed: run "
                        f"`fedstrat deploy certs {self._certs_dir} "
                        f"--num-supernodes {self.num_supernodes} --overwrite`"
                    )
            else:
                self.certs = generate_certificates(
                    self.workdir / "certs",
                    num_supernodes=self.num_supernodes if self.auth else 0,
                    overwrite=True,
                )

    def _env(self, home: Path) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                MARKER_ENV: self.marker,
                "FLWR_HOME": str(home),
                "FLWR_TELEMETRY_ENABLED": "0",
                "PYTHONUNBUFFERED": "1",
                # 2-core friendliness: one BLAS/OpenMP thread per Flower process.
                "OMP_NUM_THREADS": env.get("OMP_NUM_THREADS", "1"),
                "MKL_NUM_THREADS": env.get("MKL_NUM_THREADS", "1"),
            }
        )
        env.update(self._extra_env)
        return env

    def _launch(self, name: str, cmd: list[str], home: Path) -> ManagedProcess:
        log_path = self.logs_dir / f"{name}.log"
        home.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log:
            log.write(f"\n$ {' '.join(cmd)}\n".encode())
            log.flush()
            popen = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=str(self._dir),
                env=self._env(home),
                start_new_session=True,
            )
        proc = ManagedProcess(name=name, cmd=cmd, popen=popen, log_path=log_path)
        with self._lock:
            self._launched.append(proc)
        self._echo(f"started {name} (pid {proc.pid}), log: {log_path}")
        return proc

    def _start_superlink(self) -> None:
        self.superlink_port = free_port()
        cmd = [
            _exe("flower-superlink"),
            "--host",
            LOOPBACK,
            "--port",
            str(self.superlink_port),
            "--isolation",
            "subprocess",
            "--disable-runtime-dependency-installation",
        ]
        if self.tls:
            assert self.certs is not None
            cmd += [
                "--ssl-ca-certfile",
                str(self.certs.ca_cert),
                "--ssl-certfile",
                str(self.certs.server_cert),
                "--ssl-keyfile",
                str(self.certs.server_key),
            ]
        else:
            cmd += ["--insecure"]
        if self.auth:
            cmd += ["--enable-supernode-auth"]
        self.superlink = self._launch("superlink", cmd, self._dir / "home" / "superlink")
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if not self.superlink.alive():
                raise FederationError(
                    "flower-superlink exited during start-up:\n" + _tail(self.superlink.log_path)
                )
            if _port_open(LOOPBACK, self.superlink_port) and "Uvicorn running" in (
                self.superlink.log_path.read_text(errors="replace")
            ):
                return
            time.sleep(0.2)
        raise FederationError(
            f"flower-superlink did not listen on {self.address} within {self.startup_timeout} s:\n"
            + _tail(self.superlink.log_path)
        )

    def _write_cli_config(self) -> None:
        lines = [
            "[superlink]",
            f'default = "{CONNECTION_NAME}"',
            "",
            f"[superlink.{CONNECTION_NAME}]",
            f'address = "{self.address}"',
        ]
        if self.tls:
            assert self.certs is not None
            lines.append(f"root-certificates = {json.dumps(str(self.certs.ca_cert))}")
        else:
            lines.append("insecure = true")
        (self.flwr_home / "config.toml").write_text("\n".join(lines) + "\n", encoding="utf-8")

    def _register_keys(self) -> None:
        assert self.certs is not None
        for i in range(self.num_supernodes):
            pub = self.certs.supernode_public_keys[i]
            out = self.flwr("supernode", "register", str(pub), CONNECTION_NAME, "--format", "json")
            data = _parse_json(out)
            if not data.get("success") or "node-id" not in data:
                raise FederationError(f"registering {pub} failed: {out}")
            self.node_ids[i] = int(data["node-id"])
            self._echo(f"registered SuperNode {i} key {pub.name} as node {self.node_ids[i]}")

    def _node_config_for(self, i: int) -> dict[str, Any]:
        cfg: dict[str, Any] = {"partition-id": i, "num-partitions": self.num_supernodes}
        extra = self._node_config(i) if callable(self._node_config) else self._node_config
        if extra:
            cfg.update({str(k).replace("_", "-"): v for k, v in extra.items()})
        return cfg

    def start_supernode(self, index: int, *, wait: bool = True, timeout: float = 120.0) -> int:
        """(Re)start SuperNode ``index`` (same key, partition and node id). Returns its PID.

        With ``wait``, blocks until the node is connected. After a crash the SuperLink refuses
        to re-activate the same node id until it has marked the old session offline (two
        missed heartbeats, up to ~60 s): ``flower-supernode`` then exits with "Failed to
        activate SuperNode" (exit code 305), and this method retries every 3 s until
        ``timeout``.
        """
        deadline = time.monotonic() + timeout
        while True:
            pid = self._launch_supernode(index)
            if not wait:
                return pid
            try:
                self._wait_supernode_log(index, max(1.0, deadline - time.monotonic()))
                return pid
            except FederationError as exc:
                proc = self.supernodes[index]
                retry = "Failed to activate SuperNode" in str(exc) or proc.popen.returncode == 305
                if not retry or time.monotonic() + 3.0 > deadline:
                    raise
                self._echo(f"SuperNode {index}: SuperLink still holds its old session; retrying")
                time.sleep(3.0)

    def _launch_supernode(self, index: int) -> int:
        if not 0 <= index < self.num_supernodes:
            raise ValueError(f"SuperNode index {index} out of range [0, {self.num_supernodes})")
        old = self.supernodes.get(index)
        if old is not None and old.alive():
            raise FederationError(f"SuperNode {index} is already running (pid {old.pid})")
        port = free_port()
        self._supernode_ports[index] = port
        node_cfg = " ".join(
            f"{k}={json.dumps(v) if isinstance(v, str) else _toml_scalar(v)}"
            for k, v in self._node_config_for(index).items()
        )
        cmd = [
            _exe("flower-supernode"),
            "--superlink",
            self.address,
            "--node-config",
            node_cfg,
            "--isolation",
            "subprocess",
            "--host",
            LOOPBACK,
            "--port",
            str(port),
        ]
        if self.tls:
            assert self.certs is not None
            cmd += ["--root-certificates", str(self.certs.ca_cert)]
        else:
            cmd += ["--insecure"]
        if self.auth:
            assert self.certs is not None
            cmd += ["--auth-supernode-private-key", str(self.certs.supernode_private_keys[index])]
        proc = self._launch(f"supernode-{index}", cmd, self._dir / "home" / f"supernode-{index}")
        self.supernodes[index] = proc
        return proc.pid

    def _wait_supernode_log(self, index: int, timeout: float) -> None:
        proc = self.supernodes[index]
        text = proc.log_path.read_text(errors="replace")
        start_size = max(0, text.rfind(f"$ {' '.join(proc.cmd)}"))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not proc.alive():
                text = proc.log_path.read_text(errors="replace")[start_size:]
                raise FederationError(
                    f"SuperNode {index} exited during start-up "
                    f"(exit code {proc.popen.returncode}):\n" + "\n".join(text.splitlines()[-30:])
                )
            text = proc.log_path.read_text(errors="replace")[start_size:]
            if "SuperNode ID:" in text:
                return
            time.sleep(0.2)
        raise FederationError(
            f"SuperNode {index} did not connect within {timeout} s:\n" + _tail(proc.log_path)
        )

    def wait_for_nodes(self, timeout: float = 60.0) -> None:
        """Wait until every started SuperNode has connected (``SuperNode ID`` in its log)."""
        deadline = time.monotonic() + timeout
        for index in sorted(self.supernodes):
            self._wait_supernode_log(index, max(1.0, deadline - time.monotonic()))
        self._echo(f"{len(self.supernodes)} SuperNodes connected to {self.address}")

    def kill_supernode(self, index: int, sig: int = signal.SIGKILL, timeout: float = 10.0) -> None:
        """Stop SuperNode ``index`` with ``sig`` (default SIGKILL: a crash), and its ClientApps."""
        proc = self.supernodes.get(index)
        if proc is None:
            raise ValueError(f"no SuperNode {index}")
        children = _descendants(proc.pid)
        send_signal(proc.pid, sig)
        for pid in children:
            send_signal(pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.popen.wait(timeout=timeout)
        self._echo(f"stopped SuperNode {index} (pid {proc.pid}) with signal {sig}")

    def stop(self, grace: float = 8.0) -> None:
        """Terminate everything this federation started (idempotent)."""
        with self._lock:
            if self._stopped or not self._started:
                self._stopped = self._stopped or not self._started
                return
            self._stopped = True
            launched = list(self._launched)
        # SuperNodes first, while the SuperLink is still up: on SIGTERM a SuperNode deactivates
        # itself at the SuperLink (and would retry for a long time if the SuperLink were gone).
        # Then the SuperLink, which ends its SuperExec and ServerApp processes.
        deadline = time.monotonic() + grace
        nodes = [p for p in launched if p.alive() and p is not self.superlink]
        for proc in nodes:
            send_signal(proc.pid, signal.SIGTERM)
        for proc in nodes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
        deadline = time.monotonic() + grace
        if self.superlink is not None and self.superlink.alive():
            send_signal(self.superlink.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.superlink.popen.wait(timeout=grace)
        # Whatever is left (Flower's detached SuperExec and app processes): by marker, by PID.
        while time.monotonic() < deadline and find_marked_processes(self.marker):
            time.sleep(0.2)
        for _ in range(3):
            left = find_marked_processes(self.marker)
            if not left:
                break
            for pid in left:
                send_signal(pid, signal.SIGKILL)
            time.sleep(0.3)
        for proc in launched:
            if proc.alive():
                send_signal(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(timeout=5)
        if self._own_workdir and not self.keep_workdir and self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
        self._echo("federation stopped")

    # ------------------------------------------------------------------ flwr CLI
    def flwr(self, *args: str, timeout: float = 120.0, check: bool = True) -> str:
        """Run ``flwr <args>`` against this federation's connection; return stdout."""
        cmd = [_exe("flwr"), *args]
        env = self._env(self.flwr_home)
        env["NO_COLOR"] = "1"
        env["TERM"] = "dumb"
        res = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            env=env,
            cwd=str(self._dir),
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )
        if check and res.returncode != 0:
            raise FederationError(
                f"`flwr {' '.join(args)}` failed (exit {res.returncode}):\n"
                f"{res.stdout[-2000:]}\n{res.stderr[-2000:]}"
            )
        return res.stdout

    def submit(
        self,
        app_dir: str | Path,
        run_config: Mapping[str, Any] | None = None,
    ) -> int:
        """``flwr run <app_dir> fedstrat-local --run-config <toml>``; returns the run id."""
        app = Path(app_dir).resolve()
        if not (app / "pyproject.toml").is_file():
            raise ValueError(f"{app} is not a Flower App directory (no pyproject.toml)")
        args = ["run", str(app), CONNECTION_NAME, "--format", "json"]
        if run_config:
            cfg_path = self._dir / f"run-config-{uuid.uuid4().hex[:8]}.toml"
            cfg_path.write_text(format_run_config(run_config), encoding="utf-8")
            args += ["--run-config", str(cfg_path)]
        out = self.flwr(*args)
        data = _parse_json(out)
        if not data.get("success") or not data.get("run-id"):
            raise FederationError(f"`flwr run` did not start a run: {out}")
        run_id = int(data["run-id"])
        self._echo(f"submitted run {run_id} ({app.name})")
        return run_id

    def run_info(self, run_id: int) -> dict[str, Any]:
        """``flwr list --run-id`` as a dict (status, elapsed, timestamps...)."""
        data = _parse_json(
            self.flwr("list", CONNECTION_NAME, "--run-id", str(run_id), "--format", "json")
        )
        runs = data.get("runs") or []
        if not runs:
            raise FederationError(f"run {run_id} unknown to the SuperLink: {data}")
        return dict(runs[0])

    def logs(self, run_id: int) -> str:
        """The run's ServerApp log as stored by the SuperLink (``flwr log --show``)."""
        return self.flwr("log", str(run_id), CONNECTION_NAME, "--show", check=False)

    def stop_run(self, run_id: int) -> None:
        """``flwr stop <run_id>``."""
        self.flwr("stop", str(run_id), CONNECTION_NAME, check=False)

    def wait(
        self,
        run_id: int,
        timeout: float = 600.0,
        poll: float = 1.0,
        on_poll: Callable[[dict[str, Any]], None] | None = None,
    ) -> RunResult:
        """Wait for the run to finish; on timeout stop it (``flwr stop``), raise ``TimeoutError``.

        Follows the run with ONE ``flwr log RUN_ID --stream`` process (its output is the run's
        log file, ``<workdir>/logs/run-<id>.log``); the stream ends when the run ends, then one
        ``flwr list --run-id`` reads the final status. Should the stream end early, it falls back
        to polling ``flwr list`` every 5 s. ``on_poll(info)`` is called about every ``poll`` s.
        """
        deadline = time.monotonic() + timeout
        log_path = self.logs_dir / f"run-{run_id}.log"
        stream: subprocess.Popen[bytes] | None = self._start_log_stream(run_id, log_path)
        info: dict[str, Any] = {"run-id": str(run_id)}
        next_list = 0.0
        try:
            while True:
                self._check_superlink()
                if on_poll is not None:
                    on_poll(info)
                now = time.monotonic()
                if (stream is None and now >= next_list) or (
                    stream is not None and stream.poll() is not None
                ):
                    stream = None
                    info = self.run_info(run_id)
                    if str(info.get("status", "")).startswith("finished"):
                        break
                    next_list = now + 5.0
                if now > deadline:
                    self.stop_run(run_id)
                    raise TimeoutError(
                        f"run {run_id} not finished after {timeout} s "
                        f"(status {info.get('status', 'unknown')}); it was stopped"
                    )
                time.sleep(poll)
        finally:
            if stream is not None and stream.poll() is None:
                send_signal(stream.pid, signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    stream.wait(timeout=5)
        return RunResult(
            run_id=run_id,
            status=str(info.get("status")),
            details=str(info.get("status-details", "")),
            elapsed=float(info.get("elapsed", 0.0) or 0.0),
            log_path=log_path if log_path.exists() else None,
            info=info,
        )

    def _start_log_stream(self, run_id: int, log_path: Path) -> subprocess.Popen[bytes]:
        env = self._env(self.flwr_home)
        env["NO_COLOR"] = "1"
        with open(log_path, "wb") as log:
            return subprocess.Popen(
                [_exe("flwr"), "log", str(run_id), CONNECTION_NAME, "--stream"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=str(self._dir),
                env=env,
                start_new_session=True,
            )

    def run(
        self,
        app_dir: str | Path,
        run_config: Mapping[str, Any] | None = None,
        timeout: float = 600.0,
        on_poll: Callable[[dict[str, Any]], None] | None = None,
    ) -> RunResult:
        """Submit ``app_dir`` with ``run_config`` and wait for the run to finish."""
        run_id = self.submit(app_dir, run_config)
        return self.wait(run_id, timeout=timeout, on_poll=on_poll)

    def _check_superlink(self) -> None:
        if self.superlink is None or not self.superlink.alive():
            tail = _tail(self.superlink.log_path) if self.superlink else ""
            raise FederationError("the SuperLink is not running:\n" + tail)


# ---------------------------------------------------------------------------- utilities


def _exe(name: str) -> str:
    """Path of a Flower console script, preferring the one next to this Python."""
    candidate = Path(sys.executable).parent / name
    if candidate.is_file():
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise FederationError(f"`{name}` not found; is flwr installed in this environment?")
    return found


def _toml_scalar(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    raise ValueError(f"node-config values must be bool, int, float or str, got {v!r}")


def _parse_json(text: str) -> dict[str, Any]:
    """The last JSON object printed by a ``flwr ... --format json`` command."""
    start = text.find("{")
    if start < 0:
        raise FederationError(f"no JSON in flwr output: {text[-500:]}")
    try:
        data = json.loads(text[start:])
    except json.JSONDecodeError as exc:
        raise FederationError(f"cannot parse flwr output as JSON: {text[-500:]}") from exc
    if not isinstance(data, dict):
        raise FederationError(f"unexpected flwr output: {text[-500:]}")
    return data


def _descendants(pid: int) -> list[int]:
    """All live descendants of ``pid`` (Linux /proc)."""
    if not Path("/proc").is_dir():  # pragma: no cover
        return []
    return child_pids(pid)


def describe(fed: LocalFederation) -> Iterable[tuple[str, str]]:
    """(name, value) pairs describing a running federation, for CLI output."""
    yield ("SuperLink", f"{fed.address} ({'TLS' if fed.tls else 'insecure'})")
    yield ("SuperNode auth", "on" if fed.auth else "off")
    yield ("SuperNodes", str(fed.num_supernodes))
    yield ("FLWR_HOME (flwr CLI)", str(fed.flwr_home))
    yield ("logs", str(fed.logs_dir))


def run_config_items(values: Mapping[str, Any]) -> Sequence[tuple[str, Any]]:
    """Sorted (hyphenated key, value) pairs of a run config, for display."""
    return sorted((str(k).replace("_", "-"), v) for k, v in values.items())
