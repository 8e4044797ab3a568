"""The example Flower Apps in examples/: their pyproject.toml works under Flower 1.42's runtime
dependency installation (only index-resolvable packages, never fedstrat), their task code
trains, and (``deploy``) each runs with ``flwr run`` on a local SuperLink with runtime
dependency installation off.
"""

from __future__ import annotations

import importlib
import re
import sys
from importlib import metadata
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted(p.parent for p in (ROOT / "examples").glob("*/pyproject.toml"))


def _project(path: Path) -> dict:
    return tomllib.loads((path / "pyproject.toml").read_text())


@pytest.mark.parametrize("app", EXAMPLES, ids=lambda p: p.name)
def test_dependencies_are_index_resolvable_and_omit_fedstrat(app):
    deps = _project(app)["project"]["dependencies"]
    names = [re.split(r"[\s\[<>=!~;@]", d, maxsplit=1)[0].lower() for d in deps]
    assert "fedstrat" not in names  # not on the index: `uv sync` would fail the run
    assert not any("@" in d or "file:" in d for d in deps)
    for name in names:  # real distributions (installed here from the index)
        assert metadata.version(name)
    flwr = [d for d in deps if d.lower().startswith("flwr")]
    assert flwr and "<1.43" in flwr[0] and ">=1.41" in flwr[0]


@pytest.mark.parametrize("app", EXAMPLES, ids=lambda p: p.name)
def test_components_import(app, monkeypatch):
    comps = _project(app)["tool"]["flwr"]["app"]["components"]
    monkeypatch.syspath_prepend(str(app))
    for ref in comps.values():
        module, attr = ref.split(":")
        assert getattr(importlib.import_module(module), attr) is not None
    for name in list(sys.modules):
        if name.split(".")[0] in {r.split(".")[0] for r in comps.values()}:
            del sys.modules[name]


def test_pytorch_task_trains_and_profiles(monkeypatch):
    pytest.importorskip("torch")
    monkeypatch.syspath_prepend(str(ROOT / "examples" / "quickstart-pytorch"))
    task = importlib.import_module("pytorch_app.task")
    from fedstrat.clients import label_profile

    trainloader, testloader = task.load_data(1, 10)
    hist, n = label_profile(trainloader, num_classes=10)
    assert n == len(trainloader.dataset) and hist.sum() == n
    net = task.Net()
    before = task.test(net, testloader)[0]
    task.train(net, trainloader, 2, 0.05)
    assert task.test(net, trainloader)[0] < before
    del sys.modules["pytorch_app.task"], sys.modules["pytorch_app"]


_log_checked: dict[int, int] = {}  # SuperNode index -> bytes of its log already checked


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    """ONE local SuperLink (insecure, runtime dependency installation off) with 6 SuperNodes
    for every example run: starting and stopping one costs ~15 s on 2 cores. Each example is
    its own Flower run (its own FAB, ServerApp and ClientApp processes); each SuperNode log is
    checked in pieces: every test reads what was logged since the previous test read it (the
    first test also reads the start-up)."""
    from fedstrat.deploy.local import LocalFederation

    # SuperExecs poll for new ServerApp/ClientApp tasks every 0.1 s instead of Flower's 1 s
    fast = {"FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.1"}
    with LocalFederation(6, tls=False, auth=False, workdir=tmp_path_factory.mktemp("fed"),
                         env=fast) as fed:
        _log_checked.clear()
        _log_checked.update(dict.fromkeys(range(6), 0))
        yield fed


@pytest.mark.deploy
@pytest.mark.parametrize("app", EXAMPLES, ids=lambda p: p.name)
def test_example_runs_with_flwr_run_installation_off(app, federation):
    """``flwr run <app>`` on a local SuperLink (insecure, runtime dependency installation off)
    with 6 SuperNodes: the run completes; neither its log nor any SuperNode's log of this run
    has an ERROR line (the sklearn app's ClientApp has no query handler and is never queried)."""
    fed = federation
    assert len(fed.supernodes) == 6 and all(p.alive() for p in fed.supernodes.values())
    result = fed.run(app, {"num-server-rounds": 2, "clients-per-round": 3}, timeout=600)
    log = fed.cli.logs(result.run_id) if result.run_id is not None else ""
    node_logs = []
    for i, p in fed.supernodes.items():
        text = p.log_path.read_bytes()
        node_logs.append(text[_log_checked[i] :].decode(errors="replace"))
        _log_checked[i] = len(text)
    assert result.ok, (result.status, result.details, log[-3000:])
    assert not [t for t in node_logs if "ERROR" in t or "No query function" in t]
    assert "StratifiedSelection" in log and "chose 3 of 6 nodes" in log
    assert "ERROR" not in log


def test_fedstrat_flower_app_survives_runtime_dependency_installation(tmp_path):
    """Flower 1.42's default: ``uv sync`` on the app's dependencies into a per-run env. The
    fedstrat Flower App lists none, so this works offline and fedstrat still imports."""
    import os
    import shutil
    import subprocess

    from fedstrat.app.simulation import flwr_app_dir

    app = tmp_path / "app"
    shutil.copytree(flwr_app_dir(), app)
    code = (
        "from flwr.supercore.superexec.dependency_installer import install_app_dependencies\n"
        f"install_app_dependencies({str(app)!r}, run_id=7)\n"
        "import fedstrat.strategies, fedstrat.clients.client_app\n"
        "print('imported', fedstrat.__file__)\n"
    )
    env = {**os.environ, "UV_OFFLINE": "1", "FLWR_HOME": str(tmp_path / "flwr-home"),
           "HOME": str(tmp_path), "FLWR_TELEMETRY_ENABLED": "0"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "imported" in out.stdout


def test_supported_flower_range_is_stated_and_installed():
    """README states the range of the pin; the installed Flower is inside it (the tests run
    on it). The lowest version of the range runs in its own venv: test_flower_range.py (slow)."""
    pin = [d for d in _project(ROOT)["project"]["dependencies"] if d.startswith("flwr")][0]
    assert ">=1.41" in pin and "<1.43" in pin
    assert "Flower >= 1.41, < 1.43" in (ROOT / "README.md").read_text()
    major, minor = (int(v) for v in metadata.version("flwr").split(".")[:2])
    assert (1, 41) <= (major, minor) < (1, 43)
