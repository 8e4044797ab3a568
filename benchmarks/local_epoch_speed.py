"""Seconds per local epoch of every registered model on typical client data sizes.

A "typical client": 50 images (vision) / 100 ratings (CTR), and a large one with 1000 examples.
Data: MNIST-5k for mlp and cnn, sklearn digits for digits-cnn, MovieLens-100k for the CTR
models, random 3x32x32 images for cnn-cifar (CIFAR-10 is not bundled; speed does not depend on
pixel values). One local epoch = ``train_steps(epochs=1, batch_size=32, lr=0.01, sgd)``; the
median of ``--repeats`` timed runs after one warm-up run.

Usage: python benchmarks/local_epoch_speed.py [--repeats 5] [--threads 1] [--sizes 50 1000]
Prints a table and writes benchmarks/results/local_epoch_speed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

from fedstrat.data import load_dataset  # noqa: E402
from fedstrat.models import build_model, list_models, model_task, train_steps  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "local_epoch_speed.json"
DATA_FOR = {"mlp": "mnist5k", "cnn": "mnist5k", "digits-cnn": "digits", "cnn-cifar": "cifar10"}


def _cifar_like(n: int, seed: int) -> SimpleNamespace:
    rng = np.random.default_rng(seed)
    return SimpleNamespace(
        name="random-3x32x32",
        task="classification",
        num_classes=10,
        field_dims=None,
        x=rng.random((n, 3, 32, 32), dtype=np.float32),
        y=rng.integers(0, 10, n),
    )


def _dataset(name: str, cache: dict, max_n: int) -> SimpleNamespace:
    key = DATA_FOR.get(name, "movielens-100k" if model_task(name) == "ctr" else "mnist5k")
    if key not in cache:
        cache[key] = _cifar_like(max_n, 0) if key == "cifar10" else load_dataset(key, seed=0)
    return cache[key]


def run(sizes: list[int], repeats: int, threads: int, batch_size: int) -> dict:
    torch.set_num_threads(threads)
    cache: dict = {}
    rows = []
    for name in list_models():
        ds = _dataset(name, cache, max(sizes))
        torch.manual_seed(0)
        model = build_model(name, ds)
        n_params = sum(p.numel() for p in model.parameters())
        for requested in sizes:
            n = min(requested, len(ds.y))
            idx = np.random.default_rng(1).choice(len(ds.y), size=n, replace=False)
            x, y = ds.x[idx], ds.y[idx]
            train_steps(model, x, y, ds.task, epochs=1, batch_size=batch_size)  # warm-up
            secs = [
                train_steps(model, x, y, ds.task, epochs=1, batch_size=batch_size, seed=r)[
                    "seconds"
                ]
                for r in range(repeats)
            ]
            rows.append(
                {
                    "model": name,
                    "data": getattr(ds, "name", "?"),
                    "examples": int(n),
                    "params": n_params,
                    "seconds_per_epoch": statistics.median(secs),
                    "min_seconds": min(secs),
                    "max_seconds": max(secs),
                }
            )
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "benchmark": "local_epoch_speed",
        "settings": {
            "sizes": sizes,
            "repeats": repeats,
            "torch_threads": threads,
            "batch_size": batch_size,
            "optimizer": "sgd",
            "lr": 0.01,
        },
        "machine": {
            "platform": platform.platform(),
            "torch": torch.__version__,
            "cpus": os.cpu_count(),
            "loadavg_at_end": load,
        },
        "results": rows,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[50, 100, 1000])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    res = run(args.sizes, args.repeats, args.threads, args.batch_size)
    table = Table(
        title=f"seconds per local epoch (batch {args.batch_size}, "
        f"{args.threads} torch thread(s), median of {args.repeats})"
    )
    for col in ("model", "data", "params", "examples", "s/epoch", "ms/example"):
        table.add_column(col, justify="right")
    for r in res["results"]:
        table.add_row(
            r["model"],
            r["data"],
            f"{r['params']:,}",
            str(r["examples"]),
            f"{r['seconds_per_epoch']:.4f}",
            f"{1000 * r['seconds_per_epoch'] / r['examples']:.3f}",
        )
    Console().print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
