r"""Every client's update at chosen rounds, computed in-process (torch, no Flower).

Round r uses the global model after r - 1 rounds of full-participation FedAvg
(:math:`x \leftarrow x + T`, :math:`T = \sum_i p_i \Delta_i`) from the seeded initial model;
client i trains with the seed its Flower node would use (``client_seed(seed, r, i)``), so the
measured update of client i is the one its node would send.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["compute_client_updates"]


def _flat_params(state: Mapping[str, Any]) -> np.ndarray:
    """Concatenate the floating-point tensors of a state_dict (in key order) to float64."""
    import torch

    parts = [
        v.detach().to("cpu", torch.float64).reshape(-1)
        for v in state.values()
        if torch.is_tensor(v) and v.is_floating_point()
    ]
    return torch.cat(parts).numpy() if parts else np.zeros(0)


def compute_client_updates(
    cfg: Any,
    rounds: Sequence[int],
    *,
    on_progress: Callable[[str], None] | None = None,
    on_updates: Callable[[int, np.ndarray, dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Updates of ALL clients at each round in ``rounds`` (in-process, torch).

    ``on_updates(r, updates, result)`` is called with every round's updates up to the last of
    ``rounds`` (``result`` holds ``sizes`` and ``histograms``), e.g. to replay control variates.

    Round r uses the global model after r - 1 rounds of full-participation FedAvg
    (x <- x + T, T = sum p_i Delta_i) from the seeded initial model, so round 1 is the initial
    model. Returns ``{"sizes", "histograms", "task", "model", "dim", "rounds": {r: {"updates",
    "losses", "score"}}}``; ``losses`` are the clients' losses on their own data before training
    (for Power-of-Choice), ``score`` the global model's test accuracy (AUC for CTR).
    """
    import torch

    rounds = sorted({int(r) for r in rounds})
    if not rounds or rounds[0] < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    threads = torch.get_num_threads()
    # tiny per-client batches: one intra-op thread is ~30x faster than two on a busy machine
    torch.set_num_threads(1)
    try:
        return _compute_client_updates(cfg, rounds, on_progress, on_updates)
    finally:
        torch.set_num_threads(threads)


def _compute_client_updates(
    cfg: Any,
    rounds: list[int],
    on_progress: Callable[[str], None] | None,
    on_updates: Callable[[int, np.ndarray, dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    import torch

    # The seed a Flower client with partition-id i uses at that round: the measured update of
    # client i is the one its node would send.
    from fedstrat.clients.protocol import client_seed
    from fedstrat.data import load_dataset, partition_dataset
    from fedstrat.data.registry import run_options
    from fedstrat.models import build_model, default_model_for
    from fedstrat.models.train import evaluate, train_steps

    say = on_progress or (lambda _msg: None)
    ds = load_dataset(
        cfg.dataset, root=cfg.data_root or None, seed=cfg.seed,
        data=cfg.data, schema=cfg.schema, split=cfg.split,
        **run_options(cfg.dataset, cfg.to_dict()),
    )
    part_kw: dict[str, Any] = {"alpha": cfg.alpha, "seed": cfg.seed}
    if cfg.partition == "shard":
        part_kw["shards_per_client"] = cfg.shards_per_client
    if cfg.partition == "natural":
        part_kw["key"] = cfg.natural_key
    part = partition_dataset(ds, cfg.partition, cfg.num_clients, **part_kw)
    model_name = cfg.model or default_model_for(cfg.dataset)
    torch.manual_seed(cfg.seed)
    model = build_model(model_name, ds)
    device = "cpu" if cfg.device in ("auto", "") else cfg.device
    model.to(device)
    x_all = torch.as_tensor(ds.x)
    y_all = torch.as_tensor(ds.y)
    xs = [x_all[torch.as_tensor(idx, dtype=torch.long)] for idx in part.indices]
    ys = [y_all[torch.as_tensor(idx, dtype=torch.long)] for idx in part.indices]
    sizes = np.asarray(part.sizes, dtype=np.float64)
    p = sizes / sizes.sum()
    task = ds.task
    keys = [k for k, v in model.state_dict().items() if v.is_floating_point()]
    result: dict[str, Any] = {
        "sizes": sizes,
        "histograms": np.asarray(part.label_histograms, dtype=np.float64),
        "task": task,
        "model": model_name,
        "rounds": {},
    }
    glob = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for r in range(1, rounds[-1] + 1):
        t0 = time.perf_counter()
        g_flat = _flat_params(glob)
        updates = np.zeros((len(xs), g_flat.size))
        losses = np.zeros(len(xs))
        for i in range(len(xs)):
            model.load_state_dict(glob)
            if r in rounds:
                ev = evaluate(model, xs[i], ys[i], task, device=device)
                losses[i] = float(ev.get("loss", ev.get("logloss", math.nan)))
            train_steps(
                model,
                xs[i],
                ys[i],
                task,
                epochs=cfg.local_epochs,
                steps=cfg.local_steps,
                batch_size=cfg.batch_size,
                lr=cfg.lr,
                optimizer=cfg.optimizer,
                proximal_mu=cfg.proximal_mu if cfg.strategy == "fedprox" else 0.0,
                global_params=None,
                clip_norm=cfg.clip_norm,
                seed=client_seed(cfg.seed, r, i),
                device=device,
            )
            updates[i] = _flat_params(model.state_dict()) - g_flat
        if on_updates is not None:
            on_updates(r, updates, result)
        if r in rounds:
            model.load_state_dict(glob)
            ev = evaluate(
                model, torch.as_tensor(ds.x_test), torch.as_tensor(ds.y_test), task, device=device
            )
            score = float(ev.get("accuracy", ev.get("auc", math.nan)))
            result["rounds"][r] = {"updates": updates, "losses": losses, "score": score}
            say(
                f"round {r}: updates of {len(xs)} clients ({time.perf_counter() - t0:.1f} s), "
                f"global test score {score:.4f}"
            )
        # full-participation FedAvg step: x <- x + sum p_i Delta_i
        step = torch.as_tensor(p @ updates)
        off = 0
        new = {}
        for k, v in glob.items():
            if k in keys:
                nv = v.numel()
                new[k] = v + step[off : off + nv].reshape(v.shape).to(v.dtype)
                off += nv
            else:
                new[k] = v
        glob = new
    result["dim"] = int(g_flat.size)
    return result
