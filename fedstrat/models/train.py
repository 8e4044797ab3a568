"""Local training and evaluation on in-memory tensors (shared with ``fedstrat.clients``).

Pure torch/numpy: no flwr, no DataLoader. Loss: cross-entropy for "classification" (logits
(B, K), int labels), ``BCEWithLogits`` for "ctr" (logit (B,), {0,1} labels).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from fedstrat.models.layers.embedding import embedding_penalty, has_embedding_penalty
from fedstrat.models.metrics import accuracy, binary_auc, binary_logloss

TASKS = ("classification", "ctr")
OPTIMIZERS = ("sgd", "adam")


def get_device(pref: str | None = None) -> str:
    """``"cuda"`` when available else ``"cpu"``; ``pref`` ("cpu", "cuda", "cuda:1", "auto")
    overrides. Asking for CUDA without a GPU raises ``ValueError``."""
    if pref is None or pref == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(pref)
    except RuntimeError as err:
        raise ValueError(f"bad device {pref!r}: {err}") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {pref!r} requested but CUDA is not available")
    return str(dev)


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")


def _to_tensors(
    x: Any, y: Any, task: str, device: str | torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    xt = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    yt = torch.as_tensor(np.asarray(y) if not isinstance(y, torch.Tensor) else y)
    if xt.shape[0] != yt.shape[0]:
        raise ValueError(f"x has {xt.shape[0]} rows but y has {yt.shape[0]}")
    if yt.dim() != 1:
        raise ValueError(f"y must be 1-d, got shape {tuple(yt.shape)}")
    if task == "ctr":
        xt, yt = xt.long(), yt.float()
    else:
        xt, yt = xt.float(), yt.long()
    return xt.to(device), yt.to(device)


def _loss(out: torch.Tensor, y: torch.Tensor, task: str) -> torch.Tensor:
    if task == "ctr":
        return F.binary_cross_entropy_with_logits(out.reshape(-1), y)
    return F.cross_entropy(out, y)


def _global_tensors(
    model: nn.Module, global_params: Any, device: str | torch.device
) -> list[tuple[nn.Parameter, torch.Tensor]]:
    """Pair each trainable parameter with its global value.

    ``global_params``: ``None`` (snapshot of the model now, i.e. the model as received), a
    mapping name -> array, or a sequence aligned with ``model.state_dict()`` (as returned by
    :func:`model_to_ndarrays`) or with ``model.parameters()``.
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if global_params is None:
        return [(p, p.detach().clone()) for _, p in named]
    if isinstance(global_params, Mapping):
        lookup = dict(global_params)
    else:
        seq = list(global_params)
        keys = list(model.state_dict().keys())
        all_params = [n for n, _ in model.named_parameters()]
        if len(seq) == len(keys):
            lookup = dict(zip(keys, seq, strict=True))
        elif len(seq) == len(all_params):
            lookup = dict(zip(all_params, seq, strict=True))
        else:
            raise ValueError(
                f"global_params has {len(seq)} arrays; expected {len(keys)} (state_dict) "
                f"or {len(all_params)} (parameters)"
            )
    pairs = []
    for name, p in named:
        if name not in lookup:
            raise ValueError(f"global_params has no entry for parameter {name!r}")
        g = torch.as_tensor(
            np.asarray(lookup[name]) if not isinstance(lookup[name], torch.Tensor) else lookup[name]
        ).to(device=device, dtype=p.dtype)
        if g.shape != p.shape:
            raise ValueError(
                f"global_params[{name!r}] has shape {tuple(g.shape)}, parameter has "
                f"{tuple(p.shape)}"
            )
        pairs.append((p, g))
    return pairs


def _has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def train_steps(
    model: nn.Module,
    x: Any,
    y: Any,
    task: str,
    epochs: int = 1,
    steps: int = 0,
    batch_size: int = 32,
    lr: float = 0.01,
    optimizer: str = "sgd",
    proximal_mu: float = 0.0,
    global_params: Any = None,
    clip_norm: float = 0.0,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> dict[str, float]:
    """Minibatch training in place; returns ``{"loss", "steps", "seconds"}``.

    ``steps > 0`` runs exactly that many minibatch steps (reshuffling each pass); otherwise
    ``epochs`` full passes. Objective per batch: ``L(w) + mu/2 ||w - w_global||^2`` (FedProx,
    ``proximal_mu = mu``); ``clip_norm > 0`` rescales the gradient to at most that L2 norm.
    CTR models whose embeddings have ``l2 > 0`` add ``sum l2/2 ||E||^2`` to each batch objective
    (:func:`~fedstrat.models.layers.embedding_penalty`); models without it are untouched.
    ``loss`` is the example-weighted mean data loss (without proximal or L2 terms) over all steps.
    Shuffling and dropout use a private generator seeded by ``seed``: same seed, same result.
    """
    _check_task(task)
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
    if epochs < 0 or steps < 0:
        raise ValueError(f"epochs and steps must be >= 0, got {epochs}, {steps}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if lr <= 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    if proximal_mu < 0 or clip_norm < 0:
        raise ValueError(f"proximal_mu and clip_norm must be >= 0, got {proximal_mu}, {clip_norm}")
    t0 = time.perf_counter()
    model.to(device)
    xt, yt = _to_tensors(x, y, task, device)
    n = xt.shape[0]
    if n == 0 or (steps == 0 and epochs == 0):
        return {"loss": math.nan, "steps": 0, "seconds": time.perf_counter() - t0}
    params = [p for p in model.parameters() if p.requires_grad]
    prox = _global_tensors(model, global_params, device) if proximal_mu > 0 else []
    opt: torch.optim.Optimizer
    if optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=lr)
    else:
        opt = torch.optim.Adam(params, lr=lr)
    penalised = has_embedding_penalty(model)
    skip_singletons = _has_batchnorm(model)
    gen = torch.Generator().manual_seed(int(seed))
    per_epoch = math.ceil(n / batch_size)
    if skip_singletons and n > 1 and n % batch_size == 1:
        per_epoch -= 1  # a one-example batch cannot pass BatchNorm in train mode
    total_steps = steps if steps > 0 else epochs * per_epoch
    done, loss_sum, seen = 0, 0.0, 0
    model.train()
    devices = [torch.device(device).index or 0] if torch.device(device).type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(int(seed))
        while done < total_steps:
            perm = torch.randperm(n, generator=gen).to(device)
            for start in range(0, n, batch_size):
                if done >= total_steps:
                    break
                idx = perm[start : start + batch_size]
                if skip_singletons and idx.numel() == 1 and n > 1:
                    continue
                opt.zero_grad(set_to_none=True)
                data_loss = _loss(model(xt[idx]), yt[idx], task)
                loss = data_loss
                if prox:
                    sq = sum((p - g).pow(2).sum() for p, g in prox)
                    loss = data_loss + 0.5 * proximal_mu * sq
                if penalised:
                    loss = loss + embedding_penalty(model)
                loss.backward()
                if clip_norm > 0:
                    nn.utils.clip_grad_norm_(params, clip_norm)
                opt.step()
                done += 1
                loss_sum += float(data_loss.detach()) * idx.numel()
                seen += idx.numel()
    return {
        "loss": loss_sum / seen if seen else math.nan,
        "steps": done,
        "seconds": time.perf_counter() - t0,
    }


@torch.no_grad()
def predict(
    model: nn.Module,
    x: Any,
    batch_size: int = 512,
    device: str | torch.device = "cpu",
    task: str = "classification",
) -> np.ndarray:
    """Raw model outputs (logits) for ``x`` in eval mode, as a numpy array."""
    _check_task(task)
    model.to(device)
    model.eval()
    xt = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    xt = xt.long() if task == "ctr" else xt.float()
    outs = [
        model(xt[i : i + batch_size].to(device)).cpu() for i in range(0, xt.shape[0], batch_size)
    ]
    return torch.cat(outs).numpy() if outs else np.empty((0,), dtype=np.float32)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    x: Any,
    y: Any,
    task: str,
    batch_size: int = 512,
    device: str | torch.device = "cpu",
) -> dict[str, float]:
    """Evaluate in eval mode without gradients.

    classification -> ``{"loss" (mean cross-entropy), "accuracy", "num_examples"}``;
    ctr -> ``{"loss" (= logloss), "logloss", "auc", "num_examples"}``; AUC is nan when ``y``
    has one class only; every metric is nan on empty data.
    """
    _check_task(task)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    xt, yt = _to_tensors(x, y, task, "cpu")
    n = int(xt.shape[0])
    y_np = yt.numpy()
    if task == "ctr":
        if n == 0:
            return {"loss": math.nan, "logloss": math.nan, "auc": math.nan, "num_examples": 0}
        logits = predict(model, xt, batch_size, device, task).reshape(-1).astype(np.float64)
        probs = 1.0 / (1.0 + np.exp(-logits))
        ll = binary_logloss(y_np, probs)
        return {"loss": ll, "logloss": ll, "auc": binary_auc(y_np, logits), "num_examples": n}
    if n == 0:
        return {"loss": math.nan, "accuracy": math.nan, "num_examples": 0}
    logits = torch.as_tensor(predict(model, xt, batch_size, device, task))
    loss = float(F.cross_entropy(logits, yt, reduction="mean"))
    return {"loss": loss, "accuracy": accuracy(y_np, logits.numpy()), "num_examples": n}


def model_keys(model: nn.Module) -> list[str]:
    """Names of the arrays :func:`model_to_ndarrays` returns, in order (``state_dict`` order)."""
    return list(model.state_dict().keys())


def model_to_ndarrays(model: nn.Module) -> list[np.ndarray]:
    """Copies of every ``state_dict`` entry (parameters and persistent buffers), in order."""
    return [v.detach().cpu().numpy().copy() for v in model.state_dict().values()]


def ndarrays_to_model(model: nn.Module, arrays: Sequence[np.ndarray]) -> nn.Module:
    """Load arrays (in :func:`model_to_ndarrays` order) into ``model`` in place; returns it.

    Raises ``ValueError`` naming the key and both shapes on any count or shape mismatch.
    """
    state = model.state_dict()
    keys = list(state.keys())
    arrays = list(arrays)
    if len(arrays) != len(keys):
        raise ValueError(f"got {len(arrays)} arrays but the model has {len(keys)} state entries")
    new_state = {}
    for key, arr in zip(keys, arrays, strict=True):
        a = np.asarray(arr)
        ref = state[key]
        if tuple(a.shape) != tuple(ref.shape):
            raise ValueError(
                f"shape mismatch for {key!r}: array has {tuple(a.shape)}, model expects "
                f"{tuple(ref.shape)}"
            )
        new_state[key] = torch.as_tensor(a).to(dtype=ref.dtype)
    model.load_state_dict(new_state, strict=True)
    return model
