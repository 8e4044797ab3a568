"""Train and evaluate handlers of the fedstrat ClientApp on real digits data."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
from clienthelpers import (
    DIGITS_RUN_CONFIG,
    make_context,
    make_message,
    train_content,
)
from flwr.app import Array, ArrayRecord, ConfigRecord, MessageType, RecordDict

from fedstrat.clients import ClientData, TrainConfig, client_seed, make_client_app
from fedstrat.clients.data import DataSpec, load_client_data, load_partitioned
from fedstrat.clients.protocol import ProtocolError

APP = make_client_app()


def _train(arrays: ArrayRecord, partition_id: int = 0, **cfg: Any) -> Any:
    msg = make_message(train_content(arrays, **cfg), MessageType.TRAIN)
    return APP(msg, make_context(partition_id=partition_id))


def _evaluate(arrays: ArrayRecord, partition_id: int = 0) -> Any:
    content = RecordDict({"arrays": arrays, "config": ConfigRecord({"server-round": 1})})
    ctx = make_context(partition_id=partition_id)
    return APP(make_message(content, MessageType.EVALUATE), ctx)


def _flat(record: ArrayRecord) -> np.ndarray:
    return np.concatenate([a.numpy().ravel().astype(np.float64) for a in record.values()])


def test_train_reply_has_protocol_keys_and_partition_size(initial_arrays: ArrayRecord) -> None:
    msg = make_message(train_content(initial_arrays), MessageType.TRAIN)
    reply = APP(msg, make_context(partition_id=2))
    assert not reply.has_error(), reply.error
    assert reply.metadata.reply_to_message_id == msg.metadata.message_id
    assert set(reply.content.array_records) == {"arrays"}
    assert set(reply.content.metric_records) == {"metrics"}
    out = reply.content["arrays"]
    assert list(out.keys()) == list(initial_arrays.keys())
    for key in out.keys():
        assert out[key].shape == initial_arrays[key].shape
    metrics = reply.content["metrics"]
    _, part = load_partitioned(DataSpec.from_config(DIGITS_RUN_CONFIG))
    assert metrics["num-examples"] == int(part.sizes[2])
    assert math.isfinite(metrics["train-loss"]) and metrics["train-loss"] > 0
    assert metrics["train-seconds"] >= 0
    # one epoch of batch 16 over n_i examples
    assert metrics["train-steps"] == math.ceil(part.sizes[2] / 16)
    assert not np.allclose(_flat(out), _flat(initial_arrays)), "weights did not move"


def test_loss_decreases_over_rounds(initial_arrays: ArrayRecord) -> None:
    # IID node: its data follows the global distribution, so the global-test slice improves too
    # (on a label-skewed node, local training may raise the global-test loss).
    run_config = {**DIGITS_RUN_CONFIG, "partition": "iid"}
    ctx = make_context(run_config, partition_id=0)

    def evaluate(arrays: ArrayRecord) -> Any:
        reply = APP(make_message(RecordDict({"arrays": arrays}), MessageType.EVALUATE), ctx)
        assert not reply.has_error(), reply.error
        return reply.content["metrics"]

    arrays = initial_arrays
    before = evaluate(arrays)
    losses = []
    for rnd in range(1, 6):
        content = train_content(arrays, **{"server-round": rnd})
        reply = APP(make_message(content, MessageType.TRAIN), ctx)
        assert not reply.has_error(), reply.error
        losses.append(reply.content["metrics"]["train-loss"])
        arrays = reply.content["arrays"]
    after = evaluate(arrays)
    assert losses[-1] < 0.7 * losses[0], losses
    assert after["eval-loss"] < before["eval-loss"] - 0.5
    assert after["eval-acc"] > before["eval-acc"] + 0.3


def test_evaluate_reply_keys_vision(initial_arrays: ArrayRecord) -> None:
    reply = _evaluate(initial_arrays, partition_id=1)
    assert not reply.has_error(), reply.error
    metrics = reply.content["metrics"]
    assert set(metrics) == {"num-examples", "eval-loss", "eval-acc"}
    data = load_client_data(DIGITS_RUN_CONFIG, {"partition-id": 1, "num-partitions": 5})
    assert metrics["num-examples"] == len(data.y_test) > 0
    assert 0.0 <= metrics["eval-acc"] <= 1.0
    # untrained 10-class model: loss near log(10)
    assert abs(metrics["eval-loss"] - math.log(10)) < 0.5


def _ctr_data(n: int = 120, seed: int = 0) -> ClientData:
    gen = torch.Generator().manual_seed(seed)
    field_dims = [7, 5, 3]
    x = torch.stack([torch.randint(0, d, (n,), generator=gen) for d in field_dims], dim=1)
    y = (x[:, 0] % 2 == 0).float()
    hist = np.bincount(y.long().numpy(), minlength=2).astype(np.float64)
    return ClientData(
        x=x,
        y=y,
        x_test=x[:40],
        y_test=y[:40],
        task="ctr",
        num_classes=2,
        label_hist=hist,
        num_examples=n,
        field_dims=field_dims,
        name="toy-ctr",
    )


def test_ctr_train_and_evaluate_with_data_provider() -> None:
    from fedstrat.models import build_model

    data = _ctr_data()
    app = make_client_app(lambda ctx: data)
    run_config = {**DIGITS_RUN_CONFIG, "model": "fm"}
    torch.manual_seed(0)
    arrays = ArrayRecord(build_model("fm", data).state_dict())
    content = train_content(arrays, **{"local-epochs": 3, "lr": 0.05})
    reply = app(make_message(content, MessageType.TRAIN), make_context(run_config))
    assert not reply.has_error(), reply.error
    assert reply.content["metrics"]["num-examples"] == 120
    content = RecordDict({"arrays": reply.content["arrays"]})  # evaluate: config optional
    reply = app(make_message(content, MessageType.EVALUATE), make_context(run_config))
    assert not reply.has_error(), reply.error
    metrics = reply.content["metrics"]
    assert set(metrics) == {"num-examples", "eval-loss", "eval-logloss", "eval-auc"}
    assert metrics["num-examples"] == 40
    assert metrics["eval-loss"] == metrics["eval-logloss"]
    assert metrics["eval-auc"] > 0.7  # label = parity of field 0: learnable by an FM


def test_reproducible_under_seed(initial_arrays: ArrayRecord) -> None:
    a = _flat(_train(initial_arrays).content["arrays"])
    b = _flat(_train(initial_arrays).content["arrays"])
    np.testing.assert_array_equal(a, b)
    c = _flat(_train(initial_arrays, **{"server-round": 2}).content["arrays"])
    d = _flat(_train(initial_arrays, seed=8).content["arrays"])
    assert not np.array_equal(a, c) and not np.array_equal(a, d) and not np.array_equal(c, d)


def test_client_seed_mixes_all_three_inputs() -> None:
    seeds = {client_seed(s, r, p) for s in range(3) for r in range(3) for p in range(3)}
    assert len(seeds) == 27
    assert client_seed(1, 2, 3) == client_seed(1, 2, 3)
    assert all(0 <= s < 2**31 for s in seeds)


def test_fedprox_term_shrinks_update(initial_arrays: ArrayRecord) -> None:
    base = _flat(initial_arrays)
    plain = _flat(_train(initial_arrays, **{"local-epochs": 3}).content["arrays"]) - base
    prox = (
        _flat(_train(initial_arrays, **{"local-epochs": 3, "proximal-mu": 5.0}).content["arrays"])
        - base
    )
    assert np.linalg.norm(prox) < 0.8 * np.linalg.norm(plain)


def test_local_steps_override_epochs(initial_arrays: ArrayRecord) -> None:
    reply = _train(initial_arrays, **{"local-steps": 3, "local-epochs": 5})
    assert reply.content["metrics"]["train-steps"] == 3


def test_positional_array_keys_accepted_and_echoed(initial_arrays: ArrayRecord) -> None:
    positional = ArrayRecord([a.numpy() for a in initial_arrays.values()])
    assert list(positional.keys())[0] == "0"
    out_positional = _train(positional).content["arrays"]
    out_named = _train(initial_arrays).content["arrays"]
    assert list(out_positional.keys()) == list(positional.keys())
    assert list(out_named.keys()) == list(initial_arrays.keys())
    np.testing.assert_array_equal(_flat(out_positional), _flat(out_named))


def test_reply_mirrors_received_key_order_and_dtype(initial_arrays: ArrayRecord) -> None:
    keys = list(initial_arrays.keys())[::-1]
    record = ArrayRecord()
    for key in keys:
        record[key] = Array(initial_arrays[key].numpy().astype(np.float64))
    out = _train(record).content["arrays"]
    assert list(out.keys()) == keys
    assert all(out[k].dtype == record[k].dtype for k in keys)
    assert all(out[k].shape == record[k].shape for k in keys)
    # float64 in, trained in float32 internally: same update as the float32 message
    ref = _train(initial_arrays).content["arrays"]
    for key in keys:
        np.testing.assert_allclose(out[key].numpy(), ref[key].numpy(), rtol=1e-6, atol=1e-7)


def test_train_config_parsing() -> None:
    cfg = TrainConfig.from_record({"lr": 1, "local-steps": 4, "optimizer": "adam"})
    assert cfg.lr == 1.0 and cfg.local_steps == 4 and cfg.optimizer == "adam"
    assert cfg.batch_size == TrainConfig().batch_size
    bad: list[dict[str, Any]] = [
        {"lr": 0.0},
        {"lr": "0.1"},
        {"batch-size": 0},
        {"batch-size": 2.5},
        {"optimizer": "rmsprop"},
        {"local-epochs": 0, "local-steps": 0},
        {"local-epochs": -1},
        {"proximal-mu": -0.1},
        {"clip-norm": float("nan")},
        {"seed": True},
    ]
    for values in bad:
        with pytest.raises(ProtocolError):
            TrainConfig.from_record(values)


def test_node_data_matches_partition() -> None:
    ds, part = load_partitioned(DataSpec.from_config(DIGITS_RUN_CONFIG))
    total = 0
    for pid in range(5):
        data = load_client_data(DIGITS_RUN_CONFIG, {"partition-id": pid, "num-partitions": 5})
        idx = part.indices[pid]
        np.testing.assert_array_equal(data.x.numpy(), ds.x[idx])
        np.testing.assert_array_equal(data.label_hist, part.label_histograms[pid])
        assert data.num_examples == part.sizes[pid] == data.label_hist.sum()
        assert len(data.y_test) == min(len(ds.y_test), 500)
        total += data.num_examples
    assert total == len(ds.y)
    # cached: the same object comes back
    again = load_client_data(DIGITS_RUN_CONFIG, {"partition-id": 0, "num-partitions": 5})
    assert again is load_client_data(DIGITS_RUN_CONFIG, {"partition-id": 0, "num-partitions": 5})


def test_eval_slice_is_seeded_and_bounded() -> None:
    cfg = {**DIGITS_RUN_CONFIG, "eval-size": 50}
    a = load_client_data(cfg, {"partition-id": 0, "num-partitions": 5})
    b = load_client_data(cfg, {"partition-id": 1, "num-partitions": 5})
    assert len(a.y_test) == len(b.y_test) == 50
    assert not torch.equal(a.x_test, b.x_test)
    from fedstrat.clients.data import eval_indices

    np.testing.assert_array_equal(eval_indices(359, 50, 3, 0), eval_indices(359, 50, 3, 0))
    assert len(np.unique(eval_indices(359, 50, 3, 0))) == 50
