r"""``stratified-difference-learned``: the difference estimator as the strategy draws it.

A :class:`DifferenceReplay` drives, along the measurement's full-participation trajectory, the
real :class:`~fedstrat.strategies.stratified_policy.StratifiedPolicy` with
``estimator="difference"`` and its
:class:`~fedstrat.strategies.control_variates.ControlVariates` memory, in the order
``StratifiedSelection`` calls them each round r:

1. ``policy.plan`` with ``default_rng([seed, r])``: strata (label histograms), the decision
   against FedAvg, the allocation from the TRACKED residual dispersion (never the exact
   residuals) and the residual pps size measure :math:`z_i = p_i \hat s_i` of the memory;
2. the controls :math:`c_i` of every node from the memory as it was before the draw (learnt
   age coefficients, stratum fill), so a node's control is its own update of the round it last
   trained under this design (realistic staleness);
3. the drawn nodes' updates: their sketches feed the update tracker, the memory stores them
   (learning the coefficients from the controls used) and their residual sketches feed the
   residual tracker.

At a measured round r the MSE of the difference estimator under the design the policy drew
with (``policy.last_sampler``: residual pps, pps by size, or uniform in a FedAvg round) is
measured by Monte Carlo on the residuals :math:`\Delta_i - c_i` of round r (the difference
estimator's error is the design's HT error on the residuals), next to what the policy
predicted for it (the decision's ``pred_var``; in a FedAvg round its
``pred_var_uniform_difference``, NaN before the residual tracker has evidence). A FedAvg round
the policy aggregated as FedAvg (``draw.estimator == "ratio"``: the difference estimator was not
credibly better, :func:`~fedstrat.strategies.stratified_policy.difference_beats_fedavg`) is
measured as FedAvg: the self-normalised uniform draw on the updates, next to FedAvg's
prediction.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from .tracking import PolicyReplay, policy_options

#: the replayed selection's name in ``measure-variance``
LEARNED = "stratified-difference-learned"


class DifferenceReplay(PolicyReplay):
    """``on_updates`` hook (see module doc); ``stats[r]`` for each measured round."""

    def __init__(self, cfg: Any, rounds: Sequence[int], n_samples: int = 2000) -> None:
        from fedstrat.strategies.control_variates import make_controls
        from fedstrat.strategies.stratified_policy import StratifiedPolicy

        self.rounds = sorted(int(r) for r in rounds)
        self.n_samples = int(n_samples)
        self.options = policy_options(
            cfg, estimator="difference", cv_decay=float(getattr(cfg, "cv_decay", 1.0)),
            cv_fill=getattr(cfg, "cv_fill", "stratum"),
            cv_budget_bytes=int(getattr(cfg, "cv_budget_bytes", 0)),
        )
        self.policy = StratifiedPolicy(self.options)
        self.memory = make_controls(self.options, self.policy)
        self.stats: dict[int, Any] = {}
        #: the client indices drawn in each round
        self.drawn: dict[int, list[int]] = {}
        self.registry: Any = None
        self.nodes: list[int] = []

    def __call__(self, round_: int, updates: np.ndarray, result: dict[str, Any]) -> None:
        from fedstrat.sampling import sketch_update
        from fedstrat.strategies.plan import Feedback

        planned = self._plan(round_, result)
        if planned is None:
            return
        sizes, draw = planned
        reg, o, mem = self.registry, self.options, self.memory
        upd = np.asarray(updates, dtype=np.float64)
        p = sizes / sizes.sum()
        labels = None
        if draw.strata is not None:
            labels = {n: int(h) for n, h in zip(self.nodes, draw.strata.strata.labels,
                                                strict=True)}
        controls = mem.controls(round_, self.nodes, sizes, upd.shape[1], labels)
        c_all = controls.matrix(self.nodes)
        if round_ in self.rounds:
            self.stats[round_] = self._measure(round_, upd, upd - c_all, sizes, draw)
        ids = np.asarray(draw.selection.ids, dtype=np.int64)
        nodes = [int(i) for i in ids]
        self.drawn[round_] = nodes
        w = np.asarray(draw.selection.weights, dtype=np.float64)
        sketch = (o.sketch_dim, o.sketch_seed)
        sk = sketch_update(upd[ids], *sketch, method=o.sketch_method)
        for r, i in enumerate(nodes):
            reg.observe_train(i, num_examples=float(sizes[i]), sketch=sk[r], loss=None,
                              cost=None)
        self.policy.observe(Feedback(nodes, sk, w))
        used = c_all[ids]
        mem.update(round_, nodes, upd[ids], used, p[ids])
        res = sk - sketch_update(used, *sketch, method=o.sketch_method)
        self.policy.observe_residuals(Feedback(nodes, res, w))

    def _measure(
        self, round_: int, upd: np.ndarray, resid: np.ndarray, sizes: np.ndarray, draw: Any
    ) -> Any:
        from fedstrat.sampling import SelfNormalisedSampler
        from fedstrat.sampling.difference import ResidualPPSSampler

        from .variance import Population, monte_carlo

        d = draw.decision
        sp = draw.strata
        smp = self.policy.last_sampler
        stratified = d is not None and d.mode == "stratified"
        info = {
            "mode": "none" if d is None else d.mode,
            "evidence": "none" if d is None else d.evidence,
            "design": draw.design,
            "S_h_basis": None if sp is None else sp.basis,
            "size_measure": ("predicted residual norm" if isinstance(smp, ResidualPPSSampler)
                             else "size" if stratified else "uniform"),
            "allocation": None if sp is None or not stratified else sp.allocation.tolist(),
            "clients_seen": len(self.memory.vectors),
            "band": None if d is None or d.predicted is None or not stratified
            else d.predicted.to_json(),
            "reason": draw.reason,
            "allocation_from": "tracked residual sketches (the strategy's own)",
        }
        pred = (d.predicted.value if stratified and d is not None and d.predicted is not None
                else math.nan)
        uni = None if d is None or stratified else d.predicted_uniform_difference
        if uni is not None:  # a FedAvg round: the difference estimator on the uniform draw
            pred, info["band"] = uni.value, uni.to_json()
        seed = int(np.random.SeedSequence([self.options.seed, 2000 + round_]).generate_state(1)[0])
        info["estimator"] = draw.estimator or "difference"
        if draw.estimator == "ratio":  # the round was aggregated as FedAvg
            fed = None if d is None else d.predicted_fedavg
            pred = math.nan if fed is None else fed.value
            info["band"] = None if fed is None else fed.to_json()
            return monte_carlo(Population(upd, sizes), SelfNormalisedSampler(smp),
                               self.n_samples, seed=seed, name=LEARNED, predicted=pred, info=info)
        return monte_carlo(Population(resid, sizes), smp, self.n_samples, seed=seed,
                           name=LEARNED, predicted=pred, info=info)
