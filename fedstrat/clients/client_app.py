"""The fedstrat Flower ClientApp: local training, evaluation and profiling on a node's data.

``app`` is the ``clientapp`` component of the Flower App (``fedstrat.clients.client_app:app``).
Handlers (message protocol in docs/design.md):

- ``train``: load the received ``"arrays"`` into the model, run ``train_steps`` with the
  ``"config"`` record (FedProx term ``mu/2 ||w - w_received||^2`` when ``proximal-mu > 0``), reply
  ``{"arrays": trained weights, "metrics": {num-examples, train-loss, train-seconds,
  train-steps}}``, the arrays under the received keys, in their order and dtypes (with the run
  option ``sparse-uplink``, tables as changed rows only: :mod:`fedstrat.clients.uplink`). The
  local seed is ``client_seed(seed, server-round, partition-id)``.
- ``evaluate``: metrics ``num-examples``, ``eval-loss`` and ``eval-acc`` (vision) or ``eval-auc``,
  ``eval-logloss`` (CTR; ``eval-loss`` = logloss as well) on the node's evaluation slice.
- ``query``: the ``"fedstrat-profile"`` handler (:mod:`fedstrat.clients.profiling`).

Every failure (bad message, arrays not matching the model, NaN, unknown dataset, diverged
training) becomes an error reply ``Message(Error(code=2, reason=...), reply_to=message)``; the
node keeps running.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from torch import nn

from fedstrat.clients.data import ClientData, load_client_data
from fedstrat.clients.profiling import register_profiling
from fedstrat.clients.protocol import (
    ProtocolError,
    TrainConfig,
    client_seed,
    get_arrays,
    get_config,
    partition_id_of,
    replies_errors,
)
from fedstrat.clients.uplink import sparse_arrays
from fedstrat.models import (
    build_model,
    default_model_for,
    get_device,
    ndarrays_to_model,
    train_steps,
)
from fedstrat.models import evaluate as evaluate_model
from fedstrat.wire import ARRAYS_KEY, METRICS_KEY, NUM_EXAMPLES

DataProvider = Callable[[Context], ClientData]


def default_data_provider(context: Context) -> ClientData:
    """The node's data from ``context.run_config`` and ``context.node_config`` (cached)."""
    return load_client_data(context.run_config, context.node_config)


def model_name_for(context: Context, data: ClientData) -> str:
    """Run-config ``model`` or, when empty, the dataset's default model."""
    name = context.run_config.get("model", "")
    if not isinstance(name, str):
        raise ProtocolError(f"run config 'model' must be a string, got {name!r}")
    return name or default_model_for(data)


def device_for(context: Context) -> str:
    """``get_device`` of the run-config ``device`` ("auto"/"" = cuda when present, else cpu)."""
    pref = context.run_config.get("device", "auto")
    if not isinstance(pref, str):
        raise ProtocolError(f"run config 'device' must be a string, got {pref!r}")
    return get_device(None if pref in ("", "auto") else pref)


def sparse_uplink_for(context: Context) -> bool:
    """Run-config ``sparse-uplink`` (default false): send tables as their changed rows."""
    value = context.run_config.get("sparse-uplink", False)
    if not isinstance(value, bool):
        raise ProtocolError(f"run config 'sparse-uplink' must be true or false, got {value!r}")
    return value


def load_arrays(model: nn.Module, record: ArrayRecord) -> None:
    """Load ``record`` into ``model`` in place.

    Keys must be the model's ``state_dict`` keys (any order), or ``"0".."k-1"`` in
    ``state_dict`` order (an ArrayRecord built from a list of ndarrays). Raises ``ValueError``
    naming the missing/unexpected keys or the key whose shape differs.
    """
    state_keys = list(model.state_dict().keys())
    rec_keys = list(record.keys())
    if set(rec_keys) == set(state_keys):
        arrays = [record[k].numpy() for k in state_keys]
    elif rec_keys == [str(i) for i in range(len(rec_keys))] and len(rec_keys) == len(state_keys):
        arrays = [record[k].numpy() for k in rec_keys]
    else:
        missing = sorted(set(state_keys) - set(rec_keys))
        unexpected = sorted(set(rec_keys) - set(state_keys))
        raise ValueError(
            f"received arrays do not match the model: {len(rec_keys)} arrays for "
            f"{len(state_keys)} model entries; missing keys {missing[:5]}"
            f"{'...' if len(missing) > 5 else ''}, unexpected keys {unexpected[:5]}"
            f"{'...' if len(unexpected) > 5 else ''}"
        )
    ndarrays_to_model(model, arrays)


def reply_arrays(model: nn.Module, received: ArrayRecord) -> ArrayRecord:
    """The model's weights under the keys, in the order and with the dtypes of ``received``.

    Mirrors :func:`load_arrays`: positional keys (``"0".."k-1"``) map to ``state_dict`` order.
    A strategy that checks reply keys/shapes/dtypes against what it sent accepts the reply.
    """
    state = model.state_dict()
    rec_keys = list(received.keys())
    names = rec_keys if set(rec_keys) == set(state) else list(state)
    out = ArrayRecord()
    for rec_key, name in zip(rec_keys, names, strict=True):
        value = state[name].detach().cpu().numpy()
        out[rec_key] = Array(
            np.ascontiguousarray(value.astype(received[rec_key].dtype, copy=False))
        )
    return out


def _build(context: Context, data: ClientData, record: ArrayRecord) -> nn.Module:
    model = build_model(model_name_for(context, data), data)
    load_arrays(model, record)
    return model


def _finite_state(model: nn.Module) -> bool:
    return all(
        bool(torch.isfinite(v).all()) for v in model.state_dict().values() if v.is_floating_point()
    )


def make_client_app(data_provider: DataProvider | None = None) -> ClientApp:
    """Build the fedstrat ClientApp.

    ``data_provider(context) -> ClientData`` says which data the node holds; the default
    (:func:`default_data_provider`) loads the dataset and partition named in the run config and
    picks the node's ``partition-id``.
    """
    provider: DataProvider = data_provider or default_data_provider
    if not callable(provider):
        raise ValueError("data_provider must be a callable context -> ClientData")
    app = ClientApp()

    @app.train()
    @replies_errors
    def train(message: Message, context: Context) -> Message:
        record = get_arrays(message)
        cfg = TrainConfig.from_record(get_config(message))
        data = provider(context)
        if data.num_examples == 0:
            raise ValueError("this node holds no training examples")
        model = _build(context, data, record)
        device = device_for(context)
        seed = client_seed(cfg.seed, cfg.server_round, partition_id_of(context))
        out = train_steps(
            model,
            data.x,
            data.y,
            data.task,
            epochs=cfg.local_epochs,
            steps=cfg.local_steps,
            batch_size=cfg.batch_size,
            lr=cfg.lr,
            optimizer=cfg.optimizer,
            proximal_mu=cfg.proximal_mu,
            global_params=None,  # None = snapshot of the model as received
            clip_norm=cfg.clip_norm,
            seed=seed,
            device=device,
        )
        if not np.isfinite(out["loss"]) or not _finite_state(model):
            raise FloatingPointError(
                f"local training diverged (train loss {out['loss']}); lower lr "
                f"(got {cfg.lr}) or set clip-norm"
            )
        metrics = MetricRecord(
            {
                NUM_EXAMPLES: int(data.num_examples),
                "train-loss": float(out["loss"]),
                "train-seconds": float(out["seconds"]),
                "train-steps": int(out["steps"]),
            }
        )
        arrays = reply_arrays(model, record)
        if sparse_uplink_for(context):
            arrays = sparse_arrays(arrays, record)
        content = RecordDict({ARRAYS_KEY: arrays, METRICS_KEY: metrics})
        return Message(content, reply_to=message)

    @app.evaluate()
    @replies_errors
    def evaluate(message: Message, context: Context) -> Message:
        record = get_arrays(message)
        data = provider(context)
        model = _build(context, data, record)
        res = evaluate_model(
            model,
            data.x_test,
            data.y_test,
            data.task,
            batch_size=512,
            device=device_for(context),
        )
        n = int(res["num_examples"])
        if data.task == "ctr":
            values: dict[str, float | int] = {
                NUM_EXAMPLES: n,
                "eval-loss": float(res["logloss"]),
                "eval-logloss": float(res["logloss"]),
                "eval-auc": float(res["auc"]),
            }
        else:
            values = {
                NUM_EXAMPLES: n,
                "eval-loss": float(res["loss"]),
                "eval-acc": float(res["accuracy"]),
            }
        return Message(RecordDict({METRICS_KEY: MetricRecord(values)}), reply_to=message)

    def get_profile(context: Context) -> tuple[np.ndarray, int]:
        data = provider(context)
        return data.label_hist, data.num_examples

    register_profiling(app, get_profile)
    return app


app = make_client_app()
