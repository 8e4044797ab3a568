"""StratifiedSelection in real Flower simulations (one Ray simulation serves every test here).

A tiny numpy ClientApp (softmax regression on Dirichlet(0.1)-skewed synthetic data, 20 nodes)
answers the profile query of docs/design.md. The ServerApp runs, one after the other on the
same Grid: FedAvg (4 rounds), FedProx, FedAdam, FedYogi (3 rounds each) wrapped in
StratifiedSelection, and a FedAvg run in which 6 nodes raise during training. Nodes are profiled
by the first scenario; the later ones reuse its NodeRegistry (saves 80 profile round trips).
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAdam, FedAvg, FedProx, FedYogi

from fedstrat.strategies import StratifiedSelection
from fedstrat.wire import PROFILE_KEY

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

N_NODES, CLASSES, FEATURES, M = 20, 4, 5, 5
# Partition ids that raise in the failure scenario. Flower's node ids are random in each
# simulation, so which partitions a seeded draw picks varies between runs: half of the nodes
# fail, so 3 rounds of 5 draws miss all of them with probability ~ (1/2)^15.
FAILING = set(range(10))


def local_data(pid: int) -> tuple[np.ndarray, np.ndarray]:
    """Partition ``pid``: Dirichlet(0.1) label mix, sizes 20..119, Gaussian class clusters."""
    rng = np.random.default_rng([1234, pid])
    n = int(rng.integers(20, 120))
    props = rng.dirichlet(np.full(CLASSES, 0.1))
    y = rng.choice(CLASSES, size=n, p=props)
    centers = np.random.default_rng(99).normal(scale=2.0, size=(CLASSES, FEATURES))
    x = centers[y] + rng.normal(size=(n, FEATURES))
    return x, y


client = ClientApp()


@client.query()
def query(msg: Message, context: Context) -> Message:
    _, y = local_data(int(context.node_config["partition-id"]))
    hist = np.bincount(y, minlength=CLASSES).astype(float).tolist()
    rec = MetricRecord({"num-examples": len(y), "label-hist": hist})
    return Message(RecordDict({PROFILE_KEY: rec}), reply_to=msg)


@client.train()
def train(msg: Message, context: Context) -> Message:
    pid = int(context.node_config["partition-id"])
    cfg = msg.content["config"]
    if cfg.get("fail", 0) and pid in FAILING:
        raise RuntimeError(f"partition {pid} fails on purpose")
    x, y = local_data(pid)
    arrays = msg.content["arrays"]
    w0, b0 = arrays["w"].numpy(), arrays["b"].numpy()
    w, b = w0.copy(), b0.copy()
    mu = float(cfg.get("proximal-mu", 0.0))
    onehot = np.eye(CLASSES)[y]
    for _ in range(5):
        z = x @ w + b
        p = np.exp(z - z.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        g = (p - onehot) / len(y)
        w -= 0.2 * (x.T @ g + mu * (w - w0))
        b -= 0.2 * (g.sum(axis=0) + mu * (b - b0))
    loss = float(-np.log(p[np.arange(len(y)), y] + 1e-12).mean())
    out = ArrayRecord({"w": Array(w.astype(w0.dtype)), "b": Array(b.astype(b0.dtype))})
    metrics = MetricRecord({"num-examples": len(y), "train-loss": loss})
    return Message(RecordDict({"arrays": out, "metrics": metrics}), reply_to=msg)


RESULTS: dict[str, dict] = {}


def initial() -> ArrayRecord:
    return ArrayRecord(
        {
            "w": Array(np.zeros((FEATURES, CLASSES), np.float32)),
            "b": Array(np.zeros(CLASSES, np.float32)),
        }
    )


server = ServerApp()


@server.main()
def main(grid: Grid, context: Context) -> None:
    scenarios = [
        ("fedavg", FedAvg(fraction_evaluate=0.0), 4, {}),
        ("fedprox", FedProx(fraction_evaluate=0.0, proximal_mu=0.1), 3, {}),
        ("fedadam", FedAdam(fraction_evaluate=0.0, eta=0.05), 3, {}),
        ("fedyogi", FedYogi(fraction_evaluate=0.0, eta=0.05), 3, {}),
        ("failures", FedAvg(fraction_evaluate=0.0), 3, {"fail": 1}),
    ]
    registry = None
    for name, inner, rounds, cfg in scenarios:
        try:
            s = StratifiedSelection(inner, clients_per_round=M, seed=0, node_wait_timeout=30,
                                    profile_timeout=300, profiling="query")
            if registry is not None:  # profile the nodes once (first scenario), reuse after
                s.registry = registry
            res = s.start(grid=grid, initial_arrays=initial(), num_rounds=rounds,
                          timeout=120, train_config=ConfigRecord(cfg))
            RESULTS[name] = {"strategy": s, "result": res}
            registry = s.registry
        except Exception as exc:  # noqa: BLE001 - reported by the tests
            RESULTS[name] = {"error": repr(exc)}


@pytest.fixture(scope="module")
def sim():
    from flwr.simulation import run_simulation

    RESULTS.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        run_simulation(
            server_app=server,
            client_app=client,
            num_supernodes=N_NODES,
            backend_config={
                "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                "init_args": {"num_cpus": 2, "num_gpus": 0},
            },
        )
    return RESULTS


def _ok(sim, name):
    assert name in sim, f"scenario {name} did not run"
    assert "error" not in sim[name], sim[name].get("error")
    return sim[name]["strategy"], sim[name]["result"]


@pytest.mark.parametrize("name", ["fedavg", "fedprox", "fedadam", "fedyogi"])
def test_simulation_runs_with_each_base_strategy(sim, name):
    s, res = _ok(sim, name)
    rounds = 4 if name == "fedavg" else 3
    assert [r.round for r in s.records] == list(range(1, rounds + 1))
    for rec in s.records:
        assert len(rec.selected) == M and len(set(rec.selected)) == M
        assert sorted(rec.responders) == sorted(rec.selected)
        assert rec.rejected == [] and rec.failures == []
    assert len(s.registry.histograms) == N_NODES  # every node answered the profile query
    final = res.arrays
    assert final is not None and set(final.keys()) == {"w", "b"}
    assert np.all(np.isfinite(final["w"].numpy())) and np.abs(final["w"].numpy()).sum() > 0
    assert set(res.train_metrics_clientapp) == set(range(1, rounds + 1))
    assert "fedstrat-n-failed" in res.train_metrics_clientapp[rounds]
    assert "train-loss" in res.train_metrics_clientapp[rounds]


def global_loss(arrays: ArrayRecord) -> float:
    """Cross-entropy of the model on the union of all partitions."""
    w, b = arrays["w"].numpy().astype(np.float64), arrays["b"].numpy().astype(np.float64)
    total, count = 0.0, 0
    for pid in range(N_NODES):
        x, y = local_data(pid)
        z = x @ w + b
        z -= z.max(axis=1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        total -= logp[np.arange(len(y)), y].sum()
        count += len(y)
    return total / count


# Not the "failures" scenario: with half of the nodes raising, a round can keep a single
# Dirichlet(0.1)-skewed responder (P ~ 0.15 a round), whose weights then carry the round's whole
# total, as FedAvg's would: the global loss after 3 such rounds is a matter of luck (1.61 > log 4
# was seen in CI). What the failure scenario guarantees is tested below.
@pytest.mark.parametrize("name", ["fedavg", "fedprox", "fedadam", "fedyogi"])
def test_simulation_training_reduces_global_loss(sim, name):
    _, res = _ok(sim, name)
    assert global_loss(res.arrays) < 0.9 * global_loss(initial())  # log(4) at the start


def test_simulation_failing_nodes_are_reweighted_not_aggregated(sim):
    s, res = _ok(sim, "failures")
    failed_total = 0
    for rec in s.records:
        failed = {f.node for f in rec.failures}
        failed_total += len(failed)
        assert not failed & set(rec.responders)
        assert len(failed) + len(rec.responders) == len(rec.selected)
        if rec.responders:  # non-response keeps the selection's weight total
            assert sum(rec.weights) == pytest.approx(sum(rec.selection_weights), rel=1e-9)
            assert all(w > 0 for w in rec.weights)
    assert failed_total > 0  # 10 of 20 nodes fail: some were selected in 3 rounds
    assert res.arrays is not None and np.all(np.isfinite(res.arrays["w"].numpy()))


def test_simulation_predicted_variance_stratified_below_uniform(sim):
    s, _ = _ok(sim, "fedavg")
    for rec in s.records:
        assert rec.design in ("pps", "srswor"), rec.design_reason
        assert rec.allocation_rule == "neyman"
    for rec in s.records[1:]:
        assert rec.pred_var < rec.pred_var_uniform, rec
    # with m_h = 1 a stratum needs two rounds before its own S_h is tracked
    assert s.records[-1].S_h_basis == "tracked"
