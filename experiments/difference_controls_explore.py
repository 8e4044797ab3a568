"""Exploratory: other control variates for the difference estimator (seed 0 only, not tuned).

    python experiments/difference_controls_explore.py dump 0 /tmp/upd-s0.npz      # ~30 rounds
    python experiments/difference_controls_explore.py explore 0 /tmp/upd-s0.npz

``dump`` stores every client's update at rounds 1..30 of the measurement trajectory of
``configs/mnist5k_dirichlet.toml`` (float32). ``explore`` replays ``stratified-difference`` with
(a) ``cv_decay = 0.9`` and (b) a global drift correction ``c_i = x_i + T̂(r-1) - T̂(t_i)``
(T̂ = the replay's estimate, uniform-weight approximation), and prints FedAvg / this (500
Monte Carlo draws) at rounds 10 and 30. Results in experiments/README.md section 3.
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


if __name__ == "__main__":
    {"dump": dump, "explore": explore}[sys.argv[1]](int(sys.argv[2]), sys.argv[3])
