r"""The strategy's own in-run predictions, replayed along the measurement trajectory.

A :class:`RunReplay` drives the real :class:`~fedstrat.strategies.stratified_policy.
StratifiedPolicy` (default options of ``cfg``) over the clients of a ``measure-variance`` run:
at round r it draws with ``default_rng([seed, r])`` as the strategy does, and feeds the drawn
clients' update sketches (``sketch_dim``, ``sketch_seed``, ``sketch_method`` of the strategy)
with their aggregation weights to the policy's per-stratum tracker. Before round r's draw it
keeps what the policy predicted for round r from rounds < r:

- its decision (mode, evidence, reason),
- the predicted MSE (with band) of its stratified candidate design with the tracked
  allocation, and of FedAvg.

The measurement then compares them with the Monte Carlo MSE of that very design (strata and
``m_h`` as drawn at round r, on the exact updates of round r) and of FedAvg: in a FedAvg round
the draw the policy made (balanced or uniform, ``fedavg_sampler``) with FedAvg's weights,
otherwise measure-variance's ``fedavg`` row.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class RunPrediction:
    """What the policy predicted at one round (before its draw)."""

    mode: str
    evidence: str
    reason: str
    design: str | None
    strata: Any  # fedstrat.sampling.Strata over all clients, or None
    allocation: np.ndarray | None
    predicted: list[float] | None  # [value, lo, hi] of the stratified candidate
    predicted_fedavg: list[float] | None  # [value, lo, hi] of FedAvg
    #: the sampler of a FedAvg round (balanced or uniform), measured with FedAvg's weights
    fedavg_sampler: Any = None


def policy_options(cfg: Any, **overrides: Any) -> Any:
    """The :class:`~fedstrat.strategies.SelectionOptions` of the stratified policy for the run
    options ``cfg`` (a ``RunConfig``), with ``overrides``."""
    from fedstrat.strategies import SelectionOptions

    names = set(SelectionOptions.names())
    kw = {
        k: getattr(cfg, k)
        for k in ("design", "allocation", "stratify_by", "restratify_every",
                  "warmup_rounds", "min_per_stratum", "size_strata", "balanced_fedavg",
                  "sketch_dim", "sketch_seed", "sketch_method", "variance_ema", "prior_std",
                  "max_strata")
        if k in names and hasattr(cfg, k)
    }
    for k in ("prior_std", "variance_ema", "max_strata"):
        if k in kw and not kw[k]:
            kw[k] = None
    if getattr(cfg, "n_strata", 0):
        kw["n_strata"] = int(cfg.n_strata)
    return SelectionOptions(clients_per_round=cfg.clients_per_round, seed=cfg.seed,
                            **{**kw, **overrides})


def profiled_registry(result: dict[str, Any]) -> tuple[Any, list[int]]:
    """A node registry in which client i (node id i) is profiled with the measurement's size
    and label histogram (``result["sizes"]``, ``result["histograms"]``), and the node ids."""
    from fedstrat.strategies.node_registry import NodeRegistry

    registry = NodeRegistry()
    sizes = np.asarray(result["sizes"], dtype=np.float64)
    hist = result.get("histograms")
    nodes = list(range(len(sizes)))
    for i in nodes:
        h = [] if hist is None else [float(x) for x in hist[i]]
        registry.set_profile(i, float(sizes[i]), h)
    return registry, nodes


class PolicyReplay:
    """Base of the ``on_updates`` hooks that drive a real ``StratifiedPolicy`` (``self.policy``
    with ``self.options``, measured ``self.rounds``) along the measured trajectory."""

    rounds: list[int]
    options: Any
    policy: Any
    registry: Any = None
    nodes: list[int]

    def _plan(self, round_: int, result: dict[str, Any]) -> tuple[np.ndarray, Any] | None:
        """The population sizes and the policy's draw of ``round_`` (its generator
        ``default_rng([seed, round_])``, as the strategy's); None after the last measured
        round. Profiles every client on the first call."""
        from fedstrat.strategies.plan import PopulationFrame

        if self.registry is None:
            self.registry, self.nodes = profiled_registry(result)
        if round_ > self.rounds[-1]:
            return None
        sizes = self.registry.sizes(self.nodes)
        m = min(self.options.clients_per_round, len(self.nodes))
        frame = PopulationFrame(round_, self.nodes, sizes, m, self.registry)
        return sizes, self.policy.plan(frame, np.random.default_rng([self.options.seed, round_]))


class RunReplay(PolicyReplay):
    """``on_updates`` hook (see module doc); ``predictions[r]`` for each measured round."""

    def __init__(self, cfg: Any, rounds: Sequence[int]) -> None:
        from fedstrat.strategies.stratified_policy import StratifiedPolicy

        self.rounds = sorted(int(r) for r in rounds)
        self.options = policy_options(cfg)
        self.policy = StratifiedPolicy(self.options)
        self.predictions: dict[int, RunPrediction] = {}
        self.registry: Any = None
        self.nodes: list[int] = []

    def __call__(self, round_: int, updates: np.ndarray, result: dict[str, Any]) -> None:
        from fedstrat.sampling import Strata, sketch_update
        from fedstrat.strategies.plan import Feedback

        planned = self._plan(round_, result)
        if planned is None:
            return
        sizes, draw = planned
        reg, o = self.registry, self.options
        if round_ in self.rounds:
            d = draw.decision
            sp = self.policy.last_plan
            self.predictions[round_] = RunPrediction(
                mode="none" if d is None else d.mode,
                evidence="none" if d is None else d.evidence,
                reason=draw.reason,
                design=None if d is None else d.candidate,
                strata=None if sp is None else Strata(np.asarray(sp.strata.labels)),
                allocation=None if sp is None else np.asarray(sp.allocation),
                predicted=None if d is None or d.predicted is None else d.predicted.to_json(),
                predicted_fedavg=(
                    None if d is None or d.predicted_fedavg is None
                    else d.predicted_fedavg.to_json()
                ),
                fedavg_sampler=(self.policy.last_sampler
                                if d is not None and d.mode == "fedavg" else None),
            )
        ids = np.asarray(draw.selection.ids, dtype=np.int64)
        sketches = sketch_update(np.asarray(updates[ids], dtype=np.float64), o.sketch_dim,
                                 o.sketch_seed, method=o.sketch_method)
        for r, i in enumerate(ids.tolist()):
            reg.observe_train(i, num_examples=float(sizes[i]), sketch=sketches[r], loss=None,
                              cost=None)
        self.policy.observe(Feedback([int(i) for i in ids], sketches,
                                     np.asarray(draw.selection.weights, dtype=np.float64)))


def run_rows(
    replay: RunReplay, round_: int, pop: Any, fedavg_measured: tuple[float, float] | None,
    n_samples: int, seed: int,
) -> list[dict[str, Any]]:
    """Rows ``stratified-run`` (Monte Carlo MSE of the policy's candidate design at
    ``round_`` vs its in-run prediction) and ``fedavg-run`` (the measured FedAvg MSE vs the
    in-run FedAvg prediction); none when the policy had no strata that round."""
    from fedstrat.sampling import StratifiedSampler

    from .variance import monte_carlo

    pr = replay.predictions.get(round_)
    if pr is None:
        return []
    info = {"mode": pr.mode, "evidence": pr.evidence, "reason": pr.reason}
    rows: list[dict[str, Any]] = []
    if pr.strata is not None and pr.allocation is not None and pr.design is not None:
        sizes = np.asarray(np.rint(pop.sizes), dtype=np.int64)
        smp = StratifiedSampler(sizes, pr.strata, pr.allocation, pr.design, seed=seed)
        st = monte_carlo(
            pop, smp, n_samples,
            seed=int(np.random.SeedSequence([seed, 1000 + round_]).generate_state(1)[0]),
            name="stratified-run",
            predicted=math.nan if pr.predicted is None else pr.predicted[0],
            info={**info, "design": pr.design, "allocation": pr.allocation.tolist(),
                  "band": pr.predicted},
        )
        rows.append(st.to_dict())
    if pr.fedavg_sampler is not None and pr.predicted_fedavg is not None:
        from fedstrat.sampling import SelfNormalisedSampler

        fr = monte_carlo(
            pop, SelfNormalisedSampler(pr.fedavg_sampler), n_samples,
            seed=int(np.random.SeedSequence([seed, 3000 + round_]).generate_state(1)[0]),
            name="fedavg-run", predicted=pr.predicted_fedavg[0],
            info={**info, "band": pr.predicted_fedavg,
                  "measured": "the policy's own FedAvg-round draw, FedAvg's weights"},
        )
        rows.append(fr.to_dict())
    elif fedavg_measured is not None and pr.predicted_fedavg is not None:
        mse, se = fedavg_measured
        rows.append({
            "selection": "fedavg-run", "measured": mse, "measured_se": se, "bias": math.nan,
            "bias_z": math.nan, "predicted": pr.predicted_fedavg[0], "unbiased": False,
            "mean_selected": math.nan, "n_samples": n_samples, "seconds": 0.0,
            "info": {**info, "band": pr.predicted_fedavg,
                     "measured": "the fedavg row's Monte Carlo MSE"},
        })
    return rows
