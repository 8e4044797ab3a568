"""Run a fedstrat job as a Flower simulation on this machine, without deprecated entry points.

Route (Flower 1.41; ``flwr.simulation.run_simulation`` is deprecated in favour of ``flwr run``):

1. start our OWN ``flower-superlink --insecure --simulation --isolation subprocess
   --disable-runtime-dependency-installation`` on a free ``127.0.0.1`` port, with a private
   ``FLWR_HOME`` in a temporary folder (its Flower config holds one SuperLink connection,
   ``fedstrat``, pointing at that port; the user's ``~/.flwr`` is never touched);
2. submit the Flower App shipped in the package (``fedstrat/app/flwr_app``: a pyproject whose
   components are ``fedstrat.app.server_app:app`` and ``fedstrat.clients.client_app:app``) with
   ``flwr run <app> fedstrat --run-config <toml> --federation-config "num-supernodes=N
   client-resources-num-cpus=1 [client-resources-num-gpus=G] init-args-num-cpus=C" --stream``
   (``G``: :func:`client_gpu_share`, for ClientApps on a GPU); its output (Flower's logs) goes
   to ``<run dir>/logs/flower.log``. With ``ray_address`` the processes get ``RAY_ADDRESS``
   and no ``init-args-num-cpus``, so Flower's Ray backend attaches to that cluster;
3. follow ``<run dir>/progress.jsonl`` (written by the ServerApp after every round) and call
   ``on_round`` for each round;
4. stop everything in ``finally`` (also on errors and Ctrl-C): every process started here carries
   a unique ``FEDSTRAT_SIM_TAG`` environment marker, so SuperLink, SuperExec, the simulation
   process and Ray's processes are found in ``/proc`` and terminated by PID (SIGTERM, then
   SIGKILL), even those that started their own session.

Ports, executables, the SuperLink start, ``FLWR_HOME`` and process ownership are the job of
:class:`fedstrat.app.flower_local.FlowerLauncher`, which ``fedstrat deploy local`` uses too.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

from fedstrat.app import procs
from fedstrat.app.checkpoint import (
    changed_inputs,
    checkpoint_config,
    checkpoint_round,
    find_checkpoint_dir,
    load_checkpoint,
)
from fedstrat.app.config import ConfigError, RunConfig
from fedstrat.app.fileio import read_jsonl
from fedstrat.app.flower_local import (
    COMPLETED,
    LOOPBACK,
    FlowerLauncher,
    LaunchError,
    ManagedProcess,
    RunResult,
    flwr_app_dir,
    tail,
    write_flwr_config,
)
from fedstrat.app.rundir import (
    CONFIG_FILE,
    LOGS_DIR,
    PROGRESS_FILE,
    SUMMARY_FILE,
    RunDirError,
    add_runner_timings,
    default_run_dir,
    read_metrics,
    read_summary,
)
from fedstrat.app.stopping import clear_stop, marking_stop
from fedstrat.app.tomlwrite import flat_toml

#: Options that may differ between a run and its resumption (they do not change the model).
RESUMABLE_OPTIONS = frozenset(
    {
        "rounds",
        "out",
        "resume",
        "eval_every",
        "target_accuracy",
        "node_wait_timeout",
        "round_timeout",
        "device",
        "data_root",
        "ray_address",
    }
)
#: ``RunResult.details`` of a resumed run that had already finished (nothing was started).
ALREADY_FINISHED = "already finished"
CONNECTION = "fedstrat"
SUPERLINK_START_TIMEOUT = 60.0
#: Seconds to let Flower shut down by itself after the ServerApp reported "end" (or "error");
#: then the session is stopped (its outputs are complete at that point).
END_GRACE = 3.0


class SimulationError(LaunchError):
    """The simulation did not finish; the message names the cause and the log file."""


# ---------------------------------------------------------------------------- config
def model_changing_differences(a: RunConfig, b: RunConfig) -> list[str]:
    """Option names (``num-clients`` spelling) where ``a`` and ``b`` differ, leaving out
    :data:`RESUMABLE_OPTIONS`."""
    return [
        f.name.replace("_", "-")
        for f in dataclasses.fields(RunConfig)
        if f.name not in RESUMABLE_OPTIONS and getattr(a, f.name) != getattr(b, f.name)
    ]


def saved_config(run_dir: str | Path) -> RunConfig:
    """The configuration a checkpointed run was started with: the one stored with its
    checkpoint (``state.json``), not the editable ``config.toml`` (used only for checkpoints
    that store none). A ``config.toml`` that differs from the stored configuration outside
    :data:`RESUMABLE_OPTIONS` raises :class:`ConfigError` naming the differing options."""
    ckpt = find_checkpoint_dir(run_dir)
    toml_path = ckpt.parent / CONFIG_FILE
    stored = checkpoint_config(ckpt)
    if stored is None:
        return RunConfig.from_toml(toml_path)
    try:
        saved = RunConfig.from_mapping(stored)
    except ConfigError as exc:
        message = f"resume: the configuration stored in {ckpt} is unusable: {exc}"
        raise ConfigError(message) from None
    if toml_path.is_file():
        diff = model_changing_differences(saved, RunConfig.from_toml(toml_path))
        if diff:
            raise ConfigError(
                f"resume: {toml_path} differs from the configuration saved with the checkpoint "
                f"in: {', '.join(diff)} (a resumed run keeps its configuration; restore the file "
                "or start a new run)"
            )
    return saved


def resume_config(run_dir: str | Path, **overrides: Any) -> RunConfig:
    """The saved configuration of ``run_dir`` (:func:`saved_config`) with ``resume`` set (plus
    ``overrides``, e.g. ``rounds=40``): pass it to :func:`run_simulation_job` to continue."""
    base_dir = find_checkpoint_dir(run_dir).parent
    values = {"resume": str(base_dir), "out": str(base_dir), **overrides}
    return RunConfig.from_mapping(values, base=saved_config(base_dir)).validate()


def prepare_job(cfg: RunConfig) -> RunConfig:
    """Validate ``cfg`` and resolve its run directory to an absolute path (nothing is written).

    Fresh runs refuse a non-empty existing directory. ``resume`` must name a run directory with
    a readable checkpoint whose saved configuration (:func:`saved_config`) equals ``cfg`` except
    for :data:`RESUMABLE_OPTIONS`; the resumed run continues in that directory. Raises
    :class:`ConfigError`.
    """
    cfg = dataclasses.replace(cfg).validate()
    if cfg.device.startswith("cuda") and not cfg.ray_address and visible_gpus() < 1:
        raise ConfigError(f"device={cfg.device!r}, but no CUDA device is visible here "
                          "(device='auto' trains on the GPU where there is one)")
    if cfg.resume:
        ckpt = find_checkpoint_dir(cfg.resume)
        run_dir = ckpt.parent.resolve()
        if cfg.out and Path(cfg.out).resolve() != run_dir:
            raise ConfigError(
                f"a resumed run continues in its own directory {run_dir}; out={cfg.out!r} differs"
            )
        diff = model_changing_differences(saved_config(run_dir), cfg)
        if diff:
            raise ConfigError(
                "resume: these options differ from the saved run and would change the result: "
                + ", ".join(diff)
                + " (leave them out: --resume continues with the saved configuration; from "
                "Python, fedstrat.app.simulation.resume_config gives it)"
            )
        changed = changed_inputs(ckpt, cfg)
        if changed:
            raise ConfigError(
                f"resume: {', '.join(changed)} changed since the run started (its sha256 "
                "differs from the one saved with the checkpoint); a resumed run must train on "
                "the same files"
            )
        done = checkpoint_round(ckpt)
        if done > cfg.rounds:
            raise ConfigError(f"resume: the checkpoint is at round {done} > rounds={cfg.rounds}")
        load_checkpoint(ckpt)  # every array file readable (a truncated .npz fails here)
        return dataclasses.replace(cfg, out=str(run_dir), resume=str(run_dir))
    run_dir = Path(cfg.out) if cfg.out else default_run_dir(cfg)
    run_dir = run_dir.expanduser().resolve()
    if run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
        raise ConfigError(
            f"run directory {run_dir} already exists and is not empty; choose another out "
            "(or resume it)"
        )
    return dataclasses.replace(cfg, out=str(run_dir))


def finished_result(cfg: RunConfig) -> RunResult | None:
    """For a prepared resume (:func:`prepare_job`) of a run that already finished its
    ``cfg.rounds`` rounds (checkpoint at that round, ``summary.json`` written for them): the
    run's result read from its directory, with ``details`` = :data:`ALREADY_FINISHED`.
    None when there is something left to do."""
    if not cfg.resume:
        return None
    run_dir = Path(cfg.out)
    try:
        summary = read_summary(run_dir)
        if summary is None or summary.rounds != cfg.rounds:
            return None
        if checkpoint_round(find_checkpoint_dir(run_dir)) != cfg.rounds:
            return None
        metrics = [row.to_dict() for row in read_metrics(run_dir)]
    except (RunDirError, ConfigError, OSError):
        return None
    return RunResult(
        status=COMPLETED,
        run_dir=run_dir,
        metrics=metrics,
        summary=summary.to_dict(),
        details=ALREADY_FINISHED,
        log_path=run_dir / LOGS_DIR / "flower.log",
    )


# ---------------------------------------------------------------------------- processes
def _cpu_count() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


class _Session:
    """One private SuperLink (+ everything it spawns) in a temporary ``FLWR_HOME``, started
    and stopped by a :class:`FlowerLauncher` whose marker is ``FEDSTRAT_SIM_TAG``."""

    def __init__(self, run_dir: Path, quiet: bool, ray_address: str = "") -> None:
        self.home = Path(tempfile.mkdtemp(prefix="fedstrat-flwr-"))
        self.logs = run_dir / LOGS_DIR
        self.echo = not quiet
        self.launcher = FlowerLauncher(
            cwd=self.home,
            logs_dir=self.logs,
            marker_env=procs.TAG_ENV,
            # Flower's federation config has no Ray address: ray.init() reads RAY_ADDRESS
            env={"RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
                 **({"RAY_ADDRESS": ray_address} if ray_address else {})},
            error=SimulationError,
        )
        self.tag = self.launcher.marker

    def start_superlink(self) -> float:
        """Start the SuperLink, wait until its HTTP API answers; returns seconds taken."""
        t0 = time.perf_counter()
        _, port = self.launcher.start_superlink(
            [
                "--insecure",
                "--simulation",
                "--isolation",
                "subprocess",
                "--disable-runtime-dependency-installation",
            ],
            home=self.home,
            timeout=SUPERLINK_START_TIMEOUT,
            attempts=3,
            echo=self.echo,
        )
        write_flwr_config(self.home, CONNECTION, f"{LOOPBACK}:{port}")
        return time.perf_counter() - t0

    def submit(self, cfg: RunConfig, num_cpus: int) -> ManagedProcess:
        """``flwr run <packaged app> fedstrat --run-config ... --federation-config ...``."""
        run_config = self.home / "run-config.toml"
        run_config.write_text(flat_toml(cfg.to_flower()), encoding="utf-8")
        gpus = 0 if cfg.device == "cpu" else visible_gpus()  # cpu: no torch import here
        federation = federation_config(cfg, num_cpus, gpus)
        cmd = [
            self.launcher.executable("flwr"),
            "run",
            str(flwr_app_dir()),
            CONNECTION,
            "--run-config",
            str(run_config),
            "--federation-config",
            federation,
            "--stream",
        ]
        return self.launcher.launch("flower", cmd, home=self.home, echo=self.echo)

    def close(self) -> None:
        """Stop every process of this session (by PID) and remove the private FLWR_HOME."""
        try:
            self.launcher.stop()
        finally:
            shutil.rmtree(self.home, ignore_errors=True)


# ---------------------------------------------------------------------------- Ray resources
def visible_gpus() -> int:
    """CUDA devices torch sees in this process (0 without CUDA)."""
    import torch

    return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0


def client_gpu_share(device: str, concurrency: int, gpus: int) -> float:
    """Ray GPUs one simulated ClientApp reserves. Ray hides the GPUs from an actor that
    reserves none (``CUDA_VISIBLE_DEVICES=""``), so a ClientApp on ``"cuda[:k]"``, or on
    ``"auto"`` where a GPU is visible, gets a share: the ``gpus`` spread over the
    ``concurrency`` clients that run at once, at most one GPU; 0 for ``"cpu"`` or no GPU."""
    if gpus < 1 or not (device in ("", "auto") or device.startswith("cuda")):
        return 0.0
    return min(1.0, gpus / max(int(concurrency), 1))


def federation_config(cfg: RunConfig, num_cpus: int, gpus: int) -> str:
    """``flwr run --federation-config`` of ``cfg``: one simulated SuperNode per client, one CPU
    per ClientApp, :func:`client_gpu_share` of the ``gpus`` visible here (with ``ray_address``
    and no GPU here, a ``cuda`` ClientApp reserves one GPU of the cluster), and ``num_cpus``
    for Ray unless it attaches to an existing cluster (``ray.init`` refuses ``num_cpus``)."""
    out = f"num-supernodes={cfg.num_clients} client-resources-num-cpus=1"
    share = client_gpu_share(cfg.device, min(num_cpus, cfg.num_clients), gpus)
    if cfg.ray_address and gpus < 1 and cfg.device.startswith("cuda"):
        share = 1.0
    if share > 0:
        out += f" client-resources-num-gpus={share:.6g}"
    if not cfg.ray_address:
        out += f" init-args-num-cpus={num_cpus}"
    return out


# ---------------------------------------------------------------------------- runner
def run_simulation_job(
    cfg: RunConfig,
    *,
    on_round: Callable[[dict[str, Any]], None] | None = None,
    quiet: bool = True,
    timeout: float | None = None,
    num_cpus: int | None = None,
) -> RunResult:
    """Run ``cfg`` as a Flower simulation (``cfg.num_clients`` simulated SuperNodes).

    ``on_round`` receives each ``{"event": "round", "round": r, "rounds": R, ...}`` progress
    record (same keys as a metrics row) as soon as the ServerApp has written it. ``quiet=False``
    also echoes Flower's logs to stderr (they always go to ``<run dir>/logs/``). ``num_cpus``:
    CPUs given to Ray (default: all available); each simulated client uses one. ``timeout``:
    seconds for the whole job (None = no limit). Raises :class:`ConfigError` for a bad
    configuration before anything is written, :class:`SimulationError` when the run fails or
    times out. No process started here outlives this call. Resuming a run that has already
    finished its rounds starts nothing and writes nothing (:func:`finished_result`).
    """
    cfg = prepare_job(cfg)
    done = finished_result(cfg)
    if done is not None:
        return done
    run_dir = Path(cfg.out)
    run_dir.mkdir(parents=True, exist_ok=True)
    progress_path = run_dir / PROGRESS_FILE
    clear_stop(run_dir)  # left by a run that was stopped
    seen = len(read_jsonl(progress_path))  # a resumed run appends to its progress file
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    session = _Session(run_dir, quiet, cfg.ray_address)
    events: list[dict[str, Any]] = []
    # the mark is written before session.close() stops a process (fedstrat.app.stopping)
    with closing(session), marking_stop(run_dir):
        timings["superlink_start_s"] = session.start_superlink()
        flwr_proc = session.submit(cfg, num_cpus or _cpu_count())
        end_seen_at: float | None = None
        while True:
            records = read_jsonl(progress_path)
            for rec in records[seen:]:
                events.append(rec)
                if rec.get("event") == "start" and "app_start_s" not in timings:
                    timings["app_start_s"] = time.perf_counter() - t_start
                if rec.get("event") == "round":
                    timings.setdefault("first_round_s", time.perf_counter() - t_start)
                    if on_round is not None:
                        on_round(rec)
                if rec.get("event") in ("end", "error") and end_seen_at is None:
                    end_seen_at = time.monotonic()
            seen = len(records)
            if not flwr_proc.alive():
                if len(read_jsonl(progress_path)) == seen:
                    break
                continue
            if end_seen_at is not None and time.monotonic() - end_seen_at > END_GRACE:
                break  # every output is written; do not wait for Ray's teardown
            if timeout is not None and time.perf_counter() - t_start > timeout:
                raise SimulationError(
                    f"simulation timed out after {timeout:.0f}s; logs: {session.logs}"
                )
            time.sleep(0.2)
    timings["total_s"] = time.perf_counter() - t_start
    errors = [e for e in events if e.get("event") == "error"]
    summary_path = run_dir / SUMMARY_FILE
    if errors or not any(e.get("event") == "end" for e in events) or not summary_path.is_file():
        reason = errors[-1].get("message", "") if errors else "the ServerApp did not finish"
        raise SimulationError(
            f"simulation failed: {reason}\n--- last lines of {session.logs / 'flower.log'}:\n"
            + tail(session.logs / "flower.log")
        )
    summary = add_runner_timings(run_dir, timings).to_dict()
    metrics = [row.to_dict() for row in read_metrics(run_dir)]
    return RunResult(
        status=COMPLETED,
        elapsed=timings["total_s"],
        run_dir=run_dir,
        metrics=metrics,
        summary=summary,
        log_path=session.logs / "flower.log",
        process_tag=session.tag,
    )
