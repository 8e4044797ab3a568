"""Measured estimator variance: Monte Carlo core on synthetic populations, and an end-to-end
measurement from real client updates (digits)."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from fedstrat.app.config import RunConfig
from fedstrat.measure import (
    Population,
    build_samplers,
    compute_client_updates,
    measure_population,
    measure_variance,
    monte_carlo,
)
from fedstrat.sampling import UniformSampler


def _non_iid_population(seed: int = 0, n: int = 40, classes: int = 4, dim: int = 6):
    """Each client holds (mostly) one class; its update is that class's direction + noise."""
    rng = np.random.default_rng(seed)
    dirs = rng.normal(size=(classes, dim)) * 3.0
    labels = np.arange(n) % classes
    updates = dirs[labels] + 0.1 * rng.normal(size=(n, dim))
    sizes = rng.integers(5, 60, size=n)
    hist = np.zeros((n, classes))
    hist[np.arange(n), labels] = sizes
    return Population(updates, sizes), hist


def test_population_target_and_gram() -> None:
    pop, _ = _non_iid_population()
    p = pop.sizes / pop.sizes.sum()
    np.testing.assert_allclose(pop.target, p @ pop.updates)
    c = np.random.default_rng(1).normal(size=(3, pop.n_clients))
    direct = np.sum((c @ pop.updates) ** 2, axis=1)
    np.testing.assert_allclose(pop.sq_error(c), direct, rtol=1e-10)


def test_population_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="2-D"):
        Population(np.zeros(3), np.ones(3))
    with pytest.raises(ValueError, match="length"):
        Population(np.zeros((3, 2)), np.ones(2))
    with pytest.raises(ValueError, match="> 0"):
        Population(np.zeros((3, 2)), np.array([1.0, 0.0, 2.0]))


def test_uniform_mc_matches_exact_formula_and_is_unbiased() -> None:
    pop, _ = _non_iid_population()
    from fedstrat.sampling import uniform_variance

    exact = uniform_variance(pop.updates, pop.sizes, 8)
    st = monte_carlo(pop, UniformSampler(pop.sizes, 8), n_samples=4000, seed=3, name="u")
    # 4000 samples: the MC standard error is a few percent of the mean; allow 4 s.e.
    assert abs(st.measured - exact) <= 4 * st.measured_se, (st.measured, exact, st.measured_se)
    # unbiased: ||mean T_hat - T|| within 4 Monte Carlo standard errors sqrt(MSE / S)
    assert st.bias_z < 4.0
    assert st.mean_selected == 8


def test_every_unbiased_selection_is_unbiased_and_stratified_beats_uniform() -> None:
    pop, hist = _non_iid_population(seed=2)
    stats = {
        s.selection: s
        for s in measure_population(
            pop,
            8,
            hist,
            n_samples=2000,
            seed=5,
            n_strata=4,
            losses=np.arange(pop.n_clients, dtype=float),
        )
    }
    assert set(stats) == {
        "uniform",
        "multinomial",
        "clustered1",
        "clustered2",
        "stratified",
        "stratified-prop",
        "stratified-sketch",
        "poc",
        "fedavg",
    }
    for name, st in stats.items():
        if name in ("poc", "fedavg"):
            assert not st.unbiased
            continue
        assert st.unbiased
        # mean of T_hat within 4 MC standard errors of T (seeded, so deterministic)
        assert st.bias_z < 4.0, (name, st.bias_z)
        # the design formula predicts the measured MSE (exact formulas; pps is HH approx.)
        if not math.isnan(st.predicted):
            tol = 0.35 if st.info.get("design") == "pps" else 0.1
            assert abs(st.measured - st.predicted) <= tol * st.predicted + 4 * st.measured_se, (
                name,
                st.measured,
                st.predicted,
            )
    # strongly non-IID: the strata (one per class) remove the between-class variance
    assert stats["stratified"].measured * 3 < stats["uniform"].measured
    assert stats["stratified"].measured < stats["clustered1"].measured
    assert stats["stratified-sketch"].measured * 3 < stats["uniform"].measured
    # PoC picks high-loss clients: biased, its mean is far from T
    assert stats["poc"].bias_z > 4.0


def test_cli_knows_every_measured_selection() -> None:
    from fedstrat.cli.main import MEASURED
    from fedstrat.measure import MEASURED_SELECTIONS

    assert tuple(MEASURED) == tuple(MEASURED_SELECTIONS)


def test_build_samplers_validates() -> None:
    pop, hist = _non_iid_population()
    with pytest.raises(ValueError, match="unknown selection"):
        build_samplers(pop, 5, hist, selections=["uniform", "nope"])
    with pytest.raises(ValueError, match="m must be"):
        build_samplers(pop, 0, hist, selections=["uniform"])
    with pytest.raises(ValueError, match="histograms"):
        build_samplers(pop, 5, None, selections=["stratified"])
    with pytest.raises(ValueError, match="n_samples"):
        monte_carlo(pop, UniformSampler(pop.sizes, 3), n_samples=1)


def test_measured_variance_is_reproducible() -> None:
    pop, hist = _non_iid_population()
    kw = {"n_samples": 300, "n_strata": 4}
    a = measure_population(pop, 6, hist, selections=["uniform", "stratified"], **kw)
    b = measure_population(pop, 6, hist, selections=["stratified"], **kw)
    assert a[1].measured == b[0].measured  # seeding does not depend on the other selections


def _digits_cfg(**kw) -> RunConfig:
    base = dict(
        dataset="digits",
        num_clients=10,
        clients_per_round=3,
        partition="dirichlet",
        alpha=0.1,
        local_steps=3,
        batch_size=16,
    )
    base.update(kw)
    return RunConfig(**base).validate()


def test_client_updates_are_real_and_deterministic() -> None:
    cfg = _digits_cfg()
    a = compute_client_updates(cfg, [1, 2])
    b = compute_client_updates(cfg, [2])
    assert sorted(a["rounds"]) == [1, 2]
    u1, u2 = a["rounds"][1]["updates"], a["rounds"][2]["updates"]
    assert u1.shape == (10, a["dim"]) and a["dim"] > 100
    assert np.all(np.linalg.norm(u1, axis=1) > 0)  # every client moved the model
    assert not np.allclose(u1, u2)  # round 2 starts from a different global model
    np.testing.assert_array_equal(b["rounds"][2]["updates"], u2)  # same seed, same updates
    assert a["histograms"].sum() == a["sizes"].sum()


def test_measure_variance_end_to_end_on_digits() -> None:
    res = measure_variance(
        _digits_cfg(num_clients=20, clients_per_round=5, alpha=0.05),
        [1],
        selections=["uniform", "stratified"],
        n_samples=600,
    )
    by = {r["selection"]: r for r in res.rows}
    assert by["stratified"]["measured"] < by["uniform"]["measured"]
    assert res.ratio(1) > 1.0
    assert res.meta["num_clients"] == 20


def test_measure_variance_command(tmp_path) -> None:
    import json

    from typer.testing import CliRunner

    from fedstrat.cli.main import app

    out = tmp_path / "mv"
    args = ["measure-variance", "--dataset", "digits", "--num-clients", "12"]
    args += ["--clients-per-round", "4", "--local-steps", "2", "--measure-rounds", "1,2"]
    args += ["--samples", "100", "--selections", "uniform,stratified,poc", "--out", str(out)]
    res = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    text = " ".join(res.stdout.split())  # rich may wrap the line
    # the ratio with its standard error; none against FedAvg, which was not measured
    assert re.search(r"measured MSE uniform/stratified [\d.]+ ± [\d.e-]+, ", text), text
    assert "FedAvg/stratified - (no fedavg row)" in text and "nan" not in text
    data = json.loads((out / "variance.json").read_text())
    got = {(r["round"], r["selection"]) for r in data["rows"]}
    # plus the strategy's in-run prediction of its own design and, in a FedAvg round, of its
    # own FedAvg-round draw measured with FedAvg's weights (tracking.run_rows)
    own = {(r, s) for r in (1, 2) for s in ("stratified-run", "fedavg-run")}
    assert got - own == {(r, s) for r in (1, 2) for s in ("uniform", "stratified", "poc")}
    for r in data["rows"]:
        if r["selection"] == "fedavg-run":  # measured by Monte Carlo next to its prediction
            assert r["measured"] > 0 and r["predicted"] > 0 and r["measured_se"] > 0
    for name in ("variance.csv", "table.md", "variance.png"):
        assert (out / name).is_file()
