"""StratifiedSelection around every Message-API strategy of flwr.serverapp.strategy.

Each combination runs a few rounds on an in-process LocalGrid with numpy "models" (float32 or
float64 weights and an int64 BatchNorm-style counter): no reply is rejected, the model changes
every round, and the new global model is exactly the wrapped strategy's own rule applied to the
replies StratifiedSelection handed it (a copy of the wrapped strategy, same state and same
``np.random`` state for DP noise, aggregates those replies to the same arrays). Where
StratifiedSelection is the outer strategy, the replies handed on are checked against the HT
rewrite ``x_g + W (x_i - x_g)`` with weight ``w_i`` (``estimator="ratio"`` for the
weight-ignoring aggregators: replies unchanged), and integer arrays pass untouched.
"""

from __future__ import annotations

import copy
import gc
import logging

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import (
    Bulyan,
    DifferentialPrivacyClientSideAdaptiveClipping,
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideAdaptiveClipping,
    DifferentialPrivacyServerSideFixedClipping,
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    FedYogi,
    Krum,
    MultiKrum,
    QFedAvg,
)
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM, KEY_NORM_BIT

from fedstrat.strategies import StratifiedSelection
from fedstrat.strategies.local_grid import LocalGrid

N_NODES, M = 15, 6
NODES = [1000 + 7 * i for i in range(N_NODES)]
SIZES = {n: 20 + 13 * i for i, n in enumerate(NODES)}
FLOAT_KEYS = ("conv.weight", "fc.bias")
INT_KEY = "bn.num_batches_tracked"

BASES = {
    "FedAvg": lambda: FedAvg(fraction_evaluate=0.0),
    "FedProx": lambda: FedProx(fraction_evaluate=0.0, proximal_mu=0.1),
    "FedAdam": lambda: FedAdam(fraction_evaluate=0.0),
    "FedYogi": lambda: FedYogi(fraction_evaluate=0.0),
    "FedAdagrad": lambda: FedAdagrad(fraction_evaluate=0.0),
    "FedAvgM": lambda: FedAvgM(fraction_evaluate=0.0, server_momentum=0.5),
    "FedMedian": lambda: FedMedian(fraction_evaluate=0.0),
    "FedTrimmedAvg": lambda: FedTrimmedAvg(fraction_evaluate=0.0, beta=0.2),
    "Krum": lambda: Krum(fraction_evaluate=0.0),
    "MultiKrum": lambda: MultiKrum(fraction_evaluate=0.0, num_nodes_to_select=3),
    "Bulyan": lambda: Bulyan(fraction_evaluate=0.0),
    "QFedAvg": lambda: QFedAvg(fraction_evaluate=0.0, client_learning_rate=0.1),
}
#: a fixed design keeps the matrix fast (the composition, not the design search, is tested)
FAST = {"design": "pps", "n_strata": 2, "warmup_rounds": 1}
WEIGHT_IGNORING = {"FedMedian", "FedTrimmedAvg", "Krum", "MultiKrum", "Bulyan", "QFedAvg"}
DP = {
    "DPServerFixed": lambda s: DifferentialPrivacyServerSideFixedClipping(
        s, noise_multiplier=0.01, clipping_norm=50.0, num_sampled_clients=M),
    "DPClientFixed": lambda s: DifferentialPrivacyClientSideFixedClipping(
        s, noise_multiplier=0.01, clipping_norm=50.0, num_sampled_clients=M),
    "DPServerAdaptive": lambda s: DifferentialPrivacyServerSideAdaptiveClipping(
        s, noise_multiplier=0.01, num_sampled_clients=M, initial_clipping_norm=50.0),
    "DPClientAdaptive": lambda s: DifferentialPrivacyClientSideAdaptiveClipping(
        s, noise_multiplier=0.01, num_sampled_clients=M, initial_clipping_norm=50.0),
}


@pytest.fixture(autouse=True)
def _no_full_gc_per_array(monkeypatch):
    """Flower's ``ArrayRecord.to_numpy_ndarrays(keep_input=False)`` (Krum, Bulyan, QFedAvg)
    runs ``gc.collect()`` per array: ~0.4 s each in a test process with torch and sklearn
    loaded. Skipped here; it frees memory, it does not change results."""
    monkeypatch.setattr(gc, "collect", lambda *args: 0)


def initial_arrays(dtype: type, with_int: bool = True) -> ArrayRecord:
    arrays = {
        FLOAT_KEYS[0]: Array(np.full((4, 3), 0.5, dtype=dtype)),
        FLOAT_KEYS[1]: Array(np.zeros(3, dtype=dtype)),
    }
    if with_int:
        arrays[INT_KEY] = Array(np.array(7, dtype=np.int64))
    return ArrayRecord(arrays)


def client_update(node: int, server_round: int, key: str, shape: tuple) -> np.ndarray:
    g = np.random.default_rng([node, server_round, len(key)])
    return 0.05 * g.normal(size=shape) + 0.01 * (node % 5)


def make_handler(dtype: type):
    """A ClientApp stand-in: loads the global arrays into its own dtypes (float ``dtype``,
    int64 counter), takes a deterministic step, replies in those dtypes."""

    def handler(msg: Message) -> Message:
        node = msg.metadata.dst_node_id
        cfg = msg.content["config"]
        rnd = int(cfg["server-round"])
        rec = msg.content["arrays"]
        out = {}
        for key in rec.keys():
            x = rec[key].numpy()
            if key == INT_KEY:
                out[key] = Array(np.asarray(np.rint(x) + 5, dtype=np.int64))
            else:
                x = x.astype(dtype)
                out[key] = Array((x + client_update(node, rnd, key, x.shape)).astype(dtype))
        metrics = {"num-examples": SIZES[node], "train_loss": 1.0 + (node % 3),
                   "train-loss": 1.0}
        if KEY_CLIPPING_NORM in cfg:
            metrics[KEY_NORM_BIT] = 0
        return Message(RecordDict({"arrays": ArrayRecord(out), "metrics": MetricRecord(metrics)}),
                       reply_to=msg)

    return handler


class Spy:
    """Replaces ``target.aggregate_train`` on the instance: records the replies handed to it
    and what a copy of ``target`` (same state, same np.random state) aggregates them to."""

    def __init__(self, target, monkeypatch) -> None:
        self.target = target
        self.real = type(target).aggregate_train
        self.handed: list[Message] = []
        self.expected: ArrayRecord | None = None
        monkeypatch.setattr(target, "aggregate_train", self)

    def __call__(self, server_round, replies):
        replies = list(replies)
        self.handed = copy.deepcopy(replies)
        clone = copy.deepcopy(self.target)
        vars(clone).pop("aggregate_train", None)
        state = np.random.get_state()
        self.expected, _ = self.real(clone, server_round, copy.deepcopy(replies))
        np.random.set_state(state)
        return self.real(self.target, server_round, replies)


def as_np(arrays: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: a.numpy() for k, a in arrays.items()}


def run_matrix_case(outer, strat, below, dtype, rounds, monkeypatch, with_int=True):
    grid = LocalGrid(list(NODES), make_handler(dtype))
    spy = Spy(below, monkeypatch)
    arrays = initial_arrays(dtype, with_int)
    for rnd in range(1, rounds + 1):
        msgs = list(outer.configure_train(rnd, arrays, ConfigRecord(), grid))
        assert len(msgs) == M
        replies = list(grid.send_and_receive(msgs))
        originals = copy.deepcopy(replies)  # some strategies consume the arrays they read
        new, metrics = outer.aggregate_train(rnd, replies)
        rec = strat.records[-1]
        assert rec.rejected == [] and rec.failures == [], (rnd, rec.rejected)
        assert new is not None and metrics is not None
        old_np, new_np = as_np(arrays), as_np(new)
        for key in FLOAT_KEYS:
            assert np.all(np.isfinite(new_np[key]))
            assert not np.array_equal(new_np[key], old_np[key]), (rnd, key, "model unchanged")
        if outer is strat:  # the wrapped strategy's own rule on the replies handed to it
            for key, value in as_np(spy.expected).items():
                np.testing.assert_array_equal(new_np[key], value)
            check_rewrite(spy.handed, originals, rec, old_np, strat.applied_options.estimator)
            check_summed(spy.handed, originals, rec, old_np, new_np,
                         strat.applied_options.estimator)
        else:  # DP outside: its noise comes after; the inner rule was applied to the handed
            assert spy.expected is not None and len(spy.handed) == len(rec.responders)
        arrays = new


def check_rewrite(handed, replies, rec, global_np, estimator):
    """The replies handed to the wrapped strategy are the HT rewrite of the originals."""
    by_node = {int(r.metadata.src_node_id): r for r in replies}
    weights = dict(zip(rec.responders, rec.weights, strict=True))
    big_w = sum(rec.weights)
    assert len(handed) == len(rec.responders)
    for h in handed:
        node = int(h.metadata.src_node_id)
        assert h.content["metrics"]["num-examples"] == pytest.approx(weights[node])
        orig = as_np(by_node[node].content["arrays"])
        got = as_np(h.content["arrays"])
        if INT_KEY in orig:
            assert got[INT_KEY].dtype == np.int64
            np.testing.assert_array_equal(got[INT_KEY], orig[INT_KEY])
        for key in FLOAT_KEYS:
            if key not in got:  # summed in the screen's pass (check_summed)
                continue
            x = orig[key].astype(np.float64)
            assert got[key].dtype == orig[key].dtype
            if estimator == "ratio":
                np.testing.assert_array_equal(got[key], orig[key])
                continue
            xg = global_np[key].astype(orig[key].dtype).astype(np.float64)
            want = xg + big_w * (x - xg)
            tol = 1e-5 if orig[key].dtype == np.float32 else 1e-12
            np.testing.assert_allclose(got[key], want, rtol=tol, atol=tol)


def check_summed(handed, replies, rec, global_np, new_np, estimator):
    """Floating arrays not handed to the wrapped strategy (FedAvg's own mean): the aggregate
    is the estimate itself, HT ``x_g + sum_i w_i (x_i - x_g)`` or ratio
    ``sum_i w_i x_i / sum_i w_i``."""
    missing = [k for k in FLOAT_KEYS if k not in handed[0].content["arrays"]]
    if not missing:
        return
    by_node = {int(r.metadata.src_node_id): r for r in replies}
    for key in missing:
        xs = [by_node[n].content["arrays"][key].numpy().astype(np.float64)
              for n in rec.responders]
        xg = global_np[key].astype(np.float64)
        w = np.asarray(rec.weights)
        total = sum(wi * (x - xg) for wi, x in zip(w, xs, strict=True))
        want = xg + (total if estimator == "ht" else total / w.sum())
        tol = 1e-5 if new_np[key].dtype == np.float32 else 1e-12
        np.testing.assert_allclose(new_np[key], want, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("name", list(BASES))
def test_every_strategy_composes(name, dtype, monkeypatch, caplog):
    base = BASES[name]()
    with caplog.at_level(logging.WARNING, logger="flwr"):
        strat = StratifiedSelection(base, clients_per_round=M, seed=1, node_wait_timeout=0.1,
                                    **FAST)
    warned = [r.getMessage() for r in caplog.records if "cannot apply" in r.getMessage()]
    if name in WEIGHT_IGNORING:
        assert len(warned) == 1 and strat.applied_options.estimator == "ratio"
    else:
        assert warned == [] and strat.applied_options.estimator == "ht"
    rounds = 5 if name in ("FedAdam", "FedYogi") else 3
    # QFedAvg's own arithmetic cannot take integer arrays (in-place float ops), wrapped or not
    run_matrix_case(strat, strat, base, dtype, rounds, monkeypatch, with_int=name != "QFedAvg")


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("dp", list(DP))
@pytest.mark.parametrize("order", ["dp-outside", "dp-inside"])
def test_dp_wrappers_in_both_nesting_orders(order, dp, dtype, monkeypatch):
    base = FedAvg(fraction_evaluate=0.0)
    if order == "dp-outside":
        strat = StratifiedSelection(base, clients_per_round=M, seed=2, node_wait_timeout=0.1,
                                    **FAST)
        outer, below = DP[dp](strat), base
    else:
        inner = DP[dp](base)
        strat = StratifiedSelection(inner, clients_per_round=M, seed=2, node_wait_timeout=0.1,
                                    **FAST)
        outer, below = strat, inner
    run_matrix_case(outer, strat, below, dtype, 3, monkeypatch)


def test_float32_clients_under_fedadam_float64_globals_are_accepted(monkeypatch):
    """The reported failure: FedAdam returns float64 globals; float32 replies were rejected
    from round 2 on. Five rounds, every reply accepted, FedAdam's own step every round."""
    base = FedAdam(fraction_evaluate=0.0)
    strat = StratifiedSelection(base, clients_per_round=M, seed=0, node_wait_timeout=0.1)
    grid = LocalGrid(list(NODES), make_handler(np.float32))
    arrays = initial_arrays(np.float32)
    for rnd in range(1, 6):
        new, _ = strat.aggregate_train(
            rnd, grid.send_and_receive(strat.configure_train(rnd, arrays, ConfigRecord(), grid)))
        assert strat.records[-1].responders and not strat.records[-1].rejected
        if rnd > 1:
            assert arrays[FLOAT_KEYS[0]].numpy().dtype == np.float64  # FedAdam's own output
        arrays = new
