"""Measured difference estimator: residual populations, the FedAvg (self-normalised) baseline,
the replayed control trajectory and the opt-in selections through measure_variance / the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fedstrat.app.config import RunConfig
from fedstrat.measure import Population, measure_population, measure_variance
from fedstrat.measure.controls import ControlTrajectory
from fedstrat.measure.variance import MEASURABLE, MEASURED_SELECTIONS
from fedstrat.sampling import uniform_variance


def _population(seed: int = 0, n: int = 30, classes: int = 3, dim: int = 5):
    rng = np.random.default_rng(seed)
    dirs = rng.normal(size=(classes, dim)) * 3.0
    labels = np.arange(n) % classes
    updates = dirs[labels] + 0.3 * rng.normal(size=(n, dim))
    sizes = rng.integers(5, 60, size=n)
    hist = np.zeros((n, classes))
    hist[np.arange(n), labels] = sizes
    return Population(updates, sizes), hist


def test_original_selections_keep_their_seeds_and_difference_is_opt_in() -> None:
    # positions seed the Monte Carlo streams: the original eight keep theirs
    assert MEASURABLE[:8] == ("uniform", "multinomial", "clustered1", "clustered2",
                              "stratified", "stratified-prop", "stratified-sketch", "poc")
    assert not set(MEASURED_SELECTIONS) & {"difference", "stratified-difference"}  # opt-in
    assert {"fedavg", "difference", "stratified-difference"} <= set(MEASURABLE[8:])


def test_difference_is_measured_on_the_residuals() -> None:
    pop, hist = _population()
    zero = np.zeros((pop.n_clients, 1))
    kw = {"n_samples": 1500, "seed": 1, "n_strata": 3}
    st = {s.selection: s for s in measure_population(
        pop, 6, hist, selections=["difference", "stratified-difference"],
        controls={"difference": zero, "stratified-difference": pop.updates}, **kw)}
    exact = uniform_variance(pop.updates, pop.sizes, 6)
    d = st["difference"]
    assert d.predicted == pytest.approx(exact, rel=1e-9)  # c = 0: the HT variance
    assert abs(d.measured - exact) < 4 * d.measured_se and d.bias_z < 4
    assert st["stratified-difference"].measured == pytest.approx(0.0, abs=1e-20)  # c = Delta
    with pytest.raises(ValueError, match="control"):
        measure_population(pop, 6, hist, selections=["difference"], **kw)


def test_fedavg_is_self_normalised_and_flagged_biased() -> None:
    pop, hist = _population(seed=2)
    (st,) = measure_population(pop, 6, hist, selections=["fedavg"], n_samples=1500, seed=0)
    assert not st.unbiased
    # the linearised prediction is close to the measured MSE of the ratio estimator
    assert 0.6 < st.predicted / st.measured < 1.6


def test_control_trajectory_replays_the_draws() -> None:
    pop, hist = _population(seed=3)
    traj = ControlTrajectory("difference", pop.sizes, 5, hist, seed=4, n_strata=3)
    assert np.all(traj.controls(1) == 0)
    drawn = traj.observe(1, pop.updates)
    assert len(drawn) == 5
    c = traj.controls(2)
    np.testing.assert_array_equal(c[drawn], pop.updates[drawn])
    again = ControlTrajectory("difference", pop.sizes, 5, hist, seed=4, n_strata=3)
    np.testing.assert_array_equal(again.observe(1, pop.updates), drawn)  # same seeds
    others = np.setdiff1d(np.arange(pop.n_clients), drawn)
    labels = traj.labels
    for i in others[:5]:  # never drawn: the mean of the drawn clients of its label stratum
        same = [j for j in drawn if labels[j] == labels[i]]
        expected = pop.updates[same].mean(axis=0) if same else pop.updates[drawn].mean(axis=0)
        np.testing.assert_allclose(c[i], expected)
    decayed = ControlTrajectory("difference", pop.sizes, 5, hist, seed=4, fill="zero",
                                decay=0.5)
    decayed.observe(1, pop.updates)
    np.testing.assert_allclose(decayed.controls(3)[drawn], 0.25 * pop.updates[drawn])
    with pytest.raises(ValueError, match="difference"):
        ControlTrajectory("uniform", pop.sizes, 5, hist)


def test_measure_variance_with_difference_selections(tmp_path) -> None:
    cfg = RunConfig(dataset="digits", num_clients=12, clients_per_round=4, partition="dirichlet",
                    alpha=0.1, local_steps=2, batch_size=16).validate()
    res = measure_variance(cfg, [1, 3], selections=["fedavg", "difference"], n_samples=200)
    by = {(r["round"], r["selection"]): r for r in res.rows}
    assert by[(1, "difference")]["info"]["clients_seen"] == 0
    assert by[(3, "difference")]["info"]["clients_seen"] >= 4  # two rounds of 4 draws
    for r in res.rows:
        assert np.isfinite(r["measured"]) and r["measured"] > 0

    from typer.testing import CliRunner

    from fedstrat.cli.main import app

    out = tmp_path / "mv"
    args = ["measure-variance", "--dataset", "digits", "--num-clients", "10",
            "--clients-per-round", "3", "--local-steps", "1", "--measure-rounds", "2",
            "--samples", "50", "--selections", "uniform,stratified-difference", "--out", str(out)]
    run = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert run.exit_code == 0, run.output
    data = json.loads((out / "variance.json").read_text())
    assert {r["selection"] for r in data["rows"]} == {"uniform", "stratified-difference"}


def test_the_strategys_own_difference_draw_is_a_measured_selection(tmp_path) -> None:
    """stratified-difference-learned (replayed StratifiedPolicy + control memory) is measured
    next to FedAvg by measure_variance and accepted by the CLI; at round 1 no control is
    known, so it is the HT estimator of the design the policy drew."""
    from fedstrat.measure.variance import REPLAYED_SELECTIONS, SELECTABLE

    assert "stratified-difference-learned" in REPLAYED_SELECTIONS
    assert set(REPLAYED_SELECTIONS) <= set(SELECTABLE) and not set(REPLAYED_SELECTIONS) & set(
        MEASURABLE)
    cfg = RunConfig(dataset="digits", num_clients=12, clients_per_round=4, partition="dirichlet",
                    alpha=0.1, local_steps=2, batch_size=16).validate()
    res = measure_variance(cfg, [1, 3], selections=["fedavg", "stratified-difference-learned"],
                           n_samples=200)
    by = {(r["round"], r["selection"]): r for r in res.rows}
    name = "stratified-difference-learned"
    first, later = by[(1, name)], by[(3, name)]
    assert first["info"]["clients_seen"] == 0 and later["info"]["clients_seen"] >= 4
    assert first["info"]["allocation_from"].startswith("tracked")
    for row in (first, later):
        assert np.isfinite(row["measured"]) and row["measured"] > 0
        assert np.isfinite(row["fedavg_over_this"]) and row["bias_z"] < 4

    from typer.testing import CliRunner

    from fedstrat.cli.main import app

    out = tmp_path / "mv"
    args = ["measure-variance", "--dataset", "digits", "--num-clients", "10",
            "--clients-per-round", "3", "--local-steps", "1", "--measure-rounds", "2",
            "--samples", "50", "--selections", "fedavg,stratified-difference-learned",
            "--out", str(out)]
    run = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert run.exit_code == 0, run.output
    data = json.loads((out / "variance.json").read_text())
    assert {r["selection"] for r in data["rows"]} == {"fedavg", "stratified-difference-learned"}
