"""Sparse uplink vs dense replies on the per-user MovieLens-100k federation (issue 14).

The same job twice, in-process (``run_server`` with the real ClientApp behind a
:class:`~fedstrat.strategies.LocalGrid`, no Flower processes): once with dense train replies and
once with ``sparse-uplink = true`` (tables as changed rows, densified by the server). Recorded
per round: uplink bytes of the train replies' ArrayRecords (serialised arrays, headers
included; the sum over the round's replies), split into embedding tables and the rest, and the
test AUC / logloss of the global model. Densifying is exact, so the two runs must produce the
same models and metrics bit for bit.

``--round1-clients K`` measures only the round-1 train replies of K random clients (same
initial model, dense and sparse) and checks that densifying each sparse reply gives the dense
one exactly; it writes ``benchmarks/results/sparse_uplink_round1.json``. It splits the bytes
into embedding tables and the rest (DeepFM's dense MLP) and tells the two lossless steps of
the sparse uplink apart (:func:`fedstrat.clients.uplink.sparse_arrays` with one step off): the
changed rows alone, the XOR + zlib codec alone (applied to the dense reply; not an option a
user can pick) and both (what ``sparse-uplink`` sends).

Run: ``python benchmarks/sparse_uplink.py`` (config
``experiments/configs/movielens100k_peruser.toml``, 10 rounds, seed 0, models deepfm and fm;
~30 min on 2 heavily loaded cores); ``--rounds``, ``--models``, ``--seed``. Writes
``benchmarks/results/sparse_uplink.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

from flwr.app import Context, Message, RecordDict  # noqa: E402

from fedstrat.app.config import RunConfig  # noqa: E402
from fedstrat.app.rundir import read_jsonl  # noqa: E402
from fedstrat.app.server_app import run_server  # noqa: E402
from fedstrat.clients.client_app import app as client_app  # noqa: E402
from fedstrat.strategies import LocalGrid  # noqa: E402
from fedstrat.strategies.local_grid import client_app_handler  # noqa: E402
from fedstrat.wire import SPARSE_ROWS, SPARSE_VALUES  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "experiments" / "configs" / "movielens100k_peruser.toml"
OUT = ROOT / "benchmarks" / "results" / "sparse_uplink.json"


def _table_key(key: str) -> bool:
    base = key.removesuffix(SPARSE_ROWS).removesuffix(SPARSE_VALUES)
    return "embedding" in base


def run(cfg: RunConfig) -> dict[str, object]:
    """One in-process job; per-round uplink bytes (tables / rest) and metrics."""
    ids = list(range(1000, 1000 + cfg.num_clients))
    rounds: dict[int, dict[str, int]] = {}

    def count(msg: Message, reply: Message) -> None:
        if msg.metadata.message_type.startswith("train") and not reply.has_error():
            rnd = int(msg.content["config"]["server-round"])
            acc = rounds.setdefault(rnd, {"tables": 0, "rest": 0, "replies": 0})
            for rec in reply.content.array_records.values():
                for key, arr in rec.items():
                    acc["tables" if _table_key(key) else "rest"] += len(arr.data)
            acc["replies"] += 1

    t0 = time.perf_counter()
    run_server(LocalGrid(ids, client_app_handler(client_app, ids, cfg.to_flower(), count)), cfg)
    seconds = time.perf_counter() - t0
    progress = [r for r in read_jsonl(Path(cfg.out) / "progress.jsonl") if r["event"] == "round"]
    return {
        "seconds": seconds,
        "bytes": {str(k): v for k, v in sorted(rounds.items())},
        "auc": [r["auc"] for r in progress],
        "logloss": [r["logloss"] for r in progress],
    }


def round_one(model: str, k: int, seed: int) -> dict[str, object]:
    """Round-1 reply bytes of ``k`` random clients (dense vs sparse) and exactness."""
    import numpy as np
    import torch
    from flwr.app import ArrayRecord

    from fedstrat.app.server_app import train_config
    from fedstrat.clients.data import load_client_data
    from fedstrat.clients.uplink import record_bytes, sparse_arrays
    from fedstrat.models import build_model
    from fedstrat.strategies.local_grid import ensure_task_identity
    from fedstrat.strategies.sparse_uplink import densify

    ensure_task_identity(1)
    cfg = dataclasses.replace(RunConfig.from_toml(CONFIG), model=model, seed=seed)
    n = cfg.num_clients
    first = load_client_data(cfg.to_flower(), {"partition-id": 0, "num-partitions": n})
    torch.manual_seed(seed)
    sent = ArrayRecord(build_model(model, first).state_dict())
    pids = np.random.default_rng(seed).choice(n, size=k, replace=False)
    out: dict[str, list[int]] = {
        f"{kind}{part}": []
        for kind in ("dense", "sparse", "rows", "codec")
        for part in ("", "_tables")
    }
    exact = True
    for pid in pids:
        replies = {}
        for sparse in (False, True):
            ctx = Context(
                run_id=1, node_id=int(pid) + 1,
                node_config={"partition-id": int(pid), "num-partitions": n}, state=RecordDict(),
                run_config={**cfg.to_flower(), "sparse-uplink": sparse},
            )  # fmt: skip
            conf = train_config(cfg)
            conf["server-round"] = 1
            msg = Message(
                RecordDict({"arrays": sent, "config": conf}), dst_node_id=int(pid) + 1,
                message_type="train",
            )  # fmt: skip
            rec = client_app(msg, ctx).content["arrays"]
            replies[sparse] = rec
            name = "sparse" if sparse else "dense"
            out[name].append(record_bytes(rec))
            out[name + "_tables"].append(
                sum(len(a.data) for key, a in rec.items() if _table_key(key))
            )
            if not sparse:  # the two steps of the sparse uplink, one at a time
                for part, kw in (("rows", {"compress": False}), ("codec", {"rows": False})):
                    alone = sparse_arrays(rec, sent, **kw)
                    out[part].append(record_bytes(alone))
                    out[part + "_tables"].append(
                        sum(len(a.data) for key, a in alone.items() if _table_key(key))
                    )
        dense = densify(replies[True], sent)
        exact &= not isinstance(dense, str) and all(
            np.array_equal(dense[key].numpy(), replies[False][key].numpy())
            for key in replies[False]
        )
    mean = {key: statistics.fmean(v) for key, v in out.items()}
    return {
        "model": model,
        "clients": k,
        "bytes_dense_mean": mean["dense"],
        "bytes_sparse_mean": mean["sparse"],
        "ratio": sum(out["dense"]) / sum(out["sparse"]),
        "tables_ratio": sum(out["dense_tables"]) / sum(out["sparse_tables"]),
        # mean bytes of a reply: tables / the rest, for dense, changed rows only, codec only,
        # and both (= sparse, what sparse-uplink sends)
        "bytes_by_part_mean": {
            kind: {"tables": mean[kind + "_tables"], "rest": mean[kind] - mean[kind + "_tables"]}
            for kind in ("dense", "rows", "codec", "sparse")
        },
        "ratio_rows_only": sum(out["dense"]) / sum(out["rows"]),
        "ratio_codec_only": sum(out["dense"]) / sum(out["codec"]),
        # the ratio if the tables cost nothing: the rest (dense MLP) bounds the changed rows
        "ratio_rows_only_bound_free_tables": mean["dense"] / (mean["rows"] - mean["rows_tables"]),
        "per_client_ratio_min_max": [
            min(d / s for d, s in zip(out["dense"], out["sparse"], strict=True)),
            max(d / s for d, s in zip(out["dense"], out["sparse"], strict=True)),
        ],
        "densify_exact": bool(exact),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--models", nargs="+", default=["deepfm", "fm"])
    ap.add_argument("--round1-clients", type=int, default=0)
    args = ap.parse_args()
    if args.round1_clients:
        rows = []
        for model in args.models:
            rows.append(round_one(model, args.round1_clients, args.seed))
            print(json.dumps(rows[-1]), flush=True)
        path = OUT.with_name("sparse_uplink_round1.json")
        command = (
            f"python benchmarks/sparse_uplink.py --round1-clients {args.round1_clients} "
            f"--seed {args.seed} --models {' '.join(args.models)}"
        )
        doc = {"config": str(CONFIG.relative_to(ROOT)), "command": command, "results": rows}
        path.write_text(json.dumps(doc, indent=1) + "\n")
        print("wrote", path)
        return
    base = RunConfig.from_toml(CONFIG)
    base = dataclasses.replace(
        base, rounds=args.rounds, seed=args.seed, node_wait_timeout=5.0, round_timeout=600.0
    )
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models:
            row: dict[str, object] = {"model": model}
            for sparse in (False, True):
                cfg = dataclasses.replace(
                    base, model=model, sparse_uplink=sparse,
                    out=str(Path(tmp) / f"{model}-{'sparse' if sparse else 'dense'}"),
                ).validate()  # fmt: skip
                row["sparse" if sparse else "dense"] = run(cfg)
                print(model, "sparse" if sparse else "dense", "done", flush=True)
            dense, sparse_ = row["dense"], row["sparse"]
            per_round = [
                (d["tables"] + d["rest"]) / (s["tables"] + s["rest"])
                for d, s in zip(dense["bytes"].values(), sparse_["bytes"].values(), strict=True)
            ]
            tables = [
                d["tables"] / s["tables"]
                for d, s in zip(dense["bytes"].values(), sparse_["bytes"].values(), strict=True)
            ]
            row["bytes_ratio_mean"] = statistics.fmean(per_round)
            row["bytes_ratio_min_max"] = [min(per_round), max(per_round)]
            row["tables_ratio_mean"] = statistics.fmean(tables)
            row["tables_ratio_min_max"] = [min(tables), max(tables)]
            row["max_abs_auc_diff"] = max(
                abs(a - b) for a, b in zip(dense["auc"], sparse_["auc"], strict=True)
            )
            row["identical_metrics"] = (
                dense["auc"] == sparse_["auc"] and dense["logloss"] == sparse_["logloss"]
            )
            print(json.dumps({k: v for k, v in row.items() if k not in ("dense", "sparse")}))
            results.append(row)
    OUT.write_text(
        json.dumps(
            {
                "config": str(CONFIG.relative_to(ROOT)),
                "rounds": args.rounds,
                "seed": args.seed,
                "command": "python benchmarks/sparse_uplink.py "
                f"--rounds {args.rounds} --seed {args.seed} --models {' '.join(args.models)}",
                "results": results,
            },
            indent=1,
        )
        + "\n"
    )
    print("wrote", OUT)


if __name__ == "__main__":
    main()
