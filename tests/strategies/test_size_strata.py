"""Size strata: the stratified policy's second candidate, chosen on tracked evidence only."""

from __future__ import annotations

import numpy as np
import pytest
from strathelpers import make_population
from test_strat_decision import iid_noise, profiled, run_rounds

from fedstrat.sampling import StratifiedSampler, UniformSampler
from fedstrat.strategies import SelectionOptions, make_policy
from fedstrat.strategies.balanced_draw import fedavg_selection
from fedstrat.strategies.plan import Feedback, PopulationFrame
from fedstrat.strategies.size_strata import equal_mass_thresholds


def test_equal_mass_bins_hold_one_over_h_of_the_mass_within_the_largest_client():
    rng = np.random.default_rng(0)
    sizes = rng.lognormal(3.0, 1.0, size=300)
    p_max = sizes.max() / sizes.sum()
    for h in (2, 5, 10, 20):
        t = equal_mass_thresholds(sizes, h)
        bins = np.searchsorted(t, sizes, side="right")
        mass = np.bincount(bins, weights=sizes) / sizes.sum()
        assert len(mass) == h
        assert np.all(np.abs(mass - 1.0 / h) <= p_max + 1e-12)
        order = np.argsort(sizes)  # bins are contiguous in size
        assert np.all(np.diff(bins[order]) >= 0)


def test_equal_sizes_share_a_bin_and_a_dominant_client_gets_its_own():
    sizes = np.array([5.0] * 30 + [7.0] * 30 + [400.0])
    t = equal_mass_thresholds(sizes, 6)
    bins = np.searchsorted(t, sizes, side="right")
    for v in (5.0, 7.0, 400.0):
        assert len(set(bins[sizes == v].tolist())) == 1
    assert (bins == bins[-1]).sum() == 1


def grows_with_size(pop):
    """Updates along one direction, their length growing with the client's size."""
    def sketch_of(node, stratum, rng):
        v = np.zeros(8)
        v[0] = pop.sizes[pop.index[node]] / 50.0
        return v + 0.05 * rng.normal(size=8)
    return sketch_of


def mse(sampler, updates, p, rng, draws=3000, fedavg=False):
    target = p @ updates
    out = 0.0
    for _ in range(draws):
        sel = sampler.sample(rng)
        if fedavg:
            sel = fedavg_selection(sel, p)
        out += float(np.sum((sel.weights @ updates[sel.ids] - target) ** 2))
    return out / draws


def test_iid_labels_with_updates_growing_with_size_switch_to_size_strata_and_beat_fedavg():
    pop = make_population(n=60, classes=4, dim=6, alpha=1000.0, seed=5)  # IID labels
    sketch_of = grows_with_size(pop)
    policy, draws = run_rounds(pop, sketch_of, rounds=14, m=8)
    assert draws[0].decision.mode == "fedavg"  # labels pass the homogeneity test
    late = draws[-1]
    assert late.decision.mode == "stratified" and late.decision.evidence == "tracked"
    assert "size strata" in late.decision.reason and late.design == "pps"
    # the design it drew has a much lower MSE than FedAvg's (seeded Monte Carlo, 3,000 draws;
    # noise-free updates of the same shape)
    nodes = sorted(pop.node_ids)
    sizes = np.array([pop.sizes[pop.index[n]] for n in nodes], dtype=np.float64)
    updates = np.zeros((len(nodes), 8))
    updates[:, 0] = sizes / 50.0
    p = sizes / sizes.sum()
    sp = late.strata
    stratified = StratifiedSampler(sizes, sp.strata, sp.allocation, "pps", seed=0)
    rng = np.random.default_rng(11)
    ms = mse(stratified, updates, p, rng)
    mf = mse(UniformSampler(sizes, 8, seed=0), updates, p, rng, fedavg=True)
    assert ms < 0.5 * mf
    # and its own prediction says so too (tracked, with a band)
    d = late.decision
    assert d.predicted is not None and d.predicted_fedavg is not None
    assert d.predicted.value < d.predicted_fedavg.value


def test_on_noise_only_size_strata_can_win_and_only_where_they_beat_fedavg():
    # noise unrelated to size or labels: no label strata; size strata only when credible, and
    # then truly below FedAvg (homoscedastic noise, sizes that vary: FedAvg's c sum p_i^2
    # sigma^2 is above pps's sigma^2 / m; seeded Monte Carlo, 3,000 draws)
    pop = make_population(n=40, classes=4, dim=6, alpha=1000.0, seed=3)
    _, draws = run_rounds(pop, iid_noise, rounds=12)
    nodes = sorted(pop.node_ids)
    sizes = np.array([pop.sizes[pop.index[n]] for n in nodes], dtype=np.float64)
    p = sizes / sizes.sum()
    rng = np.random.default_rng(13)
    updates = rng.normal(size=(len(nodes), 8))
    mf = mse(UniformSampler(sizes, 6, seed=0), updates, p, rng, fedavg=True)
    for d in draws[1:]:
        assert d.design == "fedavg" or "size strata" in d.decision.reason
        if d.design != "fedavg":
            sp = d.strata
            smp = StratifiedSampler(sizes, sp.strata, sp.allocation, "pps", seed=0)
            assert mse(smp, updates, p, rng) < mf


def test_label_strata_keep_winning_on_label_skew():

    # updates that follow the label strata: the label strata predict lower, they stay
    def by_stratum(node, stratum, rng):
        v = np.zeros(8)
        v[stratum % 8] = 10.0
        return v + 0.1 * rng.normal(size=8)

    pop = make_population(n=40, classes=3, dim=6, alpha=0.05, seed=9)
    _, draws = run_rounds(pop, by_stratum, rounds=12)
    assert all(d.decision.mode == "stratified" for d in draws)
    assert not any("size strata" in d.decision.reason for d in draws)


def test_size_strata_resume_from_state_dict_draws_the_same():
    pop = make_population(n=60, classes=4, dim=6, alpha=1000.0, seed=5)
    sketch_of = grows_with_size(pop)
    policy, _ = run_rounds(pop, sketch_of, rounds=10, m=8)
    state = policy.state_dict()
    assert "size_strata" in state and state["mode"] == "stratified"
    resumed = make_policy(SelectionOptions(clients_per_round=8, sketch_dim=8))
    resumed.load_state_dict(state)
    reg = profiled(pop)
    nodes = sorted(pop.node_ids)
    rng_a, rng_b = np.random.default_rng(1), np.random.default_rng(1)
    for r in (11, 12, 13):
        frame = PopulationFrame(r, nodes, reg.sizes(nodes), 8, reg)
        a = policy.plan(frame, np.random.default_rng([0, r]))
        b = resumed.plan(frame, np.random.default_rng([0, r]))
        assert a.reason == b.reason and np.array_equal(a.selection.ids, b.selection.ids)
        assert np.array_equal(a.selection.weights, b.selection.weights)
        chosen = [nodes[i] for i in a.selection.ids]
        sk_a = np.array([sketch_of(n, 0, rng_a) for n in chosen])
        sk_b = np.array([sketch_of(n, 0, rng_b) for n in chosen])
        policy.observe(Feedback(chosen, sk_a, np.asarray(a.selection.weights)))
        resumed.observe(Feedback(chosen, sk_b, np.asarray(b.selection.weights)))


def test_equal_sizes_or_a_chosen_number_of_strata_leave_size_strata_out():
    pop = make_population(n=40, classes=4, dim=6, alpha=1000.0, seed=3)
    pop.sizes[:] = 100
    _, draws = run_rounds(pop, grows_with_size(pop), rounds=8)
    assert not any("size strata" in d.decision.reason for d in draws)
    pop = make_population(n=60, classes=4, dim=6, alpha=1000.0, seed=5)
    _, draws = run_rounds(pop, grows_with_size(pop), rounds=12, m=8, n_strata=3)
    assert not any("size strata" in d.decision.reason for d in draws if d.decision)


def test_size_strata_off_leaves_them_out_and_the_option_is_checked():
    pop = make_population(n=60, classes=4, dim=6, alpha=1000.0, seed=5)
    _, draws = run_rounds(pop, grows_with_size(pop), rounds=14, m=8, size_strata=False)
    assert all(d.design == "fedavg" for d in draws)  # IID labels, no second candidate
    with pytest.raises(ValueError, match="size_strata"):
        SelectionOptions(clients_per_round=8, size_strata="yes")


def spread_with_size(pop, power):
    """Isotropic noise (zero mean in every bin) whose std is ``size ** power``."""
    def sketch_of(node, stratum, rng):
        return (pop.sizes[pop.index[node]] / 100.0) ** power * rng.normal(size=8)
    return sketch_of


def test_spread_growing_with_size_is_credible_from_the_pooled_trend_and_the_design_beats_fedavg():
    pop = make_population(n=60, classes=4, dim=6, alpha=1000.0, seed=5)  # IID labels
    _, draws = run_rounds(pop, spread_with_size(pop, 1.0), rounds=12, m=8)
    trend = [d for d in draws if d.decision and "size trend" in d.decision.reason]
    assert trend and trend[-1].decision.mode == "stratified"
    late = trend[-1]
    # exact check on noise of that shape: pps in the drawn bins vs FedAvg (seeded Monte
    # Carlo, 3,000 draws each; Gaussian updates of std n/100 about a common mean)
    nodes = sorted(pop.node_ids)
    sizes = np.array([pop.sizes[pop.index[n]] for n in nodes], dtype=np.float64)
    rng = np.random.default_rng(12)
    updates = (sizes / 100.0)[:, None] * rng.normal(size=(len(nodes), 8))
    updates -= (sizes / sizes.sum()) @ updates
    p = sizes / sizes.sum()
    sp = late.strata
    ms = mse(StratifiedSampler(sizes, sp.strata, sp.allocation, "pps", seed=0), updates, p, rng)
    mf = mse(UniformSampler(sizes, 8, seed=0), updates, p, rng, fedavg=True)
    assert ms < 0.8 * mf


def test_spread_shrinking_fast_with_size_never_gives_size_strata():
    # d_i ~ n_i^-3: FedAvg's p_i^2 d_i favour the large clients' small spread; pps is worse
    pop = make_population(n=60, classes=4, dim=6, alpha=1000.0, seed=5)
    _, draws = run_rounds(pop, spread_with_size(pop, -1.5), rounds=14, m=8)
    assert all(d.design == "fedavg" for d in draws)



def labels_and_size(pop):
    """Updates that follow the label strata (3 along the stratum's axis) plus isotropic noise
    whose std grows with the client's size (size / 30)."""
    def sketch_of(node, stratum, rng):
        v = np.zeros(8)
        v[stratum % 8] = 3.0
        return v + (pop.sizes[pop.index[node]] / 30.0) * rng.normal(size=8)
    return sketch_of


def test_label_strata_chosen_by_the_proxy_are_not_displaced_before_they_are_tracked():
    # updates that follow the label strata, with noise growing with size: the size trend is
    # credible early; the label strata (chosen by the histogram proxy) keep the draw until
    # their own tracker has MIN_TRACKED updates in every stratum (drawn by size, some label
    # strata would never get them); only then may tracked size strata win
    from fedstrat.strategies.stratified_policy import MIN_TRACKED

    pop = make_population(n=60, classes=6, dim=6, alpha=0.05, seed=1)
    _, draws = run_rounds(pop, labels_and_size(pop), rounds=10, m=8)
    assert draws[0].decision.evidence == "proxy" and draws[0].decision.mode == "stratified"
    size_rounds = [r for r, d in enumerate(draws, 1) if "size strata" in d.decision.reason]
    assert size_rounds  # the size trend does win here, once the label strata are tracked
    before, _ = run_rounds(pop, labels_and_size(pop), rounds=size_rounds[0] - 1, m=8)
    tracker = before.stratifier.tracker_
    present = np.unique(list(before.stratifier.node_stratum_.values()))
    assert tracker.counts()[present].min() >= MIN_TRACKED


def test_tracked_label_strata_give_way_to_size_strata_with_the_evidence_size_strata_need():
    # label component plus noise growing with size: once the label strata are tracked, size
    # strata with the size trend's evidence (1 update a bin, as they need to be drawn at
    # all) take over at once, not after MIN_TRACKED updates in every bin; and their design is
    # truly the better one (seeded Monte Carlo on one realisation of the updates, 3,000 draws)
    from fedstrat.strategies.stratified_policy import MIN_TRACKED

    pop = make_population(n=60, classes=6, dim=6, alpha=0.05, seed=0)
    sketch_of = labels_and_size(pop)
    policy, draws = run_rounds(pop, sketch_of, rounds=6, m=8)
    first = next(r for r, d in enumerate(draws) if "size strata" in d.decision.reason)
    assert draws[first - 1].decision.mode == "stratified"  # label strata until then
    earlier, _ = run_rounds(pop, sketch_of, rounds=first, m=8)  # the state before `first`
    tracker = earlier.stratifier.tracker_
    present = np.unique(list(earlier.stratifier.node_stratum_.values()))
    assert tracker.counts()[present].min() >= MIN_TRACKED  # the label strata were tracked
    n_min = int(draws[first].decision.reason.split("tracked (")[1].split("+")[0])
    assert n_min < MIN_TRACKED  # the previous rule waited for MIN_TRACKED in every bin
    nodes = sorted(pop.node_ids)
    sizes = np.array([pop.sizes[pop.index[n]] for n in nodes], dtype=np.float64)
    where = policy.stratifier.node_stratum_
    rng = np.random.default_rng(21)
    updates = np.array([sketch_of(n, where[n], rng) for n in nodes])
    p = sizes / sizes.sum()
    by_size, by_label = draws[first].strata, draws[first - 1].strata
    ms = mse(StratifiedSampler(sizes, by_size.strata, by_size.allocation, "pps", seed=0),
             updates, p, rng)
    ml = mse(StratifiedSampler(sizes, by_label.strata, by_label.allocation, "pps", seed=0),
             updates, p, rng)
    assert ms < 0.9 * ml


def test_size_plan_is_ruled_out_exactly_when_its_predicted_mse_is_not_below_the_bar():
    # the policy asks for the size plan with the tracked label strata's predicted MSE as a
    # bar (size strata win only below it): at or above the bar no plan, below it the same
    # plan as without a bar
    from fedstrat.strategies.stratified_policy import BAND_LEVEL, MIN_TRACKED

    pop = make_population(n=60, classes=6, dim=6, alpha=0.05, seed=0)
    policy, _ = run_rounds(pop, labels_and_size(pop), rounds=8, m=8)
    reg = profiled(pop)
    nodes = sorted(pop.node_ids)
    frame = PopulationFrame(9, nodes, reg.sizes(nodes), 8, reg)
    size = policy.size_strata
    full = size.plan(frame, False, MIN_TRACKED, BAND_LEVEL)
    assert full is not None
    v = full.prediction.stratified
    assert size.plan(frame, False, MIN_TRACKED, BAND_LEVEL, below=v) is None
    assert size.plan(frame, False, MIN_TRACKED, BAND_LEVEL, below=0.5 * v) is None
    kept = size.plan(frame, False, MIN_TRACKED, BAND_LEVEL, below=np.nextafter(v, np.inf))
    assert kept is not None and kept.prediction == full.prediction
    assert np.array_equal(kept.allocation, full.allocation)
