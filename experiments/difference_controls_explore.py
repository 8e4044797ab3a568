"""Exploratory: other control variates for the difference estimator (seed 0 only, not tuned).

    python experiments/difference_controls_explore.py dump 0 /tmp/upd-s0.npz      # ~30 rounds
    python experiments/difference_controls_explore.py explore 0 /tmp/upd-s0.npz

``dump`` stores every client's update at rounds 1..30 of the measurement trajectory of
``configs/mnist5k_dirichlet.toml`` (float32). ``explore`` replays ``stratified-difference`` with
(a) ``cv_decay = 0.9`` and (b) a global drift correction ``c_i = x_i + T̂(r-1) - T̂(t_i)``
(T̂ = the replay's estimate, uniform-weight approximation), and prints FedAvg / this (500
Monte Carlo draws) at rounds 10 and 30. Results in experiments/README.md section 3.

    python experiments/difference_controls_explore.py screen 0 /tmp/upd-s0.npz

``screen`` replays ``stratified-difference`` (label-histogram strata, stratum-mean fill, Neyman
on the exact residual dispersion) with and without each part of
``stratified-difference-learned``: the learnt age-bucket coefficient (``shrink``) and the
residual pps size measure (``size``), and prints FedAvg's LINEARISED MSE / the design's
Hansen-Hurwitz variance (no Monte Carlo; the linearised FedAvg MSE is ~1.1x the measured one)
at rounds 10, 20 and 30.
"""

from __future__ import annotations

import dataclasses
import sys
import time

import numpy as np


def dump(seed: int, path: str) -> None:
    from fedstrat.app.config import RunConfig
    from fedstrat.measure import compute_client_updates

    cfg = RunConfig.from_toml("experiments/configs/mnist5k_dirichlet.toml")
    cfg = dataclasses.replace(cfg, seed=seed).validate()
    ups: dict[int, np.ndarray] = {}

    def hook(r: int, u: np.ndarray, res: dict) -> None:
        ups[r] = u.astype(np.float32)

    res = compute_client_updates(cfg, [30], on_updates=hook)
    np.savez(path, updates=np.stack([ups[r] for r in sorted(ups)]), sizes=res["sizes"],
             hist=res["histograms"])


def explore(seed: int, path: str) -> None:
    from fedstrat.measure import Population, measure_population
    from fedstrat.measure.controls import ControlTrajectory

    d = np.load(path)
    upd_all, sizes, hist = d["updates"].astype(np.float64), d["sizes"], d["hist"]
    n_rounds, n, _ = upd_all.shape
    m = 10
    p = sizes / sizes.sum()

    class Variant(ControlTrajectory):
        def __init__(self, name: str, mode: str, **kw: object) -> None:
            super().__init__(name, sizes, m, hist, seed=seed, **kw)
            self.mode, self.that = mode, {}

        def controls(self, r: int) -> np.ndarray:
            c = super().controls(r)
            if self.mode == "base" or self.memory is None or r - 1 not in self.that:
                return c
            out = c.copy()
            for i in np.flatnonzero(self.last_round > 0):
                out[i] = self.memory[i] + self.that[r - 1] - self.that[self.last_round[i]]
            return out

        def observe(self, r: int, upd: np.ndarray) -> np.ndarray:
            c = self.controls(r)
            ids = super().observe(r, upd)
            self.that[r] = p @ c + (n / m) * (p[ids] @ (upd[ids] - c[ids]))
            return ids

    name = "stratified-difference"
    for mode, kw in [("gdrift", {}), ("base", {"decay": 0.9})]:
        t0 = time.time()
        v = Variant(name, mode, n_strata=0, **kw)
        res = []
        for r in range(1, n_rounds + 1):
            if r in (10, 30):
                pop = Population(upd_all[r - 1], sizes)
                st = {s.selection: s for s in measure_population(
                    pop, m, hist, selections=["fedavg", name], controls={name: v.controls(r)},
                    n_samples=500, seed=seed)}
                res.append(f"r{r}: {st['fedavg'].measured / st[name].measured:.2f}")
            if r < n_rounds:
                v.observe(r, upd_all[r - 1])
        print(name, mode, kw, " ".join(res), f"{time.time() - t0:.0f}s", flush=True)


def screen(seed: int, path: str) -> None:
    from fedstrat import sampling as S
    from fedstrat.measure.samplers import plan_strata_from_histograms
    from fedstrat.sampling.difference import (
        ResidualPPSSampler,
        StaleControlModel,
        fill_controls,
        residual_pps_allocation,
        residual_pps_variance,
    )

    d = np.load(path)
    upd_all, sizes, hist = d["updates"], d["sizes"], d["hist"]
    n_rounds, n, _ = upd_all.shape
    m, isz = 10, np.rint(sizes).astype(np.int64)
    p = isz / isz.sum()
    labels = plan_strata_from_histograms(hist, sizes, m, "auto", 0, seed, {})
    for shrink, size in ((False, False), (True, False), (False, True), (True, True)):
        t0, model = time.time(), StaleControlModel()
        mem, last, out = np.zeros(upd_all.shape[1:]), np.zeros(n, np.int64), []
        for r in range(1, n_rounds + 1):
            u = upd_all[r - 1].astype(np.float64)
            known = last > 0
            ages = np.where(known, r - last, 0)
            b = model.coefficients(ages) if shrink else np.ones(n)
            c = fill_controls(mem * np.where(known, b, 0.0)[:, None], known, labels, "stratum")
            z = p * (model.residual_scale(ages, np.sqrt((mem * mem).sum(axis=1))) if size
                     else 1.0)
            resid = u - c
            alloc = residual_pps_allocation(resid, isz, labels, z, m)
            if r in (10, 20, 30):
                v = residual_pps_variance(resid, isz, labels, alloc, z)
                out.append(f"r{r}: {float(S.fedavg_variance(u, isz, m)) / v:.2f}")
            ids = ResidualPPSSampler(isz, labels, alloc, z).sample(
                np.random.default_rng([seed, r])).ids
            model.observe(ages[ids], u[ids], mem[ids], resid[ids], p[ids])
            mem[ids], last[ids] = u[ids], r
        print(f"seed {seed} shrink={shrink} size={size}:", " ".join(out),
              f"{time.time() - t0:.0f}s", flush=True)


if __name__ == "__main__":
    {"dump": dump, "explore": explore, "screen": screen}[sys.argv[1]](int(sys.argv[2]), sys.argv[3])
