r"""Measured variance of the aggregate under each client-selection scheme.

At a chosen round every client's update :math:`\Delta_i` is computed in-process from the same
global model (``fedstrat.models.train.train_steps`` on the client's partition, no Flower), giving
the full-participation target

.. math:: T = \sum_i p_i \Delta_i, \qquad p_i = n_i / n .

For each selection scheme a sampler draws ``n_samples`` seeded samples :math:`s`; the aggregate is
:math:`\hat T_s = \sum_{i \in s} w_i \Delta_i` with the sampler's weights, and we report the
Monte Carlo estimate of the mean squared error

.. math:: \widehat{\mathrm{MSE}} = \frac1S \sum_{s} \lVert \hat T_s - T \rVert^2

(= the variance :math:`\operatorname{tr}\operatorname{Cov}(\hat T)` for unbiased designs) with its
standard error, the empirical bias :math:`\lVert \bar{\hat T} - T \rVert`, and the design
formula's predicted variance from ``fedstrat.sampling`` for comparison.

Computation: writing :math:`\hat T_s - T = c_s^\top U` with :math:`c_s = w_s - p`
(:math:`w_s` the weights scattered to length N, :math:`U` the N x D update matrix),
:math:`\lVert \hat T_s - T\rVert^2 = c_s^\top G c_s` with the Gram matrix :math:`G = U U^\top`,
so each sample costs O(N^2) instead of O(|s| D).

Stratified selection uses the strata the system would use (k-means on label histograms,
``choose_design`` when ``design="auto"``) and a Neyman allocation computed from the EXACT
per-stratum dispersion of these updates (an oracle for the tracked :math:`S_h`; the system
estimates it from sketches of past updates). ``stratified-prop`` keeps the strata and design with
proportional allocation and needs no update information. ``stratified-sketch`` takes its strata
from 64-dim random-projection sketches of these updates (the system's ``stratify_by="sketches"``;
``choose_design`` on the sketches), the same information Clustered Sampling Alg. 2 is given here
(the exact updates as representative gradients): both are oracles at the measured round.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .samplers import (
    DIFFERENCE_SELECTIONS,
    MEASURABLE,
    MEASURED,
    MEASURED_SELECTIONS,
    build_samplers,
)
from .updates import compute_client_updates

__all__ = [
    "DIFFERENCE_SELECTIONS",
    "MEASURABLE",
    "MEASURED",
    "MEASURED_SELECTIONS",
    "REPLAYED_SELECTIONS",
    "SELECTABLE",
    "MeasureResult",
    "Population",
    "SelectionStats",
    "build_samplers",
    "compute_client_updates",
    "measure_population",
    "measure_variance",
    "monte_carlo",
]


#: selections measured by replaying the strategy itself along the trajectory (no sampler of
#: :data:`MEASURED`): the difference estimator as ``StratifiedSelection`` draws it
#: (:mod:`fedstrat.measure.strategy_replay`)
REPLAYED_SELECTIONS: tuple[str, ...] = ("stratified-difference-learned",)
#: every name ``measure_variance`` accepts
SELECTABLE: tuple[str, ...] = (*MEASURABLE, *REPLAYED_SELECTIONS)


# ---------------------------------------------------------------------------------- numpy core
@dataclass
class Population:
    """N client updates (rows of ``updates``) with sizes n_i.

    ``p`` = n_i / n, ``target`` T = p @ U, ``gram`` G = U U^T (float64).
    """

    updates: np.ndarray
    sizes: np.ndarray
    p: np.ndarray = field(init=False, repr=False)
    target: np.ndarray = field(init=False, repr=False)
    gram: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        u = np.asarray(self.updates, dtype=np.float64)
        s = np.asarray(self.sizes, dtype=np.float64)
        if u.ndim != 2:
            raise ValueError(f"updates must be a 2-D array (N, D), got shape {u.shape}")
        if s.shape != (u.shape[0],):
            raise ValueError(f"sizes must have length N={u.shape[0]}, got shape {s.shape}")
        if not np.all(np.isfinite(u)) or not np.all(np.isfinite(s)) or np.any(s <= 0):
            raise ValueError("updates must be finite and sizes finite and > 0")
        self.updates = u
        self.sizes = s
        self.p = s / s.sum()
        self.target = self.p @ u
        self.gram = u @ u.T

    @property
    def n_clients(self) -> int:
        return int(self.updates.shape[0])

    def sq_error(self, coef: np.ndarray) -> np.ndarray:
        """||c @ U||^2 for each row c of ``coef`` (shape (S, N)) via the Gram matrix."""
        c = np.atleast_2d(coef)
        return np.maximum(np.einsum("si,ij,sj->s", c, self.gram, c), 0.0)


@dataclass
class SelectionStats:
    """Monte Carlo result for one selection scheme."""

    selection: str
    measured: float  # MSE estimate (1/S) sum ||T_hat - T||^2
    measured_se: float  # its standard error
    bias: float  # ||mean(T_hat) - T||
    bias_z: float  # bias relative to its Monte Carlo standard error sqrt(MSE/S)
    predicted: float  # design-formula variance (NaN if none)
    unbiased: bool  # the sampler's claim
    mean_selected: float  # mean number of distinct clients per sample
    n_samples: int
    seconds: float
    info: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def monte_carlo(
    pop: Population,
    sampler: Any,
    n_samples: int = 2000,
    seed: int = 0,
    name: str = "",
    predicted: float = math.nan,
    info: Mapping[str, Any] | None = None,
) -> SelectionStats:
    """Draw ``n_samples`` seeded samples from ``sampler`` and measure E||T_hat - T||^2."""
    if n_samples < 2:
        raise ValueError(f"n_samples must be >= 2, got {n_samples}")
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    n = pop.n_clients
    coef = np.zeros((n_samples, n))
    n_sel = np.zeros(n_samples)
    unbiased = True
    for k in range(n_samples):
        sel = sampler.sample(rng)
        ids = np.asarray(sel.ids, dtype=np.int64)
        np.add.at(coef[k], ids, np.asarray(sel.weights, dtype=np.float64))
        n_sel[k] = len(np.unique(ids))
        unbiased = bool(getattr(sel, "unbiased", True))
    coef -= pop.p
    err = pop.sq_error(coef)
    mse = float(err.mean())
    mean_c = coef.mean(axis=0)
    bias = math.sqrt(float(pop.sq_error(mean_c)[0]))
    mc_se = math.sqrt(mse / n_samples) if mse > 0 else 0.0
    return SelectionStats(
        selection=name or type(sampler).__name__,
        measured=mse,
        measured_se=float(err.std(ddof=1) / math.sqrt(n_samples)),
        bias=bias,
        bias_z=bias / mc_se if mc_se > 0 else 0.0,
        predicted=float(predicted),
        unbiased=unbiased,
        mean_selected=float(n_sel.mean()),
        n_samples=n_samples,
        seconds=time.perf_counter() - t0,
        info=dict(info or {}),
    )


def measure_population(
    pop: Population,
    m: int,
    histograms: np.ndarray | None = None,
    *,
    selections: Iterable[str] = MEASURED_SELECTIONS,
    n_samples: int = 2000,
    seed: int = 0,
    design: str = "auto",
    n_strata: int = 0,
    losses: np.ndarray | None = None,
    poc_d: int = 0,
    controls: Mapping[str, np.ndarray] | None = None,
) -> list[SelectionStats]:
    """Monte Carlo E||T_hat - T||^2 of every requested selection on one population.

    Every selection draws from its own Generator seeded with ``[seed, k]`` (k its position in
    :data:`MEASURABLE`), so results are reproducible and independent of which other
    selections are requested. A difference selection needs ``controls[name]`` (``(N, D)``, or
    ``(N, 1)`` zeros): its MSE is measured on the residual population ``Delta - c`` (exactly
    the difference estimator's, see :mod:`fedstrat.sampling.difference`).
    """
    selections = list(selections)
    plain = [s for s in selections if s not in DIFFERENCE_SELECTIONS]
    samplers = build_samplers(
        pop,
        m,
        histograms,
        selections=plain,
        design=design,
        n_strata=n_strata,
        losses=losses,
        poc_d=poc_d,
        seed=seed,
    )
    pops = dict.fromkeys(plain, pop)
    for name in selections:
        if name not in DIFFERENCE_SELECTIONS:
            continue
        if controls is None or name not in controls:
            raise ValueError(f"selection {name!r} needs its control variates (controls=)")
        pops[name] = Population(pop.updates - controls[name], pop.sizes)
        samplers.update(build_samplers(pops[name], m, histograms, selections=[name],
                                       design=design, n_strata=n_strata, seed=seed))
    stats = []
    for name in selections:
        sampler, pred, info = samplers[name]
        k = MEASURABLE.index(name)
        stats.append(
            monte_carlo(
                pops[name],
                sampler,
                n_samples,
                seed=int(np.random.SeedSequence([seed, k]).generate_state(1)[0]),
                name=name,
                predicted=pred,
                info=info,
            )
        )
    return stats


@dataclass
class MeasureResult:
    """Rows (one per round x selection) and metadata of a measured-variance experiment."""

    rows: list[dict[str, Any]]
    meta: dict[str, Any]

    def ratio(self, round_: int | None = None, over: str = "stratified") -> float:
        """Measured uniform / ``over`` at ``round_`` (mean over rounds if None), paired by
        round and seed and averaged over the pairs; NaN without a pair."""
        vals = []
        for key in dict.fromkeys((row["round"], row.get("seed")) for row in self.rows):
            if round_ is not None and key[0] != round_:
                continue
            by = {row["selection"]: row["measured"] for row in self.rows
                  if (row["round"], row.get("seed")) == key}
            if by.get(over, 0) > 0 and "uniform" in by:
                vals.append(by["uniform"] / by[over])
        return float(np.mean(vals)) if vals else math.nan


def ratio_and_se(num: float, num_se: float, den: float, den_se: float) -> tuple[float, float]:
    """``num / den`` and its delta-method standard error for independent Monte Carlo means,
    ``r sqrt((se_n/n)^2 + (se_d/d)^2)`` (a missing error is NaN); NaN when either is not
    > 0."""
    if not (num > 0 and den > 0):
        return math.nan, math.nan
    r = num / den
    return r, r * math.hypot(num_se / num, den_se / den)


def ratio_se(
    fedavg: tuple[float, float] | None, row: Mapping[str, Any]
) -> tuple[float, float]:
    """``(FedAvg MSE / this MSE, its standard error)`` from two Monte Carlo means with their
    standard errors (independent generators: ``se = r sqrt((se_f/f)^2 + (se_t/t)^2)``; 0 for
    the FedAvg row itself); NaN without a FedAvg row."""
    if fedavg is None:
        return math.nan, math.nan
    ratio, se = ratio_and_se(fedavg[0], fedavg[1], float(row["measured"]),
                             float(row["measured_se"]))
    copy = row.get("info", {}).get("measured") == "the fedavg row's Monte Carlo MSE"
    if math.isfinite(ratio) and (row["selection"] == "fedavg" or copy):  # the fedavg row
        return ratio, 0.0
    return ratio, se


def measure_variance(
    cfg: Any,
    rounds: Sequence[int] = (1, 10),
    *,
    selections: Iterable[str] = MEASURED_SELECTIONS,
    n_samples: int = 2000,
    on_progress: Callable[[str], None] | None = None,
    on_updates: Callable[[int, np.ndarray, dict[str, Any]], None] | None = None,
) -> MeasureResult:
    """Compute every client's update at ``rounds`` for the data options of ``cfg`` (a
    ``RunConfig``) and measure each selection's E||T_hat - T||^2 (see module docstring);
    ``selections`` may include :data:`REPLAYED_SELECTIONS`; ``on_updates`` is called with
    every round's updates too (see :func:`compute_client_updates`)."""
    t0 = time.perf_counter()
    selections = list(selections)
    from .controls import control_replay

    replay = control_replay(cfg, rounds, selections)
    from .tracking import RunReplay, run_rows

    run_replay = RunReplay(cfg, rounds) if "stratified" in selections else None
    from .strategy_replay import LEARNED, DifferenceReplay

    learned = DifferenceReplay(cfg, rounds, n_samples) if LEARNED in selections else None
    selections = [s for s in selections if s not in REPLAYED_SELECTIONS]
    extra = on_updates

    def hooks(r: int, updates: np.ndarray, result: dict[str, Any]) -> None:
        if replay is not None:
            replay(r, updates, result)
        if run_replay is not None:
            run_replay(r, updates, result)
        if learned is not None:
            learned(r, updates, result)
        if extra is not None:
            extra(r, updates, result)

    data = compute_client_updates(cfg, rounds, on_progress=on_progress, on_updates=hooks)
    rows: list[dict[str, Any]] = []
    for r, rd in sorted(data["rounds"].items()):
        pop = Population(rd["updates"], data["sizes"])
        controls = replay.snapshots.get(r) if replay is not None else None
        stats = measure_population(
            pop,
            cfg.clients_per_round,
            data["histograms"],
            selections=selections,
            n_samples=n_samples,
            seed=cfg.seed,
            design=cfg.design,
            n_strata=cfg.n_strata,
            losses=rd["losses"],
            poc_d=cfg.poc_d,
            controls=controls,
        )
        if replay is not None:
            replay.annotate(stats, r)
        base = next((s.measured for s in stats if s.selection == "uniform"), math.nan)
        fed = next(((s.measured, s.measured_se) for s in stats if s.selection == "fedavg"), None)
        found = [s.to_dict() for s in stats]
        if run_replay is not None:
            found += run_rows(run_replay, r, pop, fed, n_samples, cfg.seed)
        if learned is not None and r in learned.stats:
            found.append(learned.stats[r].to_dict())
        for s in found:
            row = {"round": r, "global_score": rd["score"], **s}
            row["uniform_over_this"] = base / s["measured"] if s["measured"] > 0 else math.nan
            row["fedavg_over_this"], row["fedavg_over_this_se"] = ratio_se(fed, s)
            row["target_norm_sq"] = float(pop.target @ pop.target)
            rows.append(row)
    meta = {
        "dataset": cfg.dataset,
        "partition": cfg.partition,
        "alpha": cfg.alpha,
        "num_clients": cfg.num_clients,
        "clients_per_round": cfg.clients_per_round,
        "model": data["model"],
        "dim": data["dim"],
        "local_epochs": cfg.local_epochs,
        "local_steps": cfg.local_steps,
        "lr": cfg.lr,
        "batch_size": cfg.batch_size,
        "seed": cfg.seed,
        "n_samples": n_samples,
        "rounds": sorted(data["rounds"]),
        "sizes_min_median_max": [
            float(np.min(data["sizes"])),
            float(np.median(data["sizes"])),
            float(np.max(data["sizes"])),
        ],
        "warmup": "round r uses the model after r-1 full-participation FedAvg rounds",
        "seconds": time.perf_counter() - t0,
    }
    return MeasureResult(rows=rows, meta=meta)
