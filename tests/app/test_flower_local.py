"""The local-Flower launcher and the TOML writer, without starting Flower itself."""

from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path

import pytest

from fedstrat.app import flower_local, procs
from fedstrat.app.flower_local import (
    FlowerLauncher,
    LaunchError,
    RunResult,
    child_env,
    find_executable,
    free_port,
    write_flwr_config,
)
from fedstrat.app.tomlwrite import flat_toml, toml_value

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def _script(folder: Path, name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(0o755)
    return path


def test_executables_come_from_the_interpreter_folder_before_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    venv_bin, other_bin = tmp_path / "venv" / "bin", tmp_path / "other"
    mine = _script(venv_bin, "flower-fake")
    on_path = _script(other_bin, "flower-fake")
    monkeypatch.setattr(sys, "executable", str(venv_bin / "python"))
    monkeypatch.setenv("PATH", str(other_bin))
    assert find_executable("flower-fake") == str(mine)
    mine.unlink()  # not next to the interpreter: PATH is the fallback
    assert find_executable("flower-fake") == str(on_path)
    on_path.unlink()
    with pytest.raises(LaunchError, match="flower-fake"):
        find_executable("flower-fake")


def test_real_flower_scripts_are_found_without_the_venv_on_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    exe = find_executable("flower-superlink")
    assert Path(exe).parent == Path(sys.executable).parent


def test_children_get_the_interpreter_folder_first_on_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir = str(Path(sys.executable).parent)
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    env = child_env("FEDSTRAT_TEST_MARK", "abc", tmp_path, {"EXTRA": "1"})
    assert env["PATH"] == bin_dir + os.pathsep + "/usr/bin:/bin"
    assert env["FEDSTRAT_TEST_MARK"] == "abc" and env["FLWR_HOME"] == str(tmp_path)
    assert env["FLWR_TELEMETRY_ENABLED"] == "0" and env["EXTRA"] == "1"
    monkeypatch.setenv("PATH", env["PATH"])
    assert child_env("M", "x", tmp_path)["PATH"] == env["PATH"]  # not prepended twice


def test_flwr_config_is_valid_toml(tmp_path: Path) -> None:
    path = write_flwr_config(tmp_path, "conn", "127.0.0.1:9093")
    assert tomllib.loads(path.read_text()) == {
        "superlink": {"default": "conn", "conn": {"address": "127.0.0.1:9093", "insecure": True}}
    }
    ca = tmp_path / "ca.pem"
    path = write_flwr_config(tmp_path / "tls", "conn", "127.0.0.1:1", root_certificates=ca)
    conn = tomllib.loads(path.read_text())["superlink"]["conn"]
    assert conn == {"address": "127.0.0.1:1", "root-certificates": str(ca)}


def test_flat_toml_round_trips_and_rejects_what_toml_cannot_hold() -> None:
    values = {"a": 1, "b": 0.1, "c": 1e20, "d": True, "e": 'q"uo\\te\n', "f-g": ""}
    text = flat_toml(values, "t")
    assert text.startswith("[t]\na = 1\nb = 0.1\n")
    assert tomllib.loads(text) == {"t": values}
    with pytest.raises(ValueError, match="non-finite"):
        flat_toml({"a": math.nan})
    assert flat_toml({"a": -math.inf}, allow_nonfinite=True) == "a = -inf\n"
    with pytest.raises(ValueError, match="invalid TOML key"):
        flat_toml({"a.b": 1})
    with pytest.raises(ValueError, match="bool, int, float or str"):
        toml_value([1])


def test_launcher_stops_its_processes_and_their_detached_children(tmp_path: Path) -> None:
    launcher = FlowerLauncher(cwd=tmp_path, logs_dir=tmp_path / "logs", marker_env="FST_MARK")
    # a child that starts a grandchild in its own session (as Flower's SuperExec does)
    code = (
        "import subprocess, sys, time;"
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'],"
        " start_new_session=True); print('up', flush=True); time.sleep(60)"
    )
    proc = launcher.launch("sleeper", [sys.executable, "-c", code], home=tmp_path / "home")
    deadline = time.monotonic() + 20
    while len(launcher.pids()) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.pid in launcher.pids() and len(launcher.pids()) == 2
    launcher.stop(grace=2.0, sweep_grace=2.0)
    assert launcher.pids() == [] and not proc.alive()
    assert procs.marked_pids("FST_MARK", launcher.marker) == []
    log = proc.log_path.read_text()
    assert log.startswith(f"\n$ {sys.executable} -c") and "up" in log


def test_superlink_that_exits_raises_the_callers_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class MyError(LaunchError):
        pass

    failing = tmp_path / "bin" / "flower-superlink"
    failing.parent.mkdir()
    failing.write_text("#!/bin/sh\necho broken-link-start\nexit 3\n")
    failing.chmod(0o755)
    monkeypatch.setattr(flower_local, "find_executable", lambda name: str(failing))
    launcher = FlowerLauncher(
        cwd=tmp_path, logs_dir=tmp_path / "logs", marker_env="FST_MARK", error=MyError
    )
    with pytest.raises(MyError, match="exited with code 3(.|\n)*broken-link-start"):
        launcher.start_superlink([], home=tmp_path / "home", timeout=10, attempts=2)
    assert (tmp_path / "logs" / "superlink.log").read_text().count("$ ") == 2  # two attempts
    launcher.stop()


def test_free_port_and_run_result() -> None:
    port = free_port()
    assert 0 < port < 65536
    assert RunResult(status="finished:completed").ok
    assert not RunResult(status="finished:failed").ok


def test_launched_processes_get_no_stdin(tmp_path: Path) -> None:
    launcher = FlowerLauncher(cwd=tmp_path, logs_dir=tmp_path, marker_env="FST_MARK")
    proc = launcher.launch("cat", ["cat"], home=tmp_path)  # stdin closed: cat ends at once
    assert proc.popen.wait(timeout=10) == 0
    launcher.stop()
