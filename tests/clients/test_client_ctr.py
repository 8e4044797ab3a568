"""The ClientApp on real MovieLens-100k (CTR): default data provider, deepfm, eval-auc."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from clienthelpers import make_context, make_message, train_content
from flwr.app import ArrayRecord, ConfigRecord, MessageType, RecordDict

from fedstrat.clients import load_client_data, make_client_app
from fedstrat.models import build_model


def _ml100k_present() -> bool:
    spec = importlib.util.find_spec("recbole")
    if spec is None or not spec.submodule_search_locations:
        return False
    root = Path(list(spec.submodule_search_locations)[0]) / "dataset_example" / "ml-100k"
    return (root / "ml-100k.inter").is_file()


pytestmark = [
    pytest.mark.ctr,
    pytest.mark.skipif(not _ml100k_present(), reason="MovieLens-100k (recbole wheel) absent"),
]

RUN_CONFIG = {
    "dataset": "movielens-100k",
    "partition": "natural",
    "natural-key": "occupation",
    "num-clients": 5,
    "seed": 0,
    "model": "deepfm",
    "device": "cpu",
}


def test_movielens_node_trains_and_reports_auc() -> None:
    node = {"partition-id": 0, "num-partitions": 5}
    data = load_client_data(RUN_CONFIG, node)
    assert data.task == "ctr" and data.num_classes == 2 and data.field_dims
    assert data.label_hist.sum() == data.num_examples > 0
    app = make_client_app()
    ctx = make_context(RUN_CONFIG, partition_id=0)
    torch.manual_seed(0)
    arrays = ArrayRecord(build_model("deepfm", data).state_dict())

    def evaluate(arrays: ArrayRecord) -> dict:
        content = RecordDict({"arrays": arrays, "config": ConfigRecord({"server-round": 1})})
        reply = app(make_message(content, MessageType.EVALUATE), ctx)
        assert not reply.has_error(), reply.error
        return dict(reply.content["metrics"])

    before = evaluate(arrays)
    assert set(before) == {"num-examples", "eval-loss", "eval-logloss", "eval-auc"}
    content = train_content(
        arrays, **{"local-steps": 40, "batch-size": 128, "optimizer": "adam", "lr": 0.01}
    )
    reply = app(make_message(content, MessageType.TRAIN), ctx)
    assert not reply.has_error(), reply.error
    assert reply.content["metrics"]["num-examples"] == data.num_examples
    after = evaluate(reply.content["arrays"])
    # rating >= 4 is predictable from user/item ids: AUC clearly above chance after 40 steps
    assert before["eval-auc"] < 0.6 < after["eval-auc"]
    assert after["eval-logloss"] < before["eval-logloss"]
