r"""Realistic control variates for the measured difference estimator.

A :class:`ControlTrajectory` replays, along the measurement's full-participation trajectory,
which clients the design would have drawn in each round (``default_rng([seed, round])``, the
strategy's per-round generator) and keeps each client's EXACT update of the last round it was
drawn: at round r the control of client i is

.. math:: c_i = \beta^{\,r - t_i} \Delta_i^{(t_i)}

(:math:`t_i` the last round < r at which i trained, :math:`\beta` = ``decay``), and a client
never drawn gets 0 (``fill="zero"``) or the plain mean of the drawn clients' controls of its
label stratum (``fill="stratum"``, :func:`fedstrat.sampling.difference.fill_controls`). The
controls of round r depend only on rounds before r, so the estimator stays unbiased; the
measured MSE at round r is that of a real run with these stale controls (given one replayed
history of draws).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .samplers import MEASURED, build_samplers


class ControlTrajectory:
    """Per-client memory of the last drawn update under one difference selection's design.

    Call :meth:`controls` (round r) before :meth:`observe` (round r, all clients' updates):
    ``observe`` draws round r's sample with the residuals ``Delta - controls(r)`` (the
    stratified design allocates by their dispersion) and stores the drawn clients' updates.
    """

    def __init__(
        self,
        name: str,
        sizes: np.ndarray,
        m: int,
        histograms: np.ndarray | None,
        *,
        seed: int = 0,
        design: str = "auto",
        n_strata: int = 0,
        fill: str = "stratum",
        decay: float = 1.0,
    ) -> None:
        if MEASURED.get(name, ("", {}))[1].get("estimator") != "difference":
            raise ValueError(f"{name!r} is not a difference selection")
        if fill not in ("zero", "stratum"):
            raise ValueError(f"fill must be 'zero' or 'stratum', got {fill!r}")
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"decay must be in [0, 1], got {decay}")
        self.name = name
        self.sizes = np.asarray(sizes, dtype=np.float64)
        self.m = int(m)
        self.histograms = histograms
        self.seed = int(seed)
        self.design = design
        self.n_strata = int(n_strata)
        self.fill = fill
        self.decay = float(decay)
        self.last_round = np.zeros(len(self.sizes), dtype=np.int64)  # 0 = never drawn
        self.memory: np.ndarray | None = None
        self.plan_cache: dict[str, Any] = {}
        self.labels = self._fill_labels()

    def _fill_labels(self) -> np.ndarray | None:
        """Label-histogram strata for the fill (the ones stratified selection uses; None when
        there are no histograms or ``choose_design`` keeps uniform)."""
        if self.histograms is None or self.fill != "stratum":
            return None
        from .samplers import plan_strata_from_histograms

        return plan_strata_from_histograms(
            self.histograms, self.sizes, self.m, self.design, self.n_strata, self.seed,
            self.plan_cache,
        )

    def controls(self, round_: int) -> np.ndarray:
        """``(N, D)`` controls of round ``round_`` (zeros of width 1 before any update)."""
        n = len(self.sizes)
        if self.memory is None:
            return np.zeros((n, 1))
        known = self.last_round > 0
        age = np.where(known, round_ - self.last_round, 0)
        c = self.memory * (self.decay ** age)[:, None] if self.decay != 1.0 else self.memory
        from fedstrat.sampling.difference import fill_controls

        return fill_controls(c, known, self.labels, self.fill)

    def observe(self, round_: int, updates: np.ndarray) -> np.ndarray:
        """Draw round ``round_``'s sample (residual design) and remember the drawn clients'
        updates; returns the drawn client ids."""
        from .variance import Population

        upd = np.asarray(updates, dtype=np.float64)
        if self.memory is None:
            self.memory = np.zeros_like(upd)
        resid = Population(upd - self.controls(round_), self.sizes)
        smp = build_samplers(
            resid, self.m, self.histograms, selections=[self.name], design=self.design,
            n_strata=self.n_strata, seed=self.seed, plan_cache=self.plan_cache,
        )[self.name][0]
        sel = smp.sample(np.random.default_rng([self.seed, round_]))
        ids = np.asarray(sel.ids, dtype=np.int64)
        self.memory[ids] = upd[ids]
        self.last_round[ids] = round_
        return ids


class ControlReplay:
    """``on_updates`` hook of :func:`~fedstrat.measure.variance.compute_client_updates`: one
    :class:`ControlTrajectory` per difference selection; ``snapshots[r][name]`` holds the
    controls of each measured round r (taken before round r's draw)."""

    def __init__(
        self,
        names: list[str],
        rounds: list[int],
        m: int,
        *,
        seed: int = 0,
        design: str = "auto",
        n_strata: int = 0,
        fill: str = "stratum",
        decay: float = 1.0,
    ) -> None:
        self.names = list(names)
        self.rounds = sorted(int(r) for r in rounds)
        self.kw: dict[str, Any] = {"seed": seed, "design": design, "n_strata": n_strata,
                                   "fill": fill, "decay": decay}
        self.m = int(m)
        self.trajectories: dict[str, ControlTrajectory] = {}
        self.snapshots: dict[int, dict[str, np.ndarray]] = {}
        self.drawn: dict[str, list[np.ndarray]] = {n: [] for n in self.names}

    def __call__(self, round_: int, updates: np.ndarray, result: dict[str, Any]) -> None:
        if not self.trajectories:
            for name in self.names:
                self.trajectories[name] = ControlTrajectory(
                    name, result["sizes"], self.m, result.get("histograms"), **self.kw
                )
        for name, traj in self.trajectories.items():
            if round_ in self.rounds:
                self.snapshots.setdefault(round_, {})[name] = traj.controls(round_)
            if round_ < self.rounds[-1]:
                self.drawn[name].append(traj.observe(round_, updates))

    def annotate(self, stats: list[Any], round_: int) -> None:
        """Add ``controls`` and ``clients_seen`` to the info of the difference selections'
        :class:`~fedstrat.measure.variance.SelectionStats` of ``round_``."""
        for s in stats:
            if s.selection in self.names:
                s.info["controls"] = (f"last drawn update, fill {self.kw['fill']}, decay "
                                      f"{self.kw['decay']:g}")
                s.info["clients_seen"] = self.seen(s.selection, round_)

    def seen(self, name: str, round_: int) -> int:
        """Distinct clients drawn before ``round_`` (whose control is their own update)."""
        ids = [d for d in self.drawn[name][: round_ - 1]]
        return int(len(np.unique(np.concatenate(ids)))) if ids else 0


def control_replay(cfg: Any, rounds: Sequence[int], selections: list[str]) -> ControlReplay | None:
    """A :class:`ControlReplay` for the requested difference selections (fill / decay from
    ``cfg.cv_fill`` / ``cfg.cv_decay`` when it has them), or None without any."""
    from .samplers import DIFFERENCE_SELECTIONS

    names = [s for s in selections if s in DIFFERENCE_SELECTIONS]
    if not names:
        return None
    return ControlReplay(
        names, list(rounds), cfg.clients_per_round, seed=cfg.seed, design=cfg.design,
        n_strata=cfg.n_strata, fill=getattr(cfg, "cv_fill", "stratum"),
        decay=float(getattr(cfg, "cv_decay", 1.0)),
    )
