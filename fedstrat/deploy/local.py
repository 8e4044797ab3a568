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
SuperLink connection written to a private ``FLWR_HOME``. Nothing binds outside 127.0.0.1 (unless
``host`` names another address, e.g. in a network namespace: tests/deploy/test_netns.py); ports
are picked free at start.

Process ownership: the processes are started by a
:class:`~fedstrat.app.flower_local.FlowerLauncher` (the launcher ``fedstrat simulate`` uses
too), each in its own session and with the environment variable
``FEDSTRAT_FEDERATION_ID=<random id>``, which Flower's own children (SuperExec,
``flwr-serverapp``, ``flwr-clientapp``) inherit. :meth:`LocalFederation.stop` terminates the
SuperNodes, then the SuperLink (SIGTERM, then SIGKILL after a grace period), then every
remaining process carrying that marker, by PID. It runs on ``__exit__`` (also after an
exception or Ctrl-C) and at interpreter exit. The ``flwr`` CLI calls are
:class:`fedstrat.deploy.flwr_cli.FlwrClient`'s job.
"""

from __future__ import annotations

import atexit
import contextlib
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from fedstrat.app.flower_local import (
    LOOPBACK,
    FlowerLauncher,
    LaunchError,
    ManagedProcess,
    RunResult,
    free_port,
    tail,
    write_flwr_config,
)
from fedstrat.app.procs import child_pids, marked_pids, send_signal
from fedstrat.app.tomlwrite import toml_key, toml_value
from fedstrat.deploy.certs import CertificateSet, generate_certificates
from fedstrat.deploy.flwr_cli import FlwrClient, format_run_config

__all__ = [
    "CONNECTION_NAME",
    "MARKER_ENV",
    "FederationError",
    "LocalFederation",
    "ManagedProcess",
    "RunResult",
    "find_marked_processes",
    "format_run_config",
    "free_port",
]

MARKER_ENV = "FEDSTRAT_FEDERATION_ID"
CONNECTION_NAME = "fedstrat-local"


class FederationError(LaunchError):
    """A process of the federation failed to start, died, or a ``flwr`` command failed."""


# ---------------------------------------------------------------------------- helpers


def find_marked_processes(marker: str) -> list[int]:
    """PIDs of live (non-zombie) processes whose environment has ``FEDSTRAT_FEDERATION_ID=marker``.

    Reads ``/proc/<pid>/environ`` (Linux); processes of other users are skipped silently.
    """
    if not Path("/proc").is_dir():  # pragma: no cover - non-Linux
        return []
    return marked_pids(MARKER_ENV, marker)


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
    host:
        Address the SuperLink listens on and SuperNodes and the ``flwr`` CLI connect to
        (default 127.0.0.1). Another address must be one this process can reach (e.g. when it
        runs inside the SuperLink's network namespace) and, with TLS, be in the server
        certificate (``certs_dir`` from ``generate_certificates(hosts=[host])``).
    supernode_prefix:
        ``i -> argv prefix`` for SuperNode i's command, e.g. ``["ip", "netns", "exec", ns]``
        to run it in its own network namespace (default: none).
    runtime_dependency_install:
        ``True``: start the SuperLink with Flower's default (``uv sync`` of the app's
        dependencies into a per-run env for the ServerApp) instead of
        ``--disable-runtime-dependency-installation``. SuperNodes keep Flower's default (off).
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
        host: str = LOOPBACK,
        supernode_prefix: Callable[[int], Sequence[str]] | None = None,
        runtime_dependency_install: bool = False,
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
        self.host = host
        self._supernode_prefix = supernode_prefix
        self.runtime_dependency_install = runtime_dependency_install
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
        self._launcher: FlowerLauncher | None = None
        self._cli: FlwrClient | None = None
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
        return f"{self.host}:{self.superlink_port}"

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

    @property
    def _processes(self) -> FlowerLauncher:
        if self._launcher is None:
            raise FederationError("federation not started")
        return self._launcher

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
        # One BLAS/OpenMP thread per Flower process (the launcher's default) suits small hosts.
        self._launcher = FlowerLauncher(
            cwd=self.workdir,
            logs_dir=self.logs_dir,
            marker_env=MARKER_ENV,
            marker=self.marker,
            env={"PYTHONUNBUFFERED": "1", **self._extra_env},
            error=FederationError,
        )
        self._cli = FlwrClient(
            self._launcher,
            self.flwr_home,
            CONNECTION_NAME,
            check_alive=self._check_superlink,
            echo=self._echo,
        )
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

    def _launch(self, name: str, cmd: list[str], home: Path) -> ManagedProcess:
        proc = self._processes.launch(name, cmd, home=home)
        self._echo(f"started {name} (pid {proc.pid}), log: {proc.log_path}")
        return proc

    def _start_superlink(self) -> None:
        flags = ["--isolation", "subprocess"]
        if not self.runtime_dependency_install:
            flags += ["--disable-runtime-dependency-installation"]
        ca_cert = None
        if self.tls:
            assert self.certs is not None
            ca_cert = self.certs.ca_cert
            flags += [
                "--ssl-ca-certfile",
                str(self.certs.ca_cert),
                "--ssl-certfile",
                str(self.certs.server_cert),
                "--ssl-keyfile",
                str(self.certs.server_key),
            ]
        else:
            flags += ["--insecure"]
        if self.auth:
            flags += ["--enable-supernode-auth"]
        self.superlink, self.superlink_port = self._processes.start_superlink(
            flags,
            home=self._dir / "home" / "superlink",
            timeout=self.startup_timeout,
            ca_cert=ca_cert,
            host=self.host,
        )
        self._echo(f"started superlink (pid {self.superlink.pid}), log: {self.superlink.log_path}")

    def _write_cli_config(self) -> None:
        write_flwr_config(
            self.flwr_home,
            CONNECTION_NAME,
            self.address,
            root_certificates=self.certs.ca_cert if self.tls and self.certs else None,
        )

    def _register_keys(self) -> None:
        assert self.certs is not None
        for i in range(self.num_supernodes):
            pub = self.certs.supernode_public_keys[i]
            self.node_ids[i] = self.cli.register_supernode(pub)
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
        node_cfg = " ".join(
            f"{toml_key(k)}={toml_value(v)}" for k, v in self._node_config_for(index).items()
        )
        prefix = list(self._supernode_prefix(index)) if self._supernode_prefix else []
        cmd = [
            *prefix,
            self._processes.executable("flower-supernode"),
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
            f"SuperNode {index} did not connect within {timeout} s:\n" + tail(proc.log_path, 40)
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
        children = child_pids(proc.pid)
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
        if self._launcher is not None:
            # SuperNodes first, while the SuperLink is still up: on SIGTERM a SuperNode
            # deactivates itself at the SuperLink (and would retry for a long time if the
            # SuperLink were gone). Then the SuperLink, which ends its SuperExec and ServerApp
            # processes; then whatever still carries the marker, by PID.
            nodes = [p for p in self._launcher.processes if p is not self.superlink]
            order = [nodes, [self.superlink] if self.superlink is not None else []]
            self._launcher.stop(order, grace=grace, sweep_grace=grace)
        if self._own_workdir and not self.keep_workdir and self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
        self._echo("federation stopped")

    # ------------------------------------------------------------------ runs (flwr CLI)
    @property
    def cli(self) -> FlwrClient:
        """The ``flwr`` CLI on this federation's connection (``fedstrat-local``): ``call``,
        ``run_info``, ``logs``, ``stop_run``, ... (see :class:`FlwrClient`)."""
        if self._cli is None:
            raise FederationError("federation not started")
        return self._cli

    def submit(self, app_dir: str | Path, run_config: Mapping[str, Any] | None = None) -> int:
        """``flwr run <app_dir> fedstrat-local --run-config <toml>``; returns the run id."""
        return self.cli.submit(app_dir, run_config)

    def wait(
        self,
        run_id: int,
        timeout: float = 600.0,
        poll: float = 1.0,
        on_poll: Callable[[dict[str, Any]], None] | None = None,
    ) -> RunResult:
        """:meth:`FlwrClient.wait <fedstrat.deploy.flwr_cli.FlwrClient.wait>`: follow the run
        until it finishes (raises ``TimeoutError`` after stopping it, or
        :class:`FederationError` when the SuperLink dies)."""
        return self.cli.wait(run_id, timeout=timeout, poll=poll, on_poll=on_poll)

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
            last = tail(self.superlink.log_path, 40) if self.superlink else ""
            raise FederationError("the SuperLink is not running:\n" + last)
