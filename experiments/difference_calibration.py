r"""Calibration of the strategy's predicted MSE of the difference estimator: estimators of the
residual dispersion compared on recorded replays (a diagnostic; nothing here is used by fedstrat).

    python experiments/difference_calibration.py \
        --config experiments/configs/mnist5k_dirichlet.toml --seeds 0,1,2 --last 30

(~30 s of CPU per seed for 30 rounds.) Records, along ``stratified-difference-learned``
(:class:`fedstrat.measure.strategy_replay.DifferenceReplay`: the strategy's policy and control
memory replayed on the measurement's trajectory), every round ``r``: the round's size measure
:math:`z_j = p_j \hat s_j`, the sketches of the scaled residuals :math:`v_j = (\Delta_j - c_j) /
\hat s_j` of EVERY node, what the residual tracker was fed (the drawn :math:`v_i` with weights
:math:`w_i \hat s_i / Z_h`), the allocation, the in-run prediction and the exact Hansen-Hurwitz
variance of the design drawn (:func:`fedstrat.sampling.difference.residual_pps_variance`).
With :math:`q_j = z_j / Z_h` inside stratum h and one draw (:math:`m_h = 1`), the design
variance of the stratum is :math:`Z_h^2 \sigma'^2_h` with

.. math:: \sigma'^2_h = \sum_j q_j \|v_j - \bar v_h\|^2 = D_h - C_h, \quad
    D_h = \sum_j q_j (1 - q_j) \|v_j\|^2, \quad C_h = \sum_{j \ne k} q_j q_k \langle v_j, v_k
    \rangle .

Every estimator predicts round r's :math:`\sum_h Z_h(r)^2 \hat\sigma'^2_h / m_h` from rounds
< r, each round weighted by 0.7 to the power of its age (the strategy's ``ROUND_DECAY``):

- ``tracked``: the strategy's :class:`~fedstrat.sampling.StratumVarianceTracker` (weighted
  Welford about its running mean; reproduces the in-run prediction, printed first);
- ``oracle-dispersion`` / ``oracle-D`` / ``oracle-m2``: the EXACT :math:`\sigma'^2_h`, :math:`D_h`
  or second moment :math:`\sum_j q_j \|v_j\|^2` of the past rounds (what perfect knowledge of
  the past gives; ``oracle-dispersion`` is the ceiling of any estimator built from past rounds);
- ``diagonal``: :math:`(1 - q_i)\|v_i\|^2` of each draw, exactly unbiased for :math:`D_h` of its
  round (no stratum mean needed; biased up by :math:`C_h`);
- ``diagonal-cross``: ``diagonal`` minus :math:`\hat C_h`, the mean of the products
  :math:`\langle v_i(t), v_k(t - 1)\rangle` of draws of the stratum in consecutive rounds from
  different nodes, the later one with its own stored control (a model: the stratum's common
  residual direction persists one round).

Prints, per range of rounds, how often prediction / exact is within a factor 1.5, its median,
range and mean absolute log, and the per-seed ratios of every round.
"""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np

DECAY = 0.7


def record(cfg, last: int) -> dict[int, dict]:
    """Replay rounds 1..``last`` of ``stratified-difference-learned`` and record each round."""
    from fedstrat.measure import measure_variance
    from fedstrat.measure.strategy_replay import DifferenceReplay
    from fedstrat.sampling import sketch_update
    from fedstrat.sampling.difference import residual_pps_variance

    recs: dict[int, dict] = {}

    class Recorder(DifferenceReplay):
        def _measure(self, r, *args):  # noqa: ANN001, ANN002, ANN202
            resid, sizes, draw = args[-3:]  # (round, [updates,] residuals, sizes, draw)
            pol, o, d, sp = self.policy, self.options, draw.decision, draw.strata
            p = sizes / sizes.sum()
            s = np.array([pol.residual.scale.get(int(n), 1.0) for n in self.nodes])
            where = pol.stratifier.node_stratum_
            rec = {"z": p * s, "lab": np.array([where.get(int(n), -1) for n in self.nodes]),
                   "idx": {int(n): k for k, n in enumerate(self.nodes)},
                   "v": sketch_update(resid, o.sketch_dim, o.sketch_seed,
                                      method=o.sketch_method) / s[:, None],
                   "stratified": bool(d is not None and d.mode == "stratified" and sp is not None
                                      and sp.basis == "residuals")}
            if rec["stratified"]:
                rec["alloc"] = np.zeros(pol.residual.tracker.n_strata)
                rec["alloc"][sp.present] = sp.allocation
                rec["exact"] = residual_pps_variance(resid, sizes, sp.strata.labels,
                                                     sp.allocation, p * s)
                rec["pred"] = d.predicted.value
            rt = pol.residual.tracker
            rec["H"] = rt.n_strata if rt is not None else int(rec["lab"].max()) + 1
            recs[r] = rec

    hook = Recorder(cfg, list(range(1, last + 1)), 10)
    observe = hook.policy.observe_residuals

    def capture(fb):  # noqa: ANN001, ANN202
        pol = hook.policy
        fed = pol.residual.scaled(fb, pol.stratifier.node_stratum_)
        recs[max(recs)]["fed"] = (list(fed.nodes), np.asarray(fed.sketches, np.float64),
                                  np.asarray(fed.weights, np.float64))
        observe(fb)

    hook.policy.observe_residuals = capture
    measure_variance(cfg, [last], selections=["fedavg"], n_samples=10, on_updates=hook)
    return recs


def exact(rec: dict, n_strata: int) -> dict[str, np.ndarray]:
    """``Z_h``, and the exact dispersion, ``D_h`` and second moment of ``v`` per stratum."""
    z, lab, v = rec["z"], rec["lab"], rec["v"]
    zh = np.bincount(lab[lab >= 0], weights=z[lab >= 0], minlength=n_strata)
    out = {k: np.zeros(n_strata) for k in ("dispersion", "D", "m2")}
    for h in range(n_strata):
        mem = lab == h
        if not mem.any():
            continue
        q, vv = z[mem] / zh[h], v[mem]
        sq = np.sum(vv * vv, axis=1)
        mean = q @ vv
        out["m2"][h] = q @ sq
        out["D"][h] = q @ ((1 - q) * sq)
        out["dispersion"][h] = out["m2"][h] - mean @ mean
    out["Z"] = zh
    return out


def predict(recs: dict[int, dict], n_strata: int, name: str) -> dict[int, float]:
    """``{r: predicted MSE}`` of estimator ``name`` (module doc) at the stratified rounds."""
    from fedstrat.sampling import StratumVarianceTracker

    dim = next(iter(recs.values()))["v"].shape[1]
    tracker = StratumVarianceTracker(n_strata, dim)
    num, den = np.zeros(n_strata), np.zeros(n_strata)  # EWMA of the per-draw statistic
    cnum, cden = np.zeros(n_strata), np.zeros(n_strata)  # EWMA of lag-1 cross products
    prev: dict[int, list] = {}
    drawn: set[int] = set()
    out = {}
    for r in sorted(recs):
        rec = recs[r]
        ex = exact(rec, n_strata)
        if rec["stratified"] and r > 2:
            if name == "tracked":
                s2 = tracker.stds() ** 2
            elif name.startswith("oracle-"):
                past = [t for t in sorted(recs) if 2 <= t < r]
                w = np.array([DECAY ** (r - 1 - t) for t in past])
                s2 = w @ np.array([exact(recs[t], n_strata)[name[7:]] for t in past]) / w.sum()
            else:
                s2 = num / np.maximum(den, 1e-300)
                if name == "diagonal-cross":
                    s2 = np.maximum(s2 - np.where(cden > 0, cnum / np.maximum(cden, 1e-300), 0),
                                    0.0)
            alloc = rec["alloc"]
            out[r] = float(np.sum(np.where(alloc > 0, ex["Z"] ** 2 * s2 / np.maximum(alloc, 1),
                                           0.0)))
        nodes, sk, wts = rec["fed"]
        tracker.decay(DECAY)
        num *= DECAY
        den *= DECAY
        cnum *= DECAY
        cden *= DECAY
        cur: dict[int, list] = {}
        for k, node in enumerate(nodes):
            h = int(rec["lab"][rec["idx"][node]])
            if h < 0 or wts[k] <= 0:
                continue
            tracker.update(h, sk[k], wts[k])
            q = rec["z"][rec["idx"][node]] / ex["Z"][h]
            num[h] += wts[k] * (1 - q) * float(sk[k] @ sk[k])
            den[h] += wts[k]
            if node in drawn and r >= 3:
                for other, vo, wo in prev.get(h, []):
                    if other != node:
                        cnum[h] += wts[k] * wo * float(sk[k] @ vo)
                        cden[h] += wts[k] * wo
            cur.setdefault(h, []).append((node, sk[k], wts[k]))
        prev = cur
        drawn |= set(nodes)
    return out


def summary(ratios: list[float]) -> str:
    q = np.asarray(ratios)
    ok = int(np.sum((q <= 1.5) & (q >= 1 / 1.5)))
    return (f"within 1.5x {ok}/{len(q)}, median {np.median(q):.2f}, range {q.min():.2f}-"
            f"{q.max():.2f}, mean |log| {np.mean(np.abs(np.log(q))):.3f}")


ESTIMATORS = ["tracked", "oracle-dispersion", "oracle-D", "oracle-m2", "diagonal",
              "diagonal-cross"]


def main() -> None:
    from fedstrat.app.config import RunConfig

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--last", type=int, default=30, help="last round replayed")
    ap.add_argument("--ranges", default="5-12,13-30", help="round ranges summarised")
    a = ap.parse_args()
    cfg = RunConfig.from_toml(a.config)
    ranges = [tuple(int(x) for x in s.split("-")) for s in a.ranges.split(",")]
    ratios: dict[str, dict[int, dict[int, float]]] = {e: {} for e in ESTIMATORS}
    check: list[float] = []
    for seed in [int(x) for x in a.seeds.split(",")]:
        recs = record(dataclasses.replace(cfg, seed=seed).validate(), a.last)
        n_strata = max(rec["H"] for rec in recs.values())
        for e in ESTIMATORS:
            pred = predict(recs, n_strata, e)
            ratios[e][seed] = {r: p / recs[r]["exact"] for r, p in pred.items()}
            if e == "tracked":
                check += [p / recs[r]["pred"] for r, p in pred.items()]
    print(f"tracked replay / in-run prediction: {min(check):.4f}-{max(check):.4f}")

    def pick(d: dict[int, float], lo: int, hi: int) -> list[float]:
        return [v for r, v in sorted(d.items()) if lo <= r <= hi]

    for lo, hi in ranges:
        print(f"\nrounds {lo}-{hi}, prediction / exact HH of the design drawn:")
        for e in ESTIMATORS:
            allr = [x for d in ratios[e].values() for x in pick(d, lo, hi)]
            print(f"  {e:18s} {summary(allr)}")
    print("\nper seed, rounds 5.. (prediction / exact):")
    for e in ESTIMATORS:
        for seed, d in ratios[e].items():
            print(f"  {e:18s} seed {seed}: " + " ".join(f"{r}:{v:.2f}" for r, v in sorted(d.items())
                                                      if r >= 5))


if __name__ == "__main__":
    main()
