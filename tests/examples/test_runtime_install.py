"""``flwr run`` under Flower 1.42's DEFAULT settings: the SuperLink installs each app's
dependencies with ``uv sync`` into a per-run environment (no
``--disable-runtime-dependency-installation``); SuperNodes keep Flower's default (off).

Every app in examples/, the repository itself (``flwr run .`` in the repo root) and the app
shipped in the package (fedstrat/app/flwr_app, empty dependency list) runs
2 rounds on a local insecure SuperLink with 4 SuperNodes; the ServerApp log must show that
``uv sync`` ran and what it installed, and that StratifiedSelection chose the nodes.

Needs a package index (``uv sync`` resolves every dependency): marked ``deploy`` and
``slow``, skipped with the reason when ``uv`` or the index is unreachable. torch: an
unpinned ``torch`` from PyPI is a multi-GB CUDA build, so when PyTorch's CPU index is not
reachable either, a local CPU wheel (from ``PIP_FIND_LINKS`` / /opt/wheels) is served as a
file:// simple index through ``UV_INDEX``: uv's first-index strategy then takes torch from it
(the same mechanism as ``UV_INDEX=https://download.pytorch.org/whl/cpu``, see README.md).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted(p.parent for p in (ROOT / "examples").glob("*/pyproject.toml"))
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"

pytestmark = [pytest.mark.deploy, pytest.mark.slow]

#: Run config per app (2 rounds, 2 of 4 nodes); the repository's own app on sklearn digits.
CONFIGS: dict[str, dict] = {
    "repo": {
        "dataset": "digits", "model": "mlp", "partition": "dirichlet", "alpha": 1.0,
        "num-clients": 4, "clients-per-round": 2, "rounds": 2, "local-epochs": 1,
        "lr": 0.2, "batch-size": 32, "seed": 0, "node-wait-timeout": 60.0,
    },
}
CONFIGS["packaged"] = CONFIGS["repo"]
APPS = [pytest.param(p, id=p.name) for p in EXAMPLES] + [
    pytest.param(ROOT, id="repo"),  # `flwr run .` in the repository root
    pytest.param(None, id="packaged"),  # the app shipped in fedstrat/app/flwr_app
]


def _reachable(url: str, timeout: float = 10.0) -> bool:
    if url.startswith("file://"):
        return Path(url[len("file://"):]).exists()
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout):
            return True
    except Exception:  # noqa: BLE001 - any failure means "not reachable"
        return False


def _local_torch_cpu_wheel() -> Path | None:
    dirs = os.environ.get("PIP_FIND_LINKS", "").split() + ["/opt/wheels"]
    tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
    for d in dirs:
        for whl in sorted(Path(d).glob(f"torch-*+cpu-{tag}-*.whl")) if Path(d).is_dir() else []:
            return whl
    return None


@pytest.fixture(scope="module")
def uv_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Environment for the SuperLink so that ``uv sync`` works here (or a skip)."""
    uv = subprocess.run([sys.executable, "-m", "uv", "--version"], capture_output=True)
    if uv.returncode != 0:
        pytest.skip("`python -m uv` is not available: Flower's runtime installation needs uv")
    index = os.environ.get("UV_DEFAULT_INDEX") or os.environ.get("UV_INDEX_URL")
    index = (index or "https://pypi.org/simple").rstrip("/")
    if not _reachable(f"{index}/flwr/"):
        pytest.skip(f"package index {index} not reachable: `uv sync` cannot resolve anything")
    env: dict[str, str] = {}
    if "UV_INDEX" not in os.environ and not _reachable(f"{TORCH_CPU_INDEX}/torch/"):
        wheel = _local_torch_cpu_wheel()
        if wheel is None:
            pytest.skip("neither PyTorch's CPU index nor a local torch CPU wheel: uv would "
                        "download a multi-GB CUDA torch from PyPI")
        simple = tmp_path_factory.mktemp("torch-cpu-index")
        (simple / "torch").mkdir()
        (simple / "torch" / wheel.name).symlink_to(wheel)
        (simple / "torch" / "index.html").write_text(f'<a href="{wheel.name}">{wheel.name}</a>\n')
        env["UV_INDEX"] = simple.as_uri()
    elif "UV_INDEX" not in os.environ:
        env["UV_INDEX"] = TORCH_CPU_INDEX
    return env


@pytest.mark.parametrize("app", APPS)
def test_flwr_run_with_runtime_dependency_installation(app, uv_env, tmp_path):
    from fedstrat.app.flower_local import flwr_app_dir
    from fedstrat.deploy.local import LocalFederation

    name = "repo" if app == ROOT else "packaged" if app is None else app.name
    app = flwr_app_dir() if app is None else app
    cfg = CONFIGS.get(name, {"num-server-rounds": 2, "clients-per-round": 2})
    if name in ("repo", "packaged"):
        cfg = dict(cfg, out=str(tmp_path / "out"))
    t0 = time.monotonic()
    with LocalFederation(4, tls=False, auth=False, workdir=tmp_path / "fed", env=uv_env,
                         runtime_dependency_install=True, startup_timeout=120.0) as fed:
        result = fed.run(app, cfg, timeout=900)
        log = fed.cli.logs(result.run_id) if result.run_id is not None else ""
        node_logs = [p.log_path.read_text() for p in fed.supernodes.values()]
        link_log = fed.superlink.log_path.read_text() if fed.superlink else ""
    elapsed = time.monotonic() - t0
    text = log + link_log
    assert "Runtime dependency installation is disabled" not in text
    took = re.search(r"uv sync took ([\d.]+) seconds", text)
    assert took, (result.status, log[-4000:])  # the ServerApp's env was built by uv sync
    installed = re.search(r"Installed: \[(.*?)\]", text)
    torch_line = re.search(r"torch==[^,\]]+", installed.group(1)) if installed else None
    if torch_line:  # the CPU wheel, never the multi-GB CUDA build
        assert "+cpu" in torch_line.group(0) and "nvidia" not in installed.group(1)
    assert "StratifiedSelection" in log and "chose 2 of 4 nodes" in log, log[-4000:]
    assert "round 2: StratifiedSelection" in log and log.count("chose 2 of 4 nodes") == 2
    assert log.count("aggregate_train: Received 2 results and 0 failures") == 2, log[-4000:]
    assert "ERROR" not in log, log[-4000:]
    assert not [t for t in node_logs if "ERROR" in t or "No query function" in t]
    print(f"\n{name}: {result.status} in {elapsed:.0f} s (federation start to stop), "
          f"uv sync {took.group(1)} s, "
          f"{len(installed.group(1).split(', ')) if installed else 0} packages installed, "
          f"{torch_line.group(0) if torch_line else 'no torch'}")
    if not result.ok and result.details == "No heartbeat received from the task":
        # Flower 1.41/1.42: at exit the ServerApp removes its per-run env (LIFO exit handlers)
        # BEFORE pushing its final status, inside flwr_exit's 5 s force-exit window; when the
        # removal takes longer (a torch env is ~1 GB; a loaded machine), os._exit cuts it and
        # the SuperLink marks the completed run failed once the task's heartbeat expires.
        pytest.xfail("run completed (all rounds in the log) but Flower reported it "
                     "failed: its runtime-env cleanup outlasted the 5 s force-exit window")
    assert result.ok, (result.status, result.details, log[-4000:], link_log[-1500:])
