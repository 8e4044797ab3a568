"""Issue 15's GPU check: CNN and DeepFM clients trained on a cuda device next to the CPU, and a
short ``fedstrat simulate --device cuda``.

1. Clients: the ``cnn`` model on 1,000 MNIST-5k images and ``deepfm`` on 5,000 MovieLens-100k
   ratings (the shipped models, ``fedstrat.models.train_steps``, SGD lr 0.01, batch 32), each
   from the same initial weights and training seed on the CPU and on ``--device``: seconds per
   local epoch (median of ``--repeats`` after a warm-up epoch), the final data loss on both, and
   the largest difference between the two trained parameter vectors relative to the largest
   parameter (cuda kernels are not bit-identical to the CPU's; a large value would be a bug).
2. Simulation: ``fedstrat simulate --dataset mnist5k --model cnn --rounds 3 --device <device>``
   (the real Flower simulation, ClientApps training on the device), its final accuracy and
   per-round seconds read back with :func:`fedstrat.app.rundir.load_run`.

Results: ``benchmarks/results/gpu_check.json`` (device name, torch and CUDA versions). Without a
cuda device the script stops with a message; ``--device cpu`` runs every step on the CPU (a dry
run of the script itself, written to ``gpu_check_cpu_dryrun.json``). CI never runs this.

    python benchmarks/gpu_check.py                     # on a machine with a GPU, ~2-5 min
    python benchmarks/gpu_check.py --device cpu --repeats 1 --rounds 2   # dry run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

from fedstrat.app.flower_local import find_executable  # noqa: E402
from fedstrat.app.rundir import load_run  # noqa: E402
from fedstrat.data import load_dataset  # noqa: E402
from fedstrat.models import build_model, train_steps  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
CLIENTS = (("cnn", "mnist5k", 1000), ("deepfm", "movielens-100k", 5000))


def _flat(model: torch.nn.Module) -> np.ndarray:
    return torch.cat([p.detach().float().cpu().reshape(-1) for p in model.parameters()]).numpy()


def client_check(name: str, dataset: str, n: int, device: str, repeats: int) -> dict:
    """One client's local training on the CPU and on ``device`` from the same start."""
    ds = load_dataset(dataset, seed=0)
    idx = np.random.default_rng(1).choice(len(ds.y), size=min(n, len(ds.y)), replace=False)
    x, y = ds.x[idx], ds.y[idx]
    out: dict = {"model": name, "dataset": dataset, "examples": int(len(idx))}
    trained = {}
    for key, dev in (("cpu", "cpu"), ("device", device)):
        torch.manual_seed(0)
        model = build_model(name, ds)
        train_steps(model, x, y, ds.task, epochs=1, seed=0, device=dev)  # warm-up (and kernels)
        if dev.startswith("cuda"):
            torch.cuda.synchronize()
        secs, loss = [], float("nan")
        for r in range(repeats):
            t0 = time.perf_counter()
            loss = train_steps(model, x, y, ds.task, epochs=1, seed=1 + r, device=dev)["loss"]
            if dev.startswith("cuda"):
                torch.cuda.synchronize()
            secs.append(time.perf_counter() - t0)
        trained[key] = _flat(model)
        out[f"{key}_epoch_s"] = statistics.median(secs)
        out[f"{key}_final_loss"] = loss
        out["parameters"] = int(trained[key].size)
    diff = float(np.max(np.abs(trained["cpu"] - trained["device"])))
    out["max_param_diff_rel"] = diff / max(float(np.max(np.abs(trained["cpu"]))), 1e-30)
    out["finite"] = bool(np.all(np.isfinite(trained["device"])))
    out["speedup_cpu_over_device"] = out["cpu_epoch_s"] / out["device_epoch_s"]
    return out


def simulate_check(device: str, rounds: int) -> dict:
    """``fedstrat simulate`` on ``device``; what its run directory says."""
    fedstrat = find_executable("fedstrat")  # next to the interpreter, else on PATH
    with tempfile.TemporaryDirectory(prefix="fedstrat-gpu-") as tmp:
        cmd = [fedstrat, "simulate", "--dataset", "mnist5k", "--model", "cnn", "--rounds",
               str(rounds), "--device", device, "--seed", "0", "--out", f"{tmp}/run"]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
        wall = time.perf_counter() - t0
        out = {"command": " ".join(cmd[1:]), "returncode": proc.returncode, "wall_s": wall}
        if proc.returncode != 0:
            out["stderr_tail"] = proc.stderr[-3000:]
            return out
        run = load_run(Path(tmp) / "run")
        out["final_accuracy"] = run.summary.final
        out["round_seconds"] = [r.seconds for r in run.rows if r.round > 0]
        return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--skip-simulation", action="store_true")
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("no cuda device here (torch.cuda.is_available() is False); "
                 "--device cpu for a dry run of this script")
    t0 = time.perf_counter()
    payload = {
        "benchmark": "gpu_check",
        "command": "python benchmarks/gpu_check.py " + " ".join(sys.argv[1:]),
        "device": args.device,
        "device_name": (torch.cuda.get_device_name(torch.device(args.device))
                        if args.device.startswith("cuda") else platform.processor() or "cpu"),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "clients": [client_check(m, d, n, args.device, args.repeats) for m, d, n in CLIENTS],
    }
    for c in payload["clients"]:
        print(f"{c['model']}: epoch {c['cpu_epoch_s']:.3f} s cpu / {c['device_epoch_s']:.3f} s "
              f"{args.device}, loss {c['cpu_final_loss']:.4f} / {c['device_final_loss']:.4f}, "
              f"max param diff {c['max_param_diff_rel']:.2e} of the largest", flush=True)
    if not args.skip_simulation:
        payload["simulation"] = sim = simulate_check(args.device, args.rounds)
        print(f"simulate on {args.device}: exit {sim['returncode']}, "
              f"final accuracy {sim.get('final_accuracy')}, {sim['wall_s']:.0f} s", flush=True)
    payload["runtime_s"] = time.perf_counter() - t0
    name = "gpu_check.json" if args.device.startswith("cuda") else "gpu_check_cpu_dryrun.json"
    out = Path(args.out) if args.out else RESULTS / name
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
