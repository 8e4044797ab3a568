"""FedAvg's predicted MSE from size-weighted tracked moments: its within part exact with exact
moments where a client's dispersion grows with its size, about unbiased and covered by its 80%
band under the strategy's pps draws with forgetting, unchanged where sizes are equal (up to the
n - 1 correction), checkpointable."""

from __future__ import annotations

import numpy as np

from fedstrat.sampling import (
    Strata,
    StratifiedSampler,
    StratumVarianceTracker,
    predicted_variance,
)
from fedstrat.sampling.baseline import fedavg_from_strata, fedavg_variance
from fedstrat.sampling.fedavg_sized import fedavg_terms

N, H, DIM, M = 400, 8, 16, 40


def _federation(seed: int, size_sd: float = 1.0, scale_with_size: bool = True):
    """Lognormal sizes; update of client i = stratum mean + noise with std ~ sqrt(n_i) (more
    local steps, further moves) or constant."""
    rng = np.random.default_rng(seed)
    sizes = np.maximum(np.rint(np.exp(rng.normal(4.0, size_sd, N))), 5).astype(np.int64)
    labels = np.arange(N) % H
    centres = rng.normal(0.0, 0.5, (H, DIM))
    scale = np.sqrt(sizes / sizes.mean()) if scale_with_size else np.ones(N)
    updates = centres[labels] + scale[:, None] * rng.normal(0.0, 1.0, (N, DIM))
    return sizes, labels, updates


def _strata_inputs(sizes, labels):
    p = sizes / sizes.sum()
    masses = np.bincount(labels, weights=p, minlength=H)
    p2 = np.bincount(labels, weights=p * p, minlength=H)
    counts = np.bincount(labels, minlength=H).astype(np.float64)
    alloc = np.maximum(np.round(masses * M), 1).astype(np.int64)
    return p, masses, p2, counts, alloc


def test_exact_size_weighted_moments_give_the_exact_fedavg_variance():
    sizes, labels, upd = _federation(0)
    p, masses, p2, _, _ = _strata_inputs(sizes, labels)
    means = np.array([p[labels == h] @ upd[labels == h] / masses[h] for h in range(H)])
    var_p = np.array([p[labels == h] @ np.sum((upd[labels == h] - means[h]) ** 2, axis=1)
                      / masses[h] for h in range(H)])
    q2 = p * p
    means2 = np.array([q2[labels == h] @ upd[labels == h] / p2[h] for h in range(H)])
    var2 = np.array([q2[labels == h] @ np.sum((upd[labels == h] - means2[h]) ** 2, axis=1)
                     / p2[h] for h in range(H)])
    exact = fedavg_variance(upd, sizes, M)
    sized = {"means": means2, "variances": var2, "effective_counts": np.full(H, np.inf),
             "shift_noise": np.zeros(H)}
    w, b, _, _ = fedavg_terms(N, M, masses, p2, np.sqrt(var_p), means, None, sized)
    c = exact / float((p * p) @ np.sum((upd - p @ upd) ** 2, axis=1))
    within = sum(q2[labels == h] @ np.sum((upd[labels == h] - means[h]) ** 2, axis=1)
                 for h in range(H))
    assert abs(w.sum() / (c * within) - 1.0) < 1e-9  # p^2-weighted, about the p-weighted mean
    # between from the p-weighted means: exact but for the cross term 2 c p2_h (Dbar_(2),h -
    # Dbar_h)·(Dbar_h - T), here 15% (heavy clients dominate some strata's mass)
    new = (w.sum() + b.sum()) / exact
    cross = sum(2 * p2[h] * (means2[h] - means[h]) @ (means[h] - masses @ means)
                for h in range(H))
    assert abs(new + c * cross / exact - 1.0) < 1e-9
    # the p-weighted moments miss the size-dispersion correlation: further off (0.62x here)
    w0, b0 = fedavg_from_strata(N, M, masses, p2, np.sqrt(var_p), means)
    assert (w0.sum() + b0.sum()) / exact < 0.7 < new


def test_tracker_size_weighted_moments_are_the_weighted_welford_with_forgetting():
    rng = np.random.default_rng(1)
    tr = StratumVarianceTracker(2, 3)
    xs, ws, bs = [], [], []
    for _ in range(4):
        tr.decay(0.7)
        ws, bs = [w * 0.7 for w in ws], [b * 0.7 for b in bs]
        for _ in range(3):
            x, w, s = rng.normal(size=3), rng.uniform(0.5, 2), rng.uniform(1, 50)
            tr.update(0, x, w, size=s)
            xs.append(x)
            ws.append(w * s)
            bs.append(w)
        tr.update(1, rng.normal(size=3), 1.0)  # no size: not in the sized moments
    x, w = np.array(xs), np.array(ws)
    mean = w @ x / w.sum()
    neff = w.sum() ** 2 / (w * w).sum()
    var = w @ np.sum((x - mean) ** 2, axis=1) / w.sum()  # M2 / W: the tracker's convention
    got = tr.size_weighted()
    np.testing.assert_allclose(got["means"][0], mean, rtol=1e-12)
    np.testing.assert_allclose(got["variances"][0], var, rtol=1e-10)
    np.testing.assert_allclose(got["effective_counts"][0], neff, rtol=1e-12)
    # E||mean_sized - mean||^2 / sigma^2 for iid draws: sum (b_i - a_i)^2, normalised weights
    a, b = np.array(bs) / sum(bs), w / w.sum()
    np.testing.assert_allclose(got["shift_noise"][0], np.sum((b - a) ** 2), rtol=1e-9)
    assert np.isnan(got["variances"][1]) and got["effective_counts"][1] == 0.0
    back = StratumVarianceTracker.from_state(tr.to_json())
    np.testing.assert_allclose(back.size_weighted()["variances"][0], var, rtol=1e-10)
    old = {k: v for k, v in tr.state_dict().items() if not k.startswith("sw_")}
    assert np.isnan(StratumVarianceTracker.from_state(old).size_weighted()["variances"]).all()


def _replay(sizes, labels, upd, rng, rounds=9):
    """A tracker fed like the strategy's: ``rounds`` pps draws, decay 0.7 a round."""
    _, masses, _, _, alloc = _strata_inputs(sizes, labels)
    smp = StratifiedSampler(sizes, Strata(labels), alloc, "pps", seed=int(rng.integers(1 << 30)))
    tr = StratumVarianceTracker(H, DIM)
    for _ in range(rounds):
        sel = smp.sample(rng)
        tr.decay(0.7)
        for i, w in zip(sel.ids, sel.weights, strict=True):
            tr.update(int(labels[i]), upd[i], float(w), size=float(sizes[i]))
    return tr


def _predictions(tr, sizes, labels, sized):
    _, masses, p2, counts, alloc = _strata_inputs(sizes, labels)
    return predicted_variance(
        counts, masses, tr.stds(), alloc, "pps", means=tr.means(), m=M, p2=p2,
        mean_counts=tr.effective_counts(), sized=tr.size_weighted() if sized else None,
    ).fedavg_band


def test_band_covers_fedavg_where_dispersion_grows_with_size():
    """Seeded Monte Carlo, 150 replays: the size-weighted prediction is 0.8-1.1x the exact
    FedAvg variance on average (0.84 with this seed: the dropped cross term, forgetting and
    the ``M2 / W`` convention's ``1 - 1/n_eff``) and its 80% band covers it >= 70% of the
    time (73%); the p-weighted one is < 0.7x and covers < 30% (0.60x, 0 of 150 here; it
    covered 0 of 5 seeds on MovieLens)."""
    sizes, labels, upd = _federation(2)
    exact = fedavg_variance(upd, sizes, M)
    rng = np.random.default_rng(3)
    res = {True: [], False: []}
    for _ in range(150):
        tr = _replay(sizes, labels, upd, rng)
        for sized in (True, False):
            b = _predictions(tr, sizes, labels, sized)
            res[sized].append((b.value / exact, b.lo <= exact <= b.hi))
    new, old = np.array(res[True]), np.array(res[False])
    assert 0.8 < new[:, 0].mean() < 1.1 and new[:, 1].mean() >= 0.7
    assert old[:, 0].mean() < 0.7 and old[:, 1].mean() < 0.3


def test_equal_sizes_give_the_prediction_of_the_trackers_own_moments():
    """With equal sizes the size-weighted moments are the tracker's (same means, same
    ``M2 / W`` variances), so FedAvg's prediction is the one made without them."""
    sizes, labels, upd = _federation(4, scale_with_size=False)
    sizes = np.full(N, 50, dtype=np.int64)
    tr = _replay(sizes, labels, upd, np.random.default_rng(5))
    sw = tr.size_weighted()
    np.testing.assert_allclose(sw["means"][:H], tr.means()[:H], rtol=1e-9, atol=1e-12)
    neff = tr.effective_counts()
    seen = neff > 1.0
    np.testing.assert_allclose(sw["variances"][seen], tr.variances()[seen], rtol=1e-9)
    exact = fedavg_variance(upd, sizes, M)
    new = _predictions(tr, sizes, labels, True).value
    old = _predictions(tr, sizes, labels, False).value
    assert abs(new / old - 1.0) < 1e-9 and abs(new / exact - 1.0) < 0.25
