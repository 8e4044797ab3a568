"""A strategy subclass with its own ``start()`` (like Flower's advanced-pytorch CustomFedAvg:
checkpoints / W&B logging in its loop) together with Flower's DP wrappers, in both nesting
orders:

* ``StratifiedSelection(DP(CustomFedAvg))``: the subclass's ``start()`` runs (found through the
  DP wrapper's ``.strategy``), with stratified selection every round and the DP wrapper still
  between StratifiedSelection and the subclass (its noise is added).
* ``DP(StratifiedSelection(CustomFedAvg))``: the DP wrapper's ``start()`` is Flower's own loop
  and never calls the inner ``start()``; StratifiedSelection cannot change that, so it says so
  in one WARNING naming the nesting that works (the run itself is fine).
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideAdaptiveClipping,
    DifferentialPrivacyServerSideFixedClipping,
    FedAvg,
)

from fedstrat.strategies import StratifiedSelection
from fedstrat.strategies.local_grid import LocalGrid

NODES = [700 + 5 * i for i in range(20)]

DP = {
    "ServerFixed": lambda s: DifferentialPrivacyServerSideFixedClipping(s, 0.05, 1.0, 5),
    "ClientFixed": lambda s: DifferentialPrivacyClientSideFixedClipping(s, 0.05, 1.0, 5),
    "ServerAdaptive": lambda s: DifferentialPrivacyServerSideAdaptiveClipping(s, 0.05, 5),
}
BYPASS = "start() does not run"


def arrays0() -> ArrayRecord:
    return ArrayRecord({"w": Array(np.zeros(6, np.float32)), "b": Array(np.zeros(2, np.float32))})


def client():
    sent: list[str] = []

    def handler(msg: Message) -> Message:
        sent.append(msg.metadata.message_type)
        assert msg.metadata.message_type == MessageType.TRAIN
        node = msg.metadata.dst_node_id
        rec = msg.content["arrays"]
        g = np.random.default_rng([node, int(msg.content["config"]["server-round"])])
        out = {k: Array((rec[k].numpy() + g.normal(0.1 * (node % 4), 0.05, rec[k].numpy().shape))
                        .astype(np.float32)) for k in rec.keys()}
        metrics = MetricRecord({"num-examples": 10 + node % 17})
        return Message(RecordDict({"arrays": ArrayRecord(out), "metrics": metrics}),
                       reply_to=msg)

    handler.sent = sent  # type: ignore[attr-defined]
    return handler


class CheckpointFedAvg(FedAvg):
    """advanced-pytorch's pattern: start() wraps super().start() to checkpoint every round."""

    def start(self, grid, initial_arrays, num_rounds=3, timeout=3600, train_config=None,
              evaluate_config=None, evaluate_fn=None):
        self.checkpoints: list[tuple[int, float]] = []

        def save(rnd, arrays):
            self.checkpoints.append((rnd, float(np.abs(arrays["w"].numpy()).sum())))
            return None

        return super().start(grid, initial_arrays, num_rounds, timeout, train_config,
                             evaluate_config, save)


def _run(strategy, rounds=3):
    c = client()
    result = strategy.start(LocalGrid(list(NODES), c), arrays0(), num_rounds=rounds)
    return result, c


@pytest.mark.parametrize("dp", sorted(DP))
def test_subclass_start_runs_inside_a_dp_wrapper(dp, caplog):
    inner = CheckpointFedAvg(fraction_evaluate=0.0)
    s = StratifiedSelection(DP[dp](inner), clients_per_round=5, node_wait_timeout=0.1)
    with caplog.at_level(logging.WARNING, logger="flwr"):
        _, c = _run(s)
    assert [r for r, _ in inner.checkpoints] == [0, 1, 2, 3]  # the subclass's loop ran
    sums = [v for _, v in inner.checkpoints]
    assert all(b != a for a, b in zip(sums, sums[1:], strict=False))  # changed every round
    assert [r.round for r in s.records] == [1, 2, 3]
    assert all(len(r.selected) == 5 for r in s.records)
    assert c.sent.count(MessageType.TRAIN) == 15
    assert not [r for r in caplog.records if BYPASS in r.getMessage()]


def test_dp_noise_is_still_applied_under_the_subclass_loop():
    """Same seedless client updates, with and without the server-side DP wrapper: the
    checkpointed models differ (the wrapper is not skipped by running the subclass's loop)."""
    plain = CheckpointFedAvg(fraction_evaluate=0.0)
    _run(StratifiedSelection(plain, clients_per_round=5, node_wait_timeout=0.1, seed=3))
    noisy = CheckpointFedAvg(fraction_evaluate=0.0)
    _run(StratifiedSelection(DP["ServerFixed"](noisy), clients_per_round=5,
                             node_wait_timeout=0.1, seed=3))
    assert plain.checkpoints[0] == noisy.checkpoints[0]
    assert plain.checkpoints[1:] != noisy.checkpoints[1:]


def test_dp_around_stratified_selection_warns_that_the_subclass_start_is_skipped(caplog):
    inner = CheckpointFedAvg(fraction_evaluate=0.0)
    outer = DP["ServerFixed"](StratifiedSelection(inner, clients_per_round=5,
                                                  node_wait_timeout=0.1))
    with caplog.at_level(logging.WARNING, logger="flwr"):
        _, c = _run(outer)
    warned = [r.getMessage() for r in caplog.records if BYPASS in r.getMessage()]
    assert len(warned) == 1 and "CheckpointFedAvg" in warned[0]
    assert "StratifiedSelection(DifferentialPrivacy" in warned[0]
    assert not hasattr(inner, "checkpoints")  # Flower's loop, as the warning says
    assert c.sent.count(MessageType.TRAIN) == 15  # selection still ran every round


@pytest.mark.parametrize("order", ["ss_outside", "dp_outside"])
def test_no_warning_without_a_custom_start(order, caplog):
    inner = FedAvg(fraction_evaluate=0.0)
    if order == "ss_outside":
        s = StratifiedSelection(DP["ServerFixed"](inner), clients_per_round=5,
                                node_wait_timeout=0.1)
    else:
        s = DP["ServerFixed"](StratifiedSelection(inner, clients_per_round=5,
                                                  node_wait_timeout=0.1))
    with caplog.at_level(logging.WARNING, logger="flwr"):
        _, c = _run(s)
    assert c.sent.count(MessageType.TRAIN) == 15
    assert not [r for r in caplog.records if BYPASS in r.getMessage()]
