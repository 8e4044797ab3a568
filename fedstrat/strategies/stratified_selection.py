"""``StratifiedSelection``: stratified client selection around any Flower strategy.

The Flower hooks only compose the parts: :mod:`.discovery` (node wait, profiling), a
:class:`~.policies.SelectionPolicy` (which nodes, which design), :mod:`.payload_grid` (the
wrapped strategy's message), :mod:`.triage` (which replies count, responder weights),
:mod:`.observation` (what replies teach), :mod:`.rewrite` (HT / ratio through the wrapped
strategy) and :class:`~.record.RoundRecord`. See docs/design.md.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable, Sequence
from logging import INFO, WARNING
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedstrat.wire import NUM_EXAMPLES

from .array_codec import decode_array
from .bench import Bench
from .control_variates import difference_controls, make_controls
from .discovery import NodeWaiter, profile_nodes
from .inner_aggregate import aggregate_inner, mean_aggregate
from .inner_strategy import (
    check_wrapped,
    hooked_view,
    quiet_inner_sampling,
    start_owner,
    warn_construction,
    warn_start_bypassed,
    weight_ignoring,
)
from .node_registry import NodeRegistry
from .observation import observe_replies, residual_sketches
from .options import SelectionOptions
from .payload_grid import fan_out, find_attr, inner_payload
from .plan import Feedback, PopulationFrame, RoundPlan
from .policies import SelectionPolicy, make_policy
from .record import RoundRecord, jsonl_appender
from .record_fill import add_metrics
from .reply_screen import screen_evaluate_replies, screen_triage
from .reply_validation import align_global_dtypes, array_signature
from .rewrite import ScanScratch
from .round_log import round_line
from .triage import Triage, triage_replies
from .weight_cap import SizeRules

log = logging.getLogger("flwr").log

STATE_VERSION = 2
#: keys of a version-1 state (one flat dict) that belong to the stratified policy
V1_POLICY_KEYS = ("node_stratum", "centroids", "features_kind", "design", "design_reason",
                  "prior_stds", "prior_means", "stratified_round", "fallback", "tracker")


class StratifiedSelection(Strategy):
    """Wrap a Flower strategy; choose its training clients by stratified sampling.

    The wrapped strategy (FedAvg, FedProx, FedAdam, FedYogi or any
    ``flwr.serverapp.strategy.Strategy``) keeps its payload, its aggregation rule and its
    server optimizer; this wrapper decides *which* nodes train and with *which weights* their
    updates enter the aggregate.

    ``configure_train``: wait for nodes, profile new ones (label histogram + size), let the
    policy draw a :class:`~fedstrat.sampling.Selection` with ``default_rng([seed, round])``,
    send the wrapped strategy's payload to the selected nodes. ``aggregate_train``: reject
    invalid replies, re-weight responders, rewrite the replies so that the wrapped strategy's
    weighted average yields ``estimator="ht"``: ``x_g + sum_i w_i (x_i - x_g)`` (the
    Horvitz-Thompson estimate, design-unbiased for full participation; replies become
    ``x_g + W (x_i - x_g)``, ``W = sum w_i``, weight ``w_i``) or ``"ratio"``:
    ``sum_i w_i x_i / sum_i w_i`` (self-normalised). Integer arrays pass unchanged; the number
    of replies handed on equals the number accepted, so Flower's DP wrappers still compose.

    Parameters
    ----------
    strategy : Strategy
        The wrapped Flower strategy.
    clients_per_round : int
        ``m``, training clients per round (fewer if fewer nodes are available).
    options : SelectionOptions, optional
        All selection options at once (instead of ``clients_per_round`` and keywords).
    record_path : str | Path | None
        Append one JSON line per round there (a default ``on_record``).
    on_record : Callable[[RoundRecord], None] | None
        Called with each round's record (the app decides where it goes).
    **kwargs
        The fields of :class:`SelectionOptions` (``selection``, ``design``, ``allocation``,
        ``estimator``, ``stratify_by``, ``n_strata``, ``seed``, ...), documented there.
    """

    def __init__(
        self,
        strategy: Strategy,
        clients_per_round: int | None = None,
        *,
        options: SelectionOptions | None = None,
        record_path: str | Path | None = None,
        on_record: Callable[[RoundRecord], None] | None = None,
        **kwargs: Any,
    ) -> None:
        check_wrapped(strategy, StratifiedSelection)
        if options is None:
            if clients_per_round is None:
                raise TypeError(
                    "StratifiedSelection needs clients_per_round (training nodes per round, "
                    "an integer >= 1), or options=SelectionOptions(...)"
                )
            options = SelectionOptions(clients_per_round=clients_per_round, **kwargs)
        elif clients_per_round is not None or kwargs:
            raise TypeError("give either options= or clients_per_round and keywords, not both")
        self.strategy = strategy
        self.options = options
        self.record_path = Path(record_path) if record_path is not None else None
        self.on_record = on_record
        if on_record is None and self.record_path is not None:
            self.on_record = jsonl_appender(self.record_path)
        self.weighted_by_key: str = find_attr(strategy, "weighted_by_key", NUM_EXAMPLES)
        self.registry = NodeRegistry(SizeRules.of(self.options))
        #: the options as applied with this wrapped strategy (see :func:`_effective_options`)
        self.applied_options = _effective_options(strategy, options)
        self.policy: SelectionPolicy = make_policy(self.applied_options)
        self.records: list[RoundRecord] = []
        self.controls = make_controls(options, self.policy)  # estimator="difference" controls
        self.bench = Bench()  # nodes sitting out after unusable replies
        self.n_records = 0
        self._pending: RoundPlan | None = None
        self._avail_key: int | None = None  # the waiter's revision whose nodes were profiled
        self._sizes_cache: tuple[Any, np.ndarray] | None = None
        self._last_round, self._scratch = 0, ScanScratch()  # the update scan's work blocks
        self._loop_checked = False  # start() ran, or the bypassed start() was warned about
        self._waiter = NodeWaiter(options.clients_per_round, options.node_wait_timeout,
                                  options.poll_interval)
        warn_construction(strategy, options.clients_per_round)
        #: sketch method in use: the option's, or "gaussian" when resuming a state without one
        self.sketch_method: str = options.sketch_method

    def __getattr__(self, name: str) -> Any:
        """Attributes and methods this wrapper does not own come from the wrapped strategy
        (e.g. an app's ``strategy.set_save_path_and_run_dir(...)``)."""
        if name.startswith("__") or "strategy" not in self.__dict__:
            raise AttributeError(name)
        return getattr(self.__dict__["strategy"], name)

    def start(self, *args: Any, **kwargs: Any) -> Any:
        """Flower's ``Strategy.start`` loop with this wrapper's hooks; when the wrapped
        strategy's class defines its own ``start()`` (checkpoints, logging), that loop runs
        instead, on a view of the wrapped strategy whose round hooks are this wrapper's."""
        self._loop_checked = True
        owner = start_owner(self.strategy)  # also inside a DP wrapper
        if owner is not None:
            return type(owner).start(hooked_view(owner, self), *args, **kwargs)
        return super().start(*args, **kwargs)

    @property
    def pending_plan(self) -> RoundPlan | None:
        """The plan of the round configured but not yet aggregated."""
        return self._pending

    def summary(self) -> None:
        """Log this wrapper's configuration, then the wrapped strategy's."""
        o = self.applied_options
        log(INFO, "\t├──> StratifiedSelection:")
        log(INFO, "\t│\t├── clients per round: %d | selection: %s | design: %s",
            o.clients_per_round, o.selection, o.design)
        log(INFO, "\t│\t├── allocation: %s | estimator: %s | stratify by: %s (n_strata=%s)",
            o.allocation, o.estimator, o.stratify_by, o.n_strata)
        log(INFO, "\t│\t├── seed: %d | node wait: %.1fs | profiling: %s (timeout %.1fs)",
            o.seed, o.node_wait_timeout, o.profiling, o.profile_timeout)
        log(INFO, "\t│\t└── the wrapped strategy's fraction_train / min_train_nodes do not "
            "apply: StratifiedSelection chooses the training nodes")
        log(INFO, "\t└──> Wrapped strategy %s:", type(self.strategy).__name__)
        self.strategy.summary()

    # ------------------------------------------------------------------ training round
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Select this round's nodes by the policy; one message per selected node."""
        o = self.options
        if not self._loop_checked:  # an outer strategy runs the loop
            warn_start_bypassed(self.strategy)
            self._loop_checked = True
        available = self._waiter.available(grid)
        new = [] if self._waiter.revision == self._avail_key else self.registry.unseen(available)
        if new and o.profiling == "query":
            profile_nodes(self.registry, grid, new, server_round=server_round,
                          epsilon=o.profile_epsilon, seed=o.seed, timeout=o.profile_timeout)
        self._avail_key = self._waiter.revision
        available, key, benched = self._eligible(available, server_round)
        sizes = self._population_sizes(available, key)
        frame = PopulationFrame(server_round, available, sizes,
                                min(o.clients_per_round, len(available)), self.registry, key=key)
        draw = self.policy.plan(frame, np.random.default_rng([o.seed, server_round]))
        selected = [available[i] for i in draw.selection.ids]
        with quiet_inner_sampling():
            payload = inner_payload(self.strategy, server_round, arrays, config, grid, selected)
        messages = fan_out(payload, selected, server_round)
        self._pending = RoundPlan(
            round=server_round, population=available, sizes=sizes, draw=draw, selected=selected,
            messages=messages, sent_at={m.metadata.dst_node_id: m.metadata.created_at
                                        for m in messages}, signature=array_signature(arrays),
            global_arrays=arrays, size_cap=self.registry.cap_effect(available),
            first_claims=(self.registry.first_claims(selected)
                          if (draw.estimator or o.estimator) == "ratio" else None),
            benched=benched,
        )
        if logging.getLogger("flwr").isEnabledFor(INFO):  # the line is made only to be shown
            log(INFO, "configure_train: %s", round_line(
                server_round, o.selection, draw, len(selected), len(available), self.policy))
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Triage, re-weight and aggregate through the wrapped strategy; record the round."""
        plan, o = self._pending, self.applied_options
        if plan is None or plan.round != server_round:
            raise RuntimeError(
                f"aggregate_train(round {server_round}) without configure_train for that round"
            )
        triage = triage_replies(replies, plan, self.weighted_by_key, self.registry,
                                check_finite=False)  # NaN / Inf: in screen_triage's pass
        global_np = align_global_dtypes(
            {k: decode_array(a) for k, a in plan.global_arrays.items()}, triage.valid
        )
        estimator = plan.draw.estimator or o.estimator  # "ratio": the policy chose FedAvg
        counts = self.sketch_method == "countsketch"  # sketched in the screen's pass
        mean = mean_aggregate(self.strategy)  # FedAvg's mean: from the pass's weighted sums
        triage, screen = screen_triage(  # one pass per reply; (R, D) matrix only if needed
            plan, triage, global_np, sketch=(o.sketch_dim, o.sketch_seed) if counts else None,
            matrix=self.controls is not None or not counts, rewrite=estimator == "ht" and not mean,
            weighted=mean and estimator in ("ht", "ratio"), scratch=self._scratch)
        valid, weights, notes, deltas = triage.valid, screen.weights, screen.notes, screen.deltas
        sketches = observe_replies(self.registry, valid, deltas, plan.sent_at, o.sketch_dim,
                                   o.sketch_seed, o.cost_key, self.sketch_method,
                                   sketches=screen.sketches)
        self.policy.observe(Feedback([v.node_id for v in valid], sketches, weights))
        cv = difference_controls(self.controls, plan, valid, deltas)  # then stores the deltas
        if cv[0] is not None and hasattr(self.policy, "observe_residuals"):
            res = residual_sketches(sketches, cv[0], o.sketch_dim, o.sketch_seed,
                                    self.sketch_method)
            self.policy.observe_residuals(Feedback([v.node_id for v in valid], res, weights))
        arrays, metrics = None, None
        if valid:
            arrays, metrics, fixed = aggregate_inner(
                self.strategy, server_round, valid, weights, global_np, estimator,
                self.weighted_by_key, deltas=deltas, controls=cv[0], offset=cv[1],
                prepared=screen.rewritten, weighted=screen.weighted)
            notes = notes + fixed
        else:
            log(WARNING, "aggregate_train: no valid reply in round %d", server_round)
        self._bench_replies(plan, triage)
        record = RoundRecord.from_round(plan, triage, weights, notes, selection=o.selection,
                                        estimator=o.estimator, allocation_rule=o.allocation)
        self._keep(record)
        metrics = add_metrics(MetricRecord() if metrics is None else metrics, record.metrics())
        self._pending = None
        self._last_round = server_round
        return arrays, metrics

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Delegate to the wrapped strategy."""
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Delegate to the wrapped strategy, with replies it cannot aggregate left out and the
        rest made consistent (:func:`.reply_screen.screen_evaluate_replies`)."""
        kept, _ = screen_evaluate_replies(list(replies), self.weighted_by_key)
        return self.strategy.aggregate_evaluate(server_round, kept)

    # ------------------------------------------------------------------ helpers
    def _eligible(
        self, available: Sequence[int], server_round: int
    ) -> tuple[Sequence[int], int | None, tuple[int, ...]]:
        """The round's population, its cache key and the nodes sitting out: the available nodes
        but those sitting out (:mod:`.bench`; all of them if none would be left), keyed by the
        waiter's revision while none sits out (else None: caches key on the nodes)."""
        out = self.bench.out(server_round)
        kept = tuple(n for n in available if n not in out) if out else ()
        if not kept or len(kept) == len(available):
            return available, self._waiter.revision, ()
        return kept, None, tuple(sorted(set(available) - set(kept)))

    def _population_sizes(self, available: Sequence[int], revision: int | None) -> np.ndarray:
        """``n_i`` of ``available``, cached while the population (its ``revision``, None: not
        cached) and the sizes are unchanged."""
        if revision is None:
            return self.registry.sizes(available)
        key = (revision, id(self.registry), self.registry.version)
        if self._sizes_cache is None or self._sizes_cache[0] != key:
            sizes = self.registry.sizes(available)
            sizes.flags.writeable = False  # shared by the round's caches: never edited in place
            self._sizes_cache = (key, sizes)
        return self._sizes_cache[1]

    def _bench_replies(self, plan: RoundPlan, triage: Triage) -> None:
        """Count the selected nodes' usable and unusable replies (:mod:`.bench`)."""
        usable = {v.node_id for v in triage.valid}
        chosen = set(plan.selected) - usable  # a duplicate of a usable reply: no strike
        for node, rounds, strikes in self.bench.record(
                plan.round, usable, [p.node for p in triage.rejected if p.node in chosen],
                [p.node for p in triage.failures if p.node in chosen]):
            log(INFO, "node %d sits out the next %d round(s): %d unusable replies in a row",
                node, rounds, strikes)

    def _keep(self, record: RoundRecord) -> None:
        self.records.append(record)
        self.n_records += 1
        if self.on_record is not None:
            self.on_record(record)

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume identically (JSON-serialisable).

        The per-round generator is ``default_rng([seed, round])``, so the round number is the
        whole RNG state.
        """
        return {
            "version": STATE_VERSION,
            "seed": self.options.seed,
            "selection": self.options.selection,
            "last_round": self._last_round,
            "n_records": self.n_records,
            "sketch_method": self.sketch_method,
            "registry": self.registry.state_dict(),
            "policy": self.policy.state_dict(),
            **({"controls": self.controls.state_dict()} if self.controls else {}),
            "bench": self.bench.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict`, also of version 1 (the constructor arguments must
        match)."""
        version = state.get("version")
        if version == 1:
            state = {**state, "policy": {k: state[k] for k in V1_POLICY_KEYS}}
        elif version != STATE_VERSION:
            raise ValueError(f"unsupported state version {version!r}")
        if int(state["seed"]) != self.options.seed:
            raise ValueError(
                f"state was saved with seed {state['seed']}, this has {self.options.seed}"
            )
        self._last_round = int(state["last_round"])
        # states saved before the option existed sketched with the Gaussian projection
        self.sketch_method = str(state.get("sketch_method", "gaussian"))
        self.n_records = int(state["n_records"])
        self.registry = NodeRegistry(SizeRules.of(self.options))
        self.registry.load_state_dict(state["registry"])
        self.policy.load_state_dict(state["policy"])
        if self.controls is not None:
            self.controls.load_state_dict(state.get("controls", {}))
        self.bench = Bench.from_state(state.get("bench"))
        self._pending, self._avail_key, self._sizes_cache = None, None, None


def _effective_options(strategy: Strategy, options: SelectionOptions) -> SelectionOptions:
    """The options as they apply with ``strategy``: ``estimator="ratio"`` when the wrapped
    strategy ignores reply weights (one WARNING), ``stratify_by="sketches"`` when nodes are not
    profiled (``profiling="auto"``)."""
    changes: dict[str, Any] = {}
    ignoring = weight_ignoring(strategy)
    if ignoring is not None and options.estimator in ("ht", "difference"):
        log(WARNING, "StratifiedSelection: %s, so HT / difference re-weighting cannot apply; "
            "using estimator='ratio' (replies passed unchanged). The aggregate is that rule on "
            "the stratified sample, not a design-unbiased estimate.", ignoring)
        changes["estimator"] = "ratio"
    if options.profiling == "auto" and options.stratify_by == "histograms":
        changes["stratify_by"] = "sketches"
    return dataclasses.replace(options, **changes) if changes else options
