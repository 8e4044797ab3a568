"""The ``flwr`` CLI against one SuperLink connection: submit, follow, list, log and stop runs.

:class:`FlwrClient` is what :class:`fedstrat.deploy.local.LocalFederation` uses for its runs
(``flwr run``, ``flwr list``, ``flwr log``, ``flwr stop``, ``flwr supernode register``). Every
call goes through the federation's :class:`~fedstrat.app.flower_local.FlowerLauncher`: the same
executable lookup, environment marker and ``FLWR_HOME``, and the launcher's error class.
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from fedstrat.app.flower_local import FlowerLauncher, ManagedProcess, RunResult
from fedstrat.app.tomlwrite import flat_toml

#: Plain output from the ``flwr`` CLI (no colours, no terminal control codes).
PLAIN_OUTPUT = {"NO_COLOR": "1", "TERM": "dumb"}


def format_run_config(values: Mapping[str, Any]) -> str:
    """TOML text for ``flwr run --run-config <file.toml>`` (flat keys, scalar values).

    Keys are written with hyphens (``num_clients`` -> ``num-clients``), as Flower's run config
    spells them. Raises ``ValueError`` for a key that is not a bare TOML key or a value that is
    not a finite float, bool, int or str.
    """
    return flat_toml({str(k).replace("_", "-"): v for k, v in values.items()})


class FlwrClient:
    """``flwr <command> ... <connection>`` with ``FLWR_HOME=home``, run in ``launcher.cwd``.

    ``check_alive`` is called while waiting for a run (it raises when the SuperLink is gone);
    ``echo`` receives one-line progress messages.
    """

    def __init__(
        self,
        launcher: FlowerLauncher,
        home: Path,
        connection: str,
        *,
        check_alive: Callable[[], None] = lambda: None,
        echo: Callable[[str], None] = lambda _msg: None,
    ) -> None:
        self.launcher = launcher
        self.home = Path(home)
        self.connection = connection
        self.check_alive = check_alive
        self.echo = echo

    def call(self, *args: str, timeout: float = 120.0, check: bool = True) -> str:
        """Run ``flwr <args>``; return its stdout (with ``check``: raise on a non-zero exit)."""
        res = subprocess.run(
            [self.launcher.executable("flwr"), *args],
            capture_output=True,
            text=True,
            env={**self.launcher.env(self.home), **PLAIN_OUTPUT},
            cwd=str(self.launcher.cwd),
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )
        if check and res.returncode != 0:
            raise self.launcher.error(
                f"`flwr {' '.join(args)}` failed (exit {res.returncode}):\n"
                f"{res.stdout[-2000:]}\n{res.stderr[-2000:]}"
            )
        return res.stdout

    def call_json(self, *args: str) -> dict[str, Any]:
        """``flwr <args> --format json`` parsed (the last JSON object it printed)."""
        text = self.call(*args, "--format", "json")
        start = text.find("{")
        if start < 0:
            raise self.launcher.error(f"no JSON in flwr output: {text[-500:]}")
        try:
            data = json.loads(text[start:])
        except json.JSONDecodeError as exc:
            raise self.launcher.error(f"cannot parse flwr output as JSON: {text[-500:]}") from exc
        if not isinstance(data, dict):
            raise self.launcher.error(f"unexpected flwr output: {text[-500:]}")
        return data

    def register_supernode(self, public_key: Path) -> int:
        """``flwr supernode register <key>``; returns the node id the SuperLink assigned."""
        data = self.call_json("supernode", "register", str(public_key), self.connection)
        if not data.get("success") or "node-id" not in data:
            raise self.launcher.error(f"registering {public_key} failed: {data}")
        return int(data["node-id"])

    def submit(self, app_dir: str | Path, run_config: Mapping[str, Any] | None = None) -> int:
        """``flwr run <app_dir> <connection> --run-config <toml>``; returns the run id."""
        app = Path(app_dir).resolve()
        if not (app / "pyproject.toml").is_file():
            raise ValueError(f"{app} is not a Flower App directory (no pyproject.toml)")
        args = ["run", str(app), self.connection]
        if run_config:
            cfg_path = self.launcher.cwd / f"run-config-{uuid.uuid4().hex[:8]}.toml"
            cfg_path.write_text(format_run_config(run_config), encoding="utf-8")
            args += ["--run-config", str(cfg_path)]
        data = self.call_json(*args)
        if not data.get("success") or not data.get("run-id"):
            raise self.launcher.error(f"`flwr run` did not start a run: {data}")
        run_id = int(data["run-id"])
        self.echo(f"submitted run {run_id} ({app.name})")
        return run_id

    def run_info(self, run_id: int) -> dict[str, Any]:
        """``flwr list --run-id`` as a dict (status, elapsed, timestamps...)."""
        data = self.call_json("list", self.connection, "--run-id", str(run_id))
        runs = data.get("runs") or []
        if not runs:
            raise self.launcher.error(f"run {run_id} unknown to the SuperLink: {data}")
        return dict(runs[0])

    def logs(self, run_id: int) -> str:
        """The run's ServerApp log as stored by the SuperLink (``flwr log --show``)."""
        return self.call("log", str(run_id), self.connection, "--show", check=False)

    def stop_run(self, run_id: int) -> None:
        """``flwr stop <run_id>``."""
        self.call("stop", str(run_id), self.connection, check=False)

    def _start_log_stream(self, run_id: int) -> ManagedProcess:
        cmd = [self.launcher.executable("flwr"), "log", str(run_id), self.connection, "--stream"]
        return self.launcher.launch(f"run-{run_id}", cmd, home=self.home, env=PLAIN_OUTPUT)

    def wait(
        self,
        run_id: int,
        timeout: float = 600.0,
        poll: float = 1.0,
        on_poll: Callable[[dict[str, Any]], None] | None = None,
    ) -> RunResult:
        """Wait for the run to finish; on timeout stop it (``flwr stop``), raise ``TimeoutError``.

        Follows the run with ONE ``flwr log RUN_ID --stream`` process (its output is the run's
        log file, ``<logs>/run-<id>.log``); the stream ends when the run ends, then one
        ``flwr list --run-id`` reads the final status. Should the stream end early, it falls back
        to polling ``flwr list`` every 5 s. ``on_poll(info)`` is called about every ``poll`` s.
        """
        deadline = time.monotonic() + timeout
        stream: ManagedProcess | None = self._start_log_stream(run_id)
        assert stream is not None
        log_path = stream.log_path
        info: dict[str, Any] = {"run-id": str(run_id)}
        next_list = 0.0
        try:
            while True:
                self.check_alive()
                if on_poll is not None:
                    on_poll(info)
                now = time.monotonic()
                if (stream is None and now >= next_list) or (
                    stream is not None and not stream.alive()
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
            if stream is not None:
                FlowerLauncher.stop_processes([stream], grace=5.0)
        return RunResult(
            run_id=run_id,
            status=str(info.get("status")),
            details=str(info.get("status-details", "")),
            elapsed=float(info.get("elapsed", 0.0) or 0.0),
            log_path=log_path if log_path.exists() else None,
            info=info,
        )
