"""Centralised CTR sanity check on MovieLens-100k: lr, fm, deepfm, dcnv2, finalmlp vs FuxiCTR.

Each model trains on the train split of ``fedstrat.data.load_dataset("movielens-100k", seed=s)``
(label: rating >= 4) with ONE Adam optimiser for the whole run (as FuxiCTR's trainer does),
minibatches reshuffled every epoch, loss ``BCE + embedding L2`` (L2 off by default). After every
epoch it is evaluated on the held-out test split. Optionally ``--val-fraction`` of the train rows
become a validation split: training stops once validation AUC has not improved for
``--patience`` epochs, and the weights of the best validation epoch are restored and reported.

Reference: FuxiCTR 2.3.10 on the same split (seeds 0-2, embedding 16, batch 256, Adam 1e-3,
6 epochs, no regularisation): test AUC LR 0.7490, FM 0.7742, DeepFM 0.7841, DCNv2 0.7832,
FinalMLP 0.7844 (mean of 3 seeds). The summary reports our mean and the difference.

Usage: python benchmarks/ctr_sanity.py [--seeds 0 1 2] [--epochs 6] [--batch-size 256]
       [--lr 1e-3] [--val-fraction 0] [--patience 2] [--embedding-l2 0] [--dropout 0]
       [--batch-norm] [--models lr fm ...] [--threads 1] [--out PATH]
Prints a table and writes benchmarks/results/ctr_sanity.json (or --out).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table
from torch.nn import functional as F

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

from fedstrat.data import load_dataset  # noqa: E402
from fedstrat.data.base import random_split  # noqa: E402
from fedstrat.models import build_model, evaluate  # noqa: E402
from fedstrat.models.layers import embedding_penalty  # noqa: E402

MODELS = ("lr", "fm", "deepfm", "dcnv2", "finalmlp")
FUXICTR_AUC = {"lr": 0.7490, "fm": 0.7742, "deepfm": 0.7841, "dcnv2": 0.7832, "finalmlp": 0.7844}
OUT = Path(__file__).resolve().parent / "results" / "ctr_sanity.json"


def model_kwargs(name: str, embedding_l2: float, dropout: float, batch_norm: bool) -> dict:
    """Constructor options for ``name``: L2 for all, dropout / batch norm for the deep ones."""
    kw: dict = {"embedding_l2": embedding_l2}
    if name in ("deepfm", "dcnv2", "finalmlp"):
        kw.update(dropout=dropout, batch_norm=batch_norm)
    return kw


def train_one(
    name: str,
    ds,
    tr: np.ndarray,
    va: np.ndarray | None,
    args: argparse.Namespace,
    seed: int,
) -> dict:
    """Train ``name`` with one Adam for up to ``args.epochs`` epochs; returns the result row."""
    torch.manual_seed(seed)
    model = build_model(
        name, ds, **model_kwargs(name, args.embedding_l2, args.dropout, args.batch_norm)
    )
    n_params = sum(p.numel() for p in model.parameters())
    x = torch.as_tensor(ds.x[tr]).long()
    y = torch.as_tensor(ds.y[tr]).float()
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    gen = torch.Generator().manual_seed(seed)
    history: list[dict] = []
    best: tuple[float, int, dict] | None = None
    stale, train_seconds = 0, 0.0
    for epoch in range(1, args.epochs + 1):
        t0 = time.perf_counter()
        model.train()
        perm = torch.randperm(len(y), generator=gen)
        loss_sum = 0.0
        for start in range(0, len(y), args.batch_size):
            idx = perm[start : start + args.batch_size]
            if args.batch_norm and idx.numel() == 1:
                continue
            opt.zero_grad(set_to_none=True)
            data_loss = F.binary_cross_entropy_with_logits(model(x[idx]), y[idx])
            pen = embedding_penalty(model)
            (data_loss if pen is None else data_loss + pen).backward()
            opt.step()
            loss_sum += float(data_loss.detach()) * idx.numel()
        train_seconds += time.perf_counter() - t0
        ev = evaluate(model, ds.x_test, ds.y_test, ds.task)
        row = {"epoch": epoch, "train_loss": loss_sum / len(y), "auc": ev["auc"]}
        row["logloss"] = ev["logloss"]
        if va is not None:
            vev = evaluate(model, ds.x[va], ds.y[va], ds.task)
            row["val_auc"], row["val_logloss"] = vev["auc"], vev["logloss"]
            if best is None or vev["auc"] > best[0]:
                best, stale = (vev["auc"], epoch, copy.deepcopy(model.state_dict())), 0
            else:
                stale += 1
        history.append(row)
        if va is not None and stale >= args.patience:
            break
    if best is not None:
        model.load_state_dict(best[2])
        chosen = history[best[1] - 1]
    else:
        chosen = history[-1]
    return {
        "model": name,
        "seed": seed,
        "params": n_params,
        "epoch": chosen["epoch"],
        "auc": chosen["auc"],
        "logloss": chosen["logloss"],
        "best_epoch_test_auc": max(h["auc"] for h in history),
        "train_seconds": train_seconds,
        "history": history,
    }


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    rows, meta = [], {}
    for seed in args.seeds:
        ds = load_dataset("movielens-100k", seed=seed)
        if args.val_fraction > 0:
            tr, va = random_split(len(ds.y), args.val_fraction, seed + 10_000)
        else:
            tr, va = np.arange(len(ds.y)), None
        meta = {
            "n_train": int(len(tr)),
            "n_val": 0 if va is None else int(len(va)),
            "n_test": int(len(ds.y_test)),
            "fields": list(ds.field_names or []),
            "field_dims": list(ds.field_dims),
        }
        for name in args.models:
            r = train_one(name, ds, tr, va, args, seed)
            rows.append(r)
            print(f"seed {seed} {name:9s} epoch {r['epoch']} AUC {r['auc']:.4f}", flush=True)
    summary = []
    for name in args.models:
        aucs = [r["auc"] for r in rows if r["model"] == name]
        lls = [r["logloss"] for r in rows if r["model"] == name]
        mean = statistics.fmean(aucs)
        ref = FUXICTR_AUC.get(name, math.nan)
        summary.append(
            {
                "model": name,
                "auc_mean": mean,
                "auc_sd": statistics.stdev(aucs) if len(aucs) > 1 else 0.0,
                "logloss_mean": statistics.fmean(lls),
                "fuxictr_auc": ref,
                "delta_vs_fuxictr": mean - ref,
                "within_0.002": abs(mean - ref) <= 0.002,
            }
        )
    means = [s["auc_mean"] for s in summary]
    return {
        "benchmark": "ctr_sanity",
        "dataset": "movielens-100k",
        **meta,
        "settings": {
            "seeds": list(args.seeds),
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "lr": args.lr,
            "optimizer": "adam (one for the whole run)",
            "val_fraction": args.val_fraction,
            "patience": args.patience,
            "embedding_l2": args.embedding_l2,
            "dropout": args.dropout,
            "batch_norm": args.batch_norm,
            "torch_threads": args.threads,
        },
        "machine": {
            "platform": platform.platform(),
            "torch": torch.__version__,
            "cpus": os.cpu_count(),
        },
        "summary": summary,
        "results": rows,
        "ordering_lr_lt_fm_lt_deep": bool(len(means) == 5 and means[0] < means[1] < min(means[2:])),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--val-fraction", type=float, default=0.0)
    ap.add_argument("--patience", type=int, default=2)
    ap.add_argument("--embedding-l2", type=float, default=0.0)
    ap.add_argument("--dropout", type=float, default=0.0)
    ap.add_argument("--batch-norm", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    res = run(args)
    seeds = ",".join(str(s) for s in args.seeds)
    table = Table(title=f"MovieLens-100k centralised, <= {args.epochs} epochs, seeds {seeds}")
    for col in ("model", "test AUC (mean)", "sd", "logloss", "FuxiCTR", "delta"):
        table.add_column(col, justify="right")
    for s in res["summary"]:
        table.add_row(
            s["model"],
            f"{s['auc_mean']:.4f}",
            f"{s['auc_sd']:.4f}",
            f"{s['logloss_mean']:.4f}",
            f"{s['fuxictr_auc']:.4f}",
            f"{s['delta_vs_fuxictr']:+.4f}",
        )
    Console().print(table)
    print(f"LR < FM < deep models in AUC: {res['ordering_lr_lt_fm_lt_deep']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
