"""estimator="difference" through StratifiedSelection (LocalGrid, no simulation): the exact
aggregate, unbiasedness by enumerating every sample through the strategy, multi-round runs
with FedAvg / FedAdam / a DP wrapper, the memory budget and bit-exact resume."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
from flwr.app import ConfigRecord
from flwr.serverapp.strategy import (
    DifferentialPrivacyServerSideFixedClipping,
    FedAdam,
    FedAvg,
)
from strathelpers import flatten, global_arrays, make_population, population_grid

from fedstrat.strategies import StratifiedSelection
from fedstrat.strategies.control_variates import ControlVariates
from fedstrat.strategies.rewrite import rewrite_replies


def one_round(strategy, grid, arrays, rnd):
    msgs = list(strategy.configure_train(rnd, arrays, ConfigRecord(), grid))
    replies = list(grid.send_and_receive(msgs, timeout=5))
    new, metrics = strategy.aggregate_train(rnd, replies)
    return replies, new, metrics


def _p(pop, nodes):
    n = np.array([pop.sizes[pop.index[k]] for k in nodes], dtype=np.float64)
    return n / n.sum()


def test_round_one_equals_ht_and_round_two_is_the_difference_formula():
    pop = make_population(n=30, classes=4, dim=6, seed=1)
    grid = population_grid(pop)
    kw = {"clients_per_round": 6, "seed": 2, "selection": "uniform", "profiling": "query"}
    ht = StratifiedSelection(FedAvg(fraction_evaluate=0.0), **kw)
    diff = StratifiedSelection(FedAvg(fraction_evaluate=0.0), estimator="difference",
                               cv_fill="zero", **kw)
    arrays = global_arrays(6)
    xg = flatten(arrays)
    _, a_ht, _ = one_round(ht, grid, arrays, 1)
    _, a_diff, _ = one_round(diff, grid, arrays, 1)
    # no control known yet: c = 0, the difference estimate is the HT estimate
    np.testing.assert_allclose(flatten(a_diff), flatten(a_ht), rtol=0, atol=1e-12)
    seen = {n: pop.update(n).astype(np.float32).astype(np.float64)
            for n in diff.records[-1].responders}
    _, a2, _ = one_round(diff, grid, arrays, 2)
    rec = diff.records[-1]
    nodes = sorted(pop.node_ids)
    p = _p(pop, nodes)
    offset = sum(p[k] * seen[n] for k, n in enumerate(nodes) if n in seen)
    expected = xg + offset
    for node, w in zip(rec.responders, rec.weights, strict=True):
        expected = expected + w * (pop.update(node) - seen.get(node, 0.0))
    np.testing.assert_allclose(flatten(a2), expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize("fill", ["zero", "stratum"])
def test_unbiased_by_enumerating_every_sample_through_the_strategy(fill):
    """Uniform design, N = 6, m = 2: all 15 samples are equally likely. Seeds are tried until
    every sample has been drawn; the mean of the 15 aggregates (each through the strategy,
    with the same stored controls) is the exact expectation and equals the target."""
    pop = make_population(n=6, classes=3, dim=4, seed=3)
    grid = population_grid(pop)
    arrays = global_arrays(4)
    xg = flatten(arrays)
    memory = ControlVariates()
    rng = np.random.default_rng(0)
    nodes = sorted(pop.node_ids)
    memory.update(1, nodes[:3], rng.normal(size=(3, 4)) * 2)  # arbitrary stale controls
    state = memory.state_dict()
    results: dict[tuple[int, ...], np.ndarray] = {}
    for seed in range(400):
        s = StratifiedSelection(FedAvg(fraction_evaluate=0.0), clients_per_round=2, seed=seed,
                                selection="uniform", estimator="difference", cv_fill=fill,
                                profiling="query")
        s.controls.load_state_dict(state)
        _, new, _ = one_round(s, grid, arrays, 5)
        key = tuple(sorted(s.records[-1].selected))
        results.setdefault(key, flatten(new) - xg)
        if len(results) == 15:
            break
    assert sorted(results) == sorted(itertools.combinations(nodes, 2))
    mean = np.mean(list(results.values()), axis=0)
    np.testing.assert_allclose(mean, pop.target(nodes), rtol=0, atol=1e-12)


def _run(strategy, grid, rounds, dim=6):
    arrays = global_arrays(dim)
    errors = []
    for r in range(1, rounds + 1):
        _, new, _ = one_round(strategy, grid, arrays, r)
        errors.append(new)
    return errors


def test_multi_round_fedavg_difference_converges_to_the_target():
    """Constant client updates: once every node has been seen, c_i = Delta_i (float32) and the
    estimate is the target up to float32 rounding; HT keeps its sampling error."""
    pop = make_population(n=12, classes=4, dim=6, seed=4)
    grid = population_grid(pop)
    arrays = global_arrays(6)
    xg = flatten(arrays)
    target = pop.target()
    errs = {}
    for est in ("ht", "difference"):
        s = StratifiedSelection(FedAvg(fraction_evaluate=0.0), clients_per_round=6, seed=0,
                                estimator=est, selection="uniform", profiling="query")
        e = []
        for r in range(1, 13):
            _, new, _ = one_round(s, grid, arrays, r)
            e.append(float(np.linalg.norm(flatten(new) - xg - target)))
        errs[est] = e
    assert len(s.controls.vectors) == 12  # every node seen
    assert errs["difference"][0] == pytest.approx(errs["ht"][0], rel=1e-9)
    assert max(errs["difference"][-3:]) < 1e-5 < min(errs["ht"][-3:])


def test_fedadam_and_dp_wrapper_compose():
    pop = make_population(n=20, classes=4, dim=6, seed=5)
    grid = population_grid(pop)
    for inner in (
        FedAdam(fraction_evaluate=0.0, eta=0.1),
        DifferentialPrivacyServerSideFixedClipping(
            FedAvg(fraction_evaluate=0.0), noise_multiplier=0.0, clipping_norm=100.0,
            num_sampled_clients=5),
    ):
        s = StratifiedSelection(inner, clients_per_round=5, seed=1, estimator="difference")
        arrays = global_arrays(6)
        for r in range(1, 5):
            replies, new, metrics = one_round(s, grid, arrays, r)
            assert np.all(np.isfinite(flatten(new)))
            assert metrics["fedstrat-n-selected"] == 5
            arrays = new
        assert len(s.controls.vectors) > 5


def test_checkpoint_resume_is_bit_exact():
    pop = make_population(n=20, classes=4, dim=6, seed=6)
    grid = population_grid(pop)
    kw = {"clients_per_round": 5, "seed": 9, "estimator": "difference", "cv_decay": 0.9}
    a = StratifiedSelection(FedAdam(fraction_evaluate=0.0, eta=0.1), **kw)
    arrays = global_arrays(6, dtype=np.float32)
    for r in (1, 2, 3):
        _, arrays, _ = one_round(a, grid, arrays, r)
    state = json.loads(json.dumps(a.state_dict()))
    b = StratifiedSelection(FedAdam(fraction_evaluate=0.0, eta=0.1), **kw)
    b.load_state_dict(state)
    b.strategy.m_t, b.strategy.v_t = a.strategy.m_t, a.strategy.v_t  # server-opt moments
    b.strategy.current_arrays = a.strategy.current_arrays
    _, na, _ = one_round(a, grid, arrays, 4)
    _, nb, _ = one_round(b, grid, arrays, 4)
    np.testing.assert_array_equal(flatten(na), flatten(nb))


def test_memory_budget_keeps_the_most_recent_and_fills_the_rest():
    cv = ControlVariates(budget_bytes=2 * 4 * 3, fill="stratum")  # two float32 vectors of 3
    cv.update(1, [10, 11], np.array([[1.0, 1, 1], [2, 2, 2]]))
    cv.update(2, [12], np.array([[4.0, 4, 4]]))
    # oldest first, ties: the larger node id first
    assert sorted(cv.vectors) == [10, 12] and cv.dropped == 1 and cv.nbytes <= 24
    rc = cv.controls(3, [10, 11, 12], np.array([1.0, 1.0, 2.0]), 3, {10: 0, 11: 0, 12: 1})
    np.testing.assert_array_equal(rc.of(11), [1.0, 1, 1])  # stratum 0's stored mean
    np.testing.assert_allclose(rc.offset, 0.25 * 1 + 0.25 * 1 + 0.5 * 4 * np.ones(3))
    back = ControlVariates()
    back.load_state_dict(json.loads(json.dumps(cv.state_dict())))
    for n in cv.vectors:
        assert back.vectors[n].tobytes() == cv.vectors[n].tobytes()
    decayed = ControlVariates(decay=0.5)
    decayed.update(1, [1], np.array([[8.0, 8, 8]]))
    np.testing.assert_array_equal(decayed.controls(4, [1], np.ones(1), 3).of(1), [1.0, 1, 1])


def test_rewrite_needs_controls_for_difference():
    pop = make_population(n=10, classes=3, dim=6, seed=7)
    grid = population_grid(pop)
    s = StratifiedSelection(FedAvg(fraction_evaluate=0.0), clients_per_round=3, seed=0)
    arrays = global_arrays(6)
    msgs = list(s.configure_train(1, arrays, ConfigRecord(), grid))
    replies = list(grid.send_and_receive(msgs, timeout=5))
    from fedstrat.strategies.reply_validation import array_signature, validate_train_reply

    valid = [validate_train_reply(r, array_signature(arrays), set(s.pending_plan.selected),
                                  "num-examples") for r in replies]
    g = {k: a.numpy() for k, a in arrays.items()}
    with pytest.raises(ValueError, match="difference"):
        rewrite_replies(valid, np.ones(3), g, "difference", "num-examples")


def test_difference_allocates_and_predicts_from_residual_sketches():
    """With constant client updates the residuals of seen nodes vanish: once every stratum has
    tracked residual sketches, S_h are residual dispersions (they fall as nodes are seen), the
    recorded predicted MSE is the difference estimator's, far below FedAvg's, and the decision
    says so. The HT run never uses residuals."""
    pop = make_population(n=40, classes=4, dim=6, seed=7)
    grid = population_grid(pop)
    arrays = global_arrays(6)
    runs = {}
    for est in ("ht", "difference"):
        s = StratifiedSelection(FedAvg(fraction_evaluate=0.0), clients_per_round=10, seed=3,
                                estimator=est, selection="stratified", profiling="query")
        for r in range(1, 16):
            one_round(s, grid, arrays, r)
        runs[est] = s.records
    assert all(r.S_h_basis != "residuals" for r in runs["ht"])
    late = [r for r in runs["difference"] if r.S_h_basis == "residuals"]
    assert late, "the residual tracker never took over"
    last, ht_last = runs["difference"][-1], runs["ht"][-1]
    assert last.S_h_basis == "residuals"
    assert sum(last.S_h) < 0.5 * sum(late[0].S_h)
    assert ht_last.S_h_basis == "tracked"
    d = last.decision
    assert d is not None and d.predicted is not None and d.predicted_fedavg is not None
    assert last.pred_var == pytest.approx(d.predicted.value)
    assert d.predicted.value < 0.1 * d.predicted_fedavg.value
    assert "difference estimator" in d.reason
    assert last.metrics()["fedstrat-var-ratio-fedavg"] > 10
    # the residual tracker is part of the checkpoint
    s = StratifiedSelection(FedAvg(fraction_evaluate=0.0), clients_per_round=10, seed=3,
                            estimator="difference", selection="stratified", profiling="query")
    for r in range(1, 16):
        one_round(s, grid, arrays, r)
    state = json.loads(json.dumps(s.state_dict()))
    assert "residual_tracker" in state["policy"]
    t = StratifiedSelection(FedAvg(fraction_evaluate=0.0), clients_per_round=10, seed=3,
                            estimator="difference", selection="stratified", profiling="query")
    t.load_state_dict(state)
    one_round(s, grid, arrays, 16)
    one_round(t, grid, arrays, 16)
    assert t.records[-1].selected == s.records[-1].selected
    assert t.records[-1].S_h == s.records[-1].S_h


def test_stored_controls_are_scaled_by_the_coefficient_learnt_for_their_age():
    """Nodes whose update halved between two draws two rounds apart teach b = 0.5 for that
    age: the next controls of age 2 are half the stored update; with an explicit decay the
    fixed decay applies instead."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 5))
    sizes = np.ones(6)
    for decay, expect in ((1.0, 0.5), (0.9, 0.81)):
        cv = ControlVariates(decay=decay)
        cv.update(1, [0, 1, 2], x[:3])
        cv.update(2, [3, 4, 5], x[3:])
        used = cv.controls(3, list(range(6)), sizes, 5).matrix([0, 1, 2])
        cv.update(3, [0, 1, 2], 0.5 * x[:3], used, np.full(3, 1 / 6))
        c = cv.controls(4, list(range(6)), sizes, 5)
        np.testing.assert_allclose(c.of(3), expect * x[3], rtol=1e-6)
        state = json.loads(json.dumps(cv.state_dict()))
        again = ControlVariates(decay=decay)
        again.load_state_dict(state)
        np.testing.assert_array_equal(again.controls(4, list(range(6)), sizes, 5).of(3),
                                      c.of(3))


def test_the_draw_is_pps_by_predicted_residual_norm_once_residuals_are_tracked():
    """estimator="difference", design pps: once every stratum has tracked residual sketches,
    a stratified round draws πps by z_i = p_i s_i inside strata (s_i the memory's predicted
    residual norm before the round), with HT weights p_i / pi_i; before that, πps by size.
    Constant client updates: seen nodes' residuals vanish, so never-seen nodes get larger
    inclusion probabilities than pps by size would give them."""
    from fedstrat.sampling import pps_inclusion

    pop = make_population(n=40, classes=4, dim=6, seed=7)
    grid = population_grid(pop)
    arrays = global_arrays(6)
    s = StratifiedSelection(FedAvg(fraction_evaluate=0.0), clients_per_round=10, seed=3,
                            estimator="difference", selection="stratified", design="pps",
                            profiling="query")
    nodes = sorted(pop.node_ids)
    where = {n: k for k, n in enumerate(nodes)}
    p = _p(pop, nodes)
    by_residual, by_size = [], []
    for r in range(1, 16):
        scale = s.controls.residual_scales(r, nodes)
        one_round(s, grid, arrays, r)
        rec = s.records[-1]
        if rec.design != "pps" or rec.decision.mode != "stratified":
            continue
        labels = s.policy.last_plan.strata.labels
        z = p * scale if rec.S_h_basis == "residuals" else p
        pi = np.zeros(len(nodes))
        for h, m_h in enumerate(rec.m_h):
            mem = np.flatnonzero(labels == h)
            pi[mem] = pps_inclusion(z[mem], m_h)
        k = [where[n] for n in rec.selected]
        np.testing.assert_allclose(rec.inclusion, pi[k], rtol=1e-12)
        np.testing.assert_allclose(rec.selection_weights, p[k] / pi[k], rtol=1e-12)
        (by_residual if rec.S_h_basis == "residuals" else by_size).append(r)
        if rec.S_h_basis == "residuals":
            assert not np.allclose(scale, scale[0]), "the size measure is the plain size"
            assert "predicted residual norm" in rec.decision.reason
    assert by_residual, "the residual size measure was never used"


def test_the_measured_replay_draws_what_the_strategy_draws():
    """fedstrat.measure's stratified-difference-learned replays StratifiedSelection itself:
    fed the same clients' updates, it draws the same nodes every round as the strategy run
    through a grid, and by round 12 both draw pps by predicted residual norm."""
    from fedstrat.app.config import RunConfig
    from fedstrat.measure.strategy_replay import DifferenceReplay

    pop = make_population(n=40, classes=4, dim=6, seed=7)
    grid = population_grid(pop)
    arrays = global_arrays(6)
    s = StratifiedSelection(FedAvg(fraction_evaluate=0.0), clients_per_round=10, seed=3,
                            estimator="difference", selection="stratified", profiling="query")
    nodes = sorted(pop.node_ids)
    result = {"sizes": np.array([pop.sizes[pop.index[n]] for n in nodes], dtype=np.float64),
              "histograms": np.array([pop.histogram(n) for n in nodes])}
    upd = np.array([pop.update(n) for n in nodes])
    cfg = RunConfig(dataset="digits", num_clients=40, clients_per_round=10, seed=3).validate()
    replay = DifferenceReplay(cfg, [12], n_samples=200)
    for r in range(1, 13):
        one_round(s, grid, arrays, r)
        replay(r, upd, result)
        assert sorted(nodes[i] for i in replay.drawn[r]) == sorted(s.records[-1].selected), r
    assert "predicted residual norm" in s.records[-1].decision.reason
    st = replay.stats[12]
    assert st.info["size_measure"] == "predicted residual norm"
    assert st.bias_z < 4  # the difference estimator under the replayed design is unbiased


class _Scales:
    """A control memory stand-in: the predicted residual norms of each round."""

    def __init__(self, by_round):
        self.by_round = by_round

    def residual_scales(self, round_, nodes):
        return np.asarray(self.by_round[round_], dtype=np.float64)[: len(nodes)]


def test_residual_tracker_forgets_by_the_round_decay_alone():
    """The residual tracker gets v_i = e_i / s_i with weight w_i s_i / Z_h: under pps by
    z_i = p_i s_i with one draw per stratum that weight is exactly 1, whatever the residual
    norms, so a round whose residual norms (and Z_h) halved weighs as much as the one before
    and the tracker's mean is the ROUND_DECAY-weighted mean of the rounds. Without a size
    measure (design srswor) the weight is w_i / P_h."""
    from fedstrat.sampling import StratumVarianceTracker
    from fedstrat.strategies.options import SelectionOptions
    from fedstrat.strategies.plan import Feedback, PopulationFrame
    from fedstrat.strategies.residual_evidence import ResidualEvidence
    from fedstrat.strategies.stratified_policy import ROUND_DECAY

    nodes, sizes = [10, 11, 12, 13], np.array([1.0, 3.0, 2.0, 2.0])
    where = {10: 0, 11: 0, 12: 1, 13: 1}
    p = sizes / sizes.sum()
    s1 = np.array([2.0, 1.0, 4.0, 1.0])
    ev = ResidualEvidence(SelectionOptions(2, estimator="difference", design="pps"))
    ev.attach(_Scales({1: s1, 2: s1 / 2}))
    tracker = StratumVarianceTracker(2, 1)
    v = {1: np.array([[1.0], [3.0]]), 2: np.array([[5.0], [-1.0]])}
    for r in (1, 2):
        frame = PopulationFrame(r, nodes, sizes, 2, None)
        ev.start_round(frame, "pps")
        z = ev.size_measure(frame)
        s = s1 if r == 1 else s1 / 2
        np.testing.assert_allclose(z, p * s)
        drawn = [0, 2]  # one per stratum, pi_i = z_i / Z_h
        pi = np.array([z[0] / z[:2].sum(), z[2] / z[2:].sum()])
        w = p[drawn] / pi
        e = v[r] * s[drawn][:, None]
        fb = ev.scaled(Feedback([nodes[k] for k in drawn], e, w), where)
        np.testing.assert_allclose(fb.weights, [1.0, 1.0], rtol=1e-12)
        np.testing.assert_allclose(fb.sketches, v[r], rtol=1e-12)
        tracker.decay(ROUND_DECAY)
        for k, n in enumerate(fb.nodes):
            tracker.update(where[n], fb.sketches[k], fb.weights[k])
    expect = (ROUND_DECAY * v[1] + v[2]) / (ROUND_DECAY + 1.0)
    np.testing.assert_allclose(tracker.means(), expect, rtol=1e-12)
    # design srswor: no size measure, the weights are divided by P_h
    frame = PopulationFrame(3, nodes, sizes, 2, None)
    ev.start_round(frame, "srswor")
    fb = ev.scaled(Feedback([10, 13], np.ones((2, 1)), np.array([0.5, 0.25])), where)
    np.testing.assert_allclose(fb.weights, [0.5 / p[:2].sum(), 0.25 / p[2:].sum()])
    np.testing.assert_allclose(fb.sketches, np.ones((2, 1)))


def noise_rounds(estimator, rounds, alpha, residual_scale=1.0, seed=42, m=6):
    """Plan and observe ``rounds`` rounds on a 40-node population (label Dirichlet ``alpha``):
    update sketches N(0, I_8) fresh each round and, with the difference estimator, residual
    sketches ``residual_scale`` x N(0, I_8). Yields ``(policy, draw, p)`` each round."""
    from fedstrat.strategies import SelectionOptions, make_policy
    from fedstrat.strategies.node_registry import NodeRegistry
    from fedstrat.strategies.plan import Feedback, PopulationFrame

    pop = make_population(n=40, classes=3, dim=6, alpha=alpha, seed=9)
    reg = NodeRegistry()
    for n in pop.node_ids:
        reg.set_profile(n, float(pop.sizes[pop.index[n]]), pop.histogram(n))
    nodes = sorted(pop.node_ids)
    sizes = reg.sizes(nodes)
    policy = make_policy(SelectionOptions(clients_per_round=m, sketch_dim=8,
                                          estimator=estimator))
    rng = np.random.default_rng(seed)
    for r in range(1, rounds + 1):
        draw = policy.plan(PopulationFrame(r, nodes, sizes, m, reg), np.random.default_rng([0, r]))
        chosen = [nodes[i] for i in draw.selection.ids]
        w = np.asarray(draw.selection.weights)
        policy.observe(Feedback(chosen, rng.normal(size=(m, 8)), w))
        if estimator == "difference":
            policy.observe_residuals(Feedback(chosen, residual_scale * rng.normal(size=(m, 8)),
                                              w))
        yield policy, draw, sizes / sizes.sum()


def test_fedavg_rounds_predict_the_difference_estimator_on_the_uniform_draw():
    """estimator="difference": a FedAvg round (updates look IID) draws uniformly with HT
    weights; its decision carries pred_var_uniform_difference, the SRSWOR HT variance of
    p_i e_i from the residual tracker. Residuals e_i ~ N(0, I_8) fresh each round: the
    expected MSE is N^2 (1 - m/N) / (m (N - 1)) * 8 sum p_i^2 (1 - 1/N); the prediction is
    within 25% of it with a band around it (seeded). The HT policy never sets it."""
    n_all, m = 40, 6
    for est in ("ht", "difference"):
        uniform = []
        played = list(noise_rounds(est, 30, alpha=0.05))
        p = played[-1][2]
        for _, draw, _ in played:
            d = draw.decision
            if d.mode == "fedavg" and d.evidence == "tracked":
                uniform.append(d.predicted_uniform_difference)
                assert ("pred_var_uniform_difference" in d.to_json()) == (
                    d.predicted_uniform_difference is not None)
        expect = (n_all**2 * (1 - m / n_all) / (m * (n_all - 1)) * 8 * float(p @ p)
                  * (1 - 1 / n_all))
        assert uniform, "never fell back to FedAvg"
        if est == "ht":
            assert all(u is None for u in uniform)
            continue
        # residuals as spread as the updates: the difference estimator on the uniform draw
        # (HT weights) is not below FedAvg, so the round is aggregated as FedAvg
        assert draw.estimator == "ratio" and "not below FedAvg" in draw.reason
        last = uniform[-1]
        assert last is not None
        assert last.lo < last.value < last.hi
        assert last.value == pytest.approx(expect, rel=0.25)


def test_fedavg_rounds_keep_the_difference_estimator_only_where_it_is_credibly_better():
    """estimator="difference" in FedAvg rounds: HT weights with controls while the difference
    estimator's 90% upper bound is below FedAvg's predicted MSE (residuals 10x smaller than the
    updates: good controls), FedAvg's ratio estimator otherwise (before evidence, and with
    residuals 3x larger than the updates: stale controls that hurt)."""
    for scale, kept in ((0.1, True), (3.0, False)):
        ests = [(draw.estimator, draw.decision.predicted_uniform_difference)
                for _, draw, _ in noise_rounds("difference", 24, alpha=1000.0,  # IID labels
                                               residual_scale=scale, seed=7)
                if draw.decision.mode == "fedavg"]
        assert ests, "never fell back to FedAvg"
        assert all(e == "ratio" for e, u in ests if u is None)  # no evidence: FedAvg
        late = [e for e, u in ests[-5:]]
        assert late == ([None] * 5 if kept else ["ratio"] * 5)
