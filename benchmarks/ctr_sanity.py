"""Centralised CTR sanity check on MovieLens-100k: lr, fm, deepfm, dcnv2, finalmlp.

Each model trains for a few epochs (Adam, fixed seed) on the train split of
``fedstrat.data.load_dataset("movielens-100k")`` (label: rating >= 4) and is evaluated on the
held-out split after every epoch. Expected ordering of test AUC: LR < FM < DeepFM/DCNv2/FinalMLP.

Usage: python benchmarks/ctr_sanity.py [--epochs 6] [--batch-size 256] [--lr 1e-3] [--seed 0]
Prints a table and writes benchmarks/results/ctr_sanity.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

from fedstrat.data import load_dataset  # noqa: E402
from fedstrat.models import build_model, evaluate, train_steps  # noqa: E402

MODELS = ("lr", "fm", "deepfm", "dcnv2", "finalmlp")
OUT = Path(__file__).resolve().parent / "results" / "ctr_sanity.json"


def run(epochs: int, batch_size: int, lr: float, seed: int, threads: int) -> dict:
    torch.set_num_threads(threads)
    ds = load_dataset("movielens-100k", seed=seed)
    rows = []
    for name in MODELS:
        torch.manual_seed(seed)
        model = build_model(name, ds)
        n_params = sum(p.numel() for p in model.parameters())
        history, train_seconds = [], 0.0
        for epoch in range(epochs):
            out = train_steps(
                model,
                ds.x,
                ds.y,
                ds.task,
                epochs=1,
                batch_size=batch_size,
                lr=lr,
                optimizer="adam",
                seed=seed + epoch,
            )
            train_seconds += out["seconds"]
            ev = evaluate(model, ds.x_test, ds.y_test, ds.task)
            history.append(
                {
                    "epoch": epoch + 1,
                    "train_loss": out["loss"],
                    "auc": ev["auc"],
                    "logloss": ev["logloss"],
                }
            )
        rows.append(
            {
                "model": name,
                "params": n_params,
                "auc": history[-1]["auc"],
                "logloss": history[-1]["logloss"],
                "best_epoch_auc": max(h["auc"] for h in history),
                "train_seconds": train_seconds,
                "history": history,
            }
        )
    return {
        "benchmark": "ctr_sanity",
        "dataset": "movielens-100k",
        "n_train": int(len(ds.y)),
        "n_test": int(len(ds.y_test)),
        "fields": list(getattr(ds, "field_names", None) or []),
        "field_dims": list(ds.field_dims),
        "settings": {
            "epochs": epochs,
            "batch_size": batch_size,
            "lr": lr,
            "optimizer": "adam",
            "seed": seed,
            "torch_threads": threads,
        },
        "machine": {
            "platform": platform.platform(),
            "torch": torch.__version__,
            "cpus": os.cpu_count(),
        },
        "results": rows,
        "ordering_lr_lt_fm_lt_deep": bool(
            rows[0]["auc"] < rows[1]["auc"] < min(r["auc"] for r in rows[2:])
        ),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    res = run(args.epochs, args.batch_size, args.lr, args.seed, args.threads)
    table = Table(title=f"MovieLens-100k centralised, {args.epochs} epochs, seed {args.seed}")
    for col in ("model", "params", "test AUC", "test logloss", "best-epoch AUC", "train s"):
        table.add_column(col, justify="right")
    for r in res["results"]:
        table.add_row(
            r["model"],
            f"{r['params']:,}",
            f"{r['auc']:.4f}",
            f"{r['logloss']:.4f}",
            f"{r['best_epoch_auc']:.4f}",
            f"{r['train_seconds']:.1f}",
        )
    Console().print(table)
    print(f"LR < FM < deep models in AUC: {res['ordering_lr_lt_fm_lt_deep']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
