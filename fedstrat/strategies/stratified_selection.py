"""``StratifiedSelection``: stratified client selection around any Flower strategy."""

from __future__ import annotations

import contextlib
import copy
import json
import math
import time
from collections.abc import Iterable
from logging import INFO, WARNING
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from flwr.supercore import log

from fedstrat.sampling import (
    ClusteredSampler,
    MultinomialSampler,
    PowerOfChoiceSampler,
    Sampler,
    Selection,
    Strata,
    StratifiedSampler,
    StratumVarianceTracker,
    UniformSampler,
    choose_design,
    design_neyman_allocation,
    neyman_allocation,
    predicted_variance,
    proportional_allocation,
    sketch_update,
    stratify_by_histograms,
    stratify_by_sketches,
)

from .array_codec import decode_array, encode_like
from .node_registry import NodeRegistry
from .payload_grid import PayloadGrid
from .profiling import make_profile_messages, parse_profile_reply
from .reply_validation import ValidReply, array_signature, validate_train_reply
from .responder_weights import responder_weights

SELECTIONS = ("stratified", "uniform", "multinomial", "clustered1", "clustered2", "poc")
DESIGNS = ("auto", "pps", "srswor")
ALLOCATIONS = ("neyman", "proportional", "cost")
ESTIMATORS = ("ht", "ratio")
STRATIFY_BY = ("histograms", "sketches")


_BLAS: Any = None


def single_thread_blas() -> Any:
    """Context limiting BLAS to one thread: the sketch product (m x D) @ (D x dim) is small,
    and a multi-threaded BLAS on a loaded machine can be 10-100x slower (spin-waiting)."""
    global _BLAS
    if _BLAS is None:
        try:
            from threadpoolctl import ThreadpoolController

            _BLAS = ThreadpoolController()
        except ImportError:  # pragma: no cover - threadpoolctl ships with scikit-learn
            _BLAS = False
    if _BLAS is False:
        return contextlib.nullcontext()
    return _BLAS.limit(limits=1, user_api="blas")


def find_attr(strategy: Strategy, name: str, default: Any = None) -> Any:
    """``strategy.<name>``, looking through wrappers' ``.strategy`` (e.g. Flower's DP wrappers)."""
    seen = 0
    obj: Any = strategy
    while obj is not None and seen < 16:
        if hasattr(obj, name):
            return getattr(obj, name)
        obj = getattr(obj, "strategy", None)
        seen += 1
    return default


class StratifiedSelection(Strategy):
    """Wrap a Flower strategy; choose its training clients by stratified sampling.

    The wrapped strategy (FedAvg, FedProx, FedAdam, FedYogi or any
    ``flwr.serverapp.strategy.Strategy``) keeps its payload (``configure_train`` content such as
    FedProx's ``proximal-mu``), its aggregation rule and its server optimizer; this wrapper
    decides *which* nodes train and with *which weights* their updates enter the aggregate.

    Per round (``configure_train``): wait for nodes up to ``node_wait_timeout`` s; profile new
    nodes (``QUERY`` message, label histogram + size, see docs/design.md); stratify (k-means on
    label proportions, or on update sketches); choose the design (``design="auto"``:
    :func:`fedstrat.sampling.choose_design`) and the allocation (Neyman from tracked
    per-stratum stds, proportional, or cost-aware Neyman); draw a
    :class:`~fedstrat.sampling.Selection` with ``np.random.default_rng([seed, round])``.

    ``aggregate_train``: reject invalid replies (logged, never aggregated), re-weight
    responders (see :func:`~fedstrat.strategies.responder_weights.responder_weights`), then
    hand the replies to the wrapped strategy so that its rule yields

    * ``estimator="ht"`` (default): ``x_new = x_g + sum_i w_i (x_i - x_g)``, the
      Horvitz-Thompson estimate, design-unbiased for ``x_g + sum_i p_i Delta_i`` (full
      participation). Implemented by rewriting each reply to ``x_g + W (x_i - x_g)``,
      ``W = sum_i w_i``, and its weight metric to ``w_i``: a normalised weighted average then
      returns exactly the HT estimate, and FedAdam/FedYogi take their pseudo-gradient from it.
      Unbiased, but its norm fluctuates with ``W`` (``W != 1`` in general).
    * ``estimator="ratio"``: only the weight metric is set to ``w_i``: the self-normalised
      (Hajek) ``sum_i w_i x_i / sum_i w_i``; slightly biased (O(1/m)) but never scales the
      update, often lower MSE when ``W`` varies a lot.

    Floating arrays only are rewritten; integer buffers are passed unchanged. The number of
    replies handed to the wrapped strategy equals the number of accepted replies, so Flower's
    wrappers that check reply counts still compose.

    Parameters
    ----------
    strategy : Strategy
        The wrapped Flower strategy.
    clients_per_round : int
        ``m``, training clients per round (fewer if fewer nodes are available).
    selection : str
        ``"stratified"`` (default) or a baseline: ``"uniform"``, ``"multinomial"``,
        ``"clustered1"``, ``"clustered2"`` (Fraboni et al. 2021), ``"poc"`` (Power-of-Choice,
        biased).
    design : str
        ``"auto"`` (choose number of strata and design by predicted variance, uniform if
        nothing beats it), ``"pps"`` or ``"srswor"``.
    allocation : str
        ``"neyman"`` (tracked ``S_h``), ``"proportional"`` (``m_h ∝ N_h`` for srswor,
        ``∝ P_h`` for pps) or ``"cost"`` (Neyman with ``c_h`` = mean train seconds).
    estimator : str
        ``"ht"`` or ``"ratio"`` (see above).
    stratify_by : str
        ``"histograms"`` (profile replies) or ``"sketches"`` (update sketches after
        ``warmup_rounds`` uniform rounds).
    n_strata : int | None
        Number of strata; None = automatic.
    max_strata : int | None
        Upper bound for the automatic choice.
    restratify_every : int
        Re-stratify every R rounds (0 = never).
    warmup_rounds : int
        Uniform rounds before sketch-based stratification (``stratify_by="sketches"`` or after
        profiling failed).
    min_per_stratum : int
        Lower bound of ``m_h``.
    node_wait_timeout : float
        Seconds to wait for ``clients_per_round`` nodes before using the available ones.
    profile_timeout : float
        Timeout of the profile query round trip.
    profile_epsilon : float
        Local DP epsilon asked from nodes for their label histograms (0 = exact).
    sketch_dim, sketch_seed : int
        Random-projection sketches of updates (:func:`fedstrat.sampling.sketch_update`).
    prior_std : float | None
        Prior per-stratum std for the tracker (None = pooled).
    variance_ema : float | None
        Exponential forgetting of the tracker (None = all rounds equally).
    poc_d : int | None
        ``d`` of Power-of-Choice (None = ``min(N, 2 m)``).
    cost_key : str
        Reply metric with training seconds (allocation ``"cost"``); without it the reply's
        round-trip time from message metadata is used.
    record_path : str | Path | None
        Append one JSON line per round there.
    seed : int
        Seed of stratification and of the per-round selection.
    poll_interval : float
        Seconds between node-count polls while waiting.
    """

    def __init__(
        self,
        strategy: Strategy,
        clients_per_round: int,
        *,
        selection: str = "stratified",
        design: str = "auto",
        allocation: str = "neyman",
        estimator: str = "ht",
        stratify_by: str = "histograms",
        n_strata: int | None = None,
        max_strata: int | None = None,
        restratify_every: int = 0,
        warmup_rounds: int = 1,
        min_per_stratum: int = 1,
        node_wait_timeout: float = 60.0,
        profile_timeout: float = 60.0,
        profile_epsilon: float = 0.0,
        sketch_dim: int = 64,
        sketch_seed: int = 0,
        prior_std: float | None = None,
        variance_ema: float | None = None,
        poc_d: int | None = None,
        cost_key: str = "train-seconds",
        record_path: str | Path | None = None,
        seed: int = 0,
        poll_interval: float = 1.0,
    ) -> None:
        if not isinstance(strategy, Strategy):
            raise ValueError(f"strategy must be a flwr Strategy, got {type(strategy).__name__}")
        for name, value, allowed in (
            ("selection", selection, SELECTIONS),
            ("design", design, DESIGNS),
            ("allocation", allocation, ALLOCATIONS),
            ("estimator", estimator, ESTIMATORS),
            ("stratify_by", stratify_by, STRATIFY_BY),
        ):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        if isinstance(clients_per_round, bool) or int(clients_per_round) != clients_per_round:
            raise ValueError("clients_per_round must be an integer")
        if clients_per_round < 1:
            raise ValueError(f"clients_per_round must be >= 1, got {clients_per_round}")
        if n_strata is not None and n_strata < 1:
            raise ValueError(f"n_strata must be >= 1 or None, got {n_strata}")
        if n_strata is not None and n_strata > clients_per_round:
            raise ValueError(
                "n_strata cannot exceed clients_per_round (every stratum needs m_h>=1)"
            )
        if max_strata is not None and max_strata < 2:
            raise ValueError(f"max_strata must be >= 2 or None, got {max_strata}")
        for name, value in (
            ("restratify_every", restratify_every),
            ("warmup_rounds", warmup_rounds),
            ("min_per_stratum", min_per_stratum),
        ):
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        for name, value in (
            ("node_wait_timeout", node_wait_timeout),
            ("profile_timeout", profile_timeout),
            ("poll_interval", poll_interval),
        ):
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be finite and >= 0, got {value}")
        if not math.isfinite(profile_epsilon) or profile_epsilon < 0:
            raise ValueError(f"profile_epsilon must be finite and >= 0, got {profile_epsilon}")
        if sketch_dim < 1:
            raise ValueError(f"sketch_dim must be >= 1, got {sketch_dim}")
        if poc_d is not None and poc_d < clients_per_round:
            raise ValueError("poc_d must be >= clients_per_round")
        self.strategy = strategy
        self.clients_per_round = int(clients_per_round)
        self.selection = selection
        self.design = design
        self.allocation = allocation
        self.estimator = estimator
        self.stratify_by = stratify_by
        self.n_strata = n_strata
        self.max_strata = max_strata
        self.restratify_every = int(restratify_every)
        self.warmup_rounds = int(warmup_rounds)
        self.min_per_stratum = int(min_per_stratum)
        self.node_wait_timeout = float(node_wait_timeout)
        self.profile_timeout = float(profile_timeout)
        self.profile_epsilon = float(profile_epsilon)
        self.sketch_dim = int(sketch_dim)
        self.sketch_seed = int(sketch_seed)
        self.prior_std = prior_std
        self.variance_ema = variance_ema
        self.poc_d = poc_d
        self.cost_key = cost_key
        self.record_path = Path(record_path) if record_path is not None else None
        self.seed = int(seed)
        self.poll_interval = float(poll_interval)
        self.weighted_by_key: str = find_attr(strategy, "weighted_by_key", "num-examples")

        self.registry = NodeRegistry()
        self.records: list[dict[str, Any]] = []
        self.n_records = 0
        # Strata over nodes: node -> stratum in 0..H-1; H = the "unknown" stratum of nodes
        # without features. ``_centroids`` (H, F) live in the stratification feature space.
        self._node_stratum: dict[int, int] = {}
        self._centroids: np.ndarray | None = None
        self._features_kind: str | None = None  # "histograms" | "sketches"
        self._resolved_design: str | None = None  # "pps" | "srswor" | "uniform"
        self._design_reason = ""
        self._prior_stds: np.ndarray | None = None  # feature-proxy sigma_h (before updates)
        self._prior_means: tuple[np.ndarray, np.ndarray] | None = None  # (means, counts)
        self._stratified_round = 0
        self._fallback = False  # profiling failed -> sketches
        self.tracker: StratumVarianceTracker | None = None
        self._round: dict[str, Any] | None = None  # state between configure and aggregate
        self._avail_key: tuple[int, ...] | None = None
        self._strata_version = 0
        self._pop_cache: tuple[Any, np.ndarray, np.ndarray | None] | None = None
        self._last_round = 0

    # ------------------------------------------------------------------ Strategy API
    def summary(self) -> None:
        """Log this wrapper's configuration, then the wrapped strategy's."""
        log(INFO, "\t├──> StratifiedSelection:")
        log(
            INFO,
            "\t│\t├── clients per round: %d | selection: %s | design: %s",
            self.clients_per_round,
            self.selection,
            self.design,
        )
        log(
            INFO,
            "\t│\t├── allocation: %s | estimator: %s | stratify by: %s (n_strata=%s)",
            self.allocation,
            self.estimator,
            self.stratify_by,
            self.n_strata,
        )
        log(
            INFO,
            "\t│\t└── seed: %d | node wait: %.1fs | profile timeout: %.1fs",
            self.seed,
            self.node_wait_timeout,
            self.profile_timeout,
        )
        log(INFO, "\t└──> Wrapped strategy %s:", type(self.strategy).__name__)
        self.strategy.summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Select this round's nodes by the configured design; one message per node."""
        available = sorted(int(n) for n in self.wait_for_nodes(grid))
        key = tuple(available)
        same_nodes = key == self._avail_key
        new = [] if same_nodes else self.registry.unseen(available)
        if new:
            self.profile_nodes(server_round, new, grid)
        self._avail_key = key
        self.update_strata(server_round, available, same_nodes)
        plan = self.plan_round(server_round, available)
        selected = [available[i] for i in plan["selection"].ids]
        payload = self.inner_payload(server_round, arrays, config, grid, selected)
        messages = [
            Message(
                content=payload.content,
                dst_node_id=node,
                message_type=payload.metadata.message_type,
                group_id=payload.metadata.group_id or str(server_round),
                ttl=payload.metadata.ttl,
            )
            for node in selected
        ]
        plan["selected"] = selected
        plan["messages"] = messages  # the grid sets their message ids when it pushes them
        plan["sent_at"] = {m.metadata.dst_node_id: m.metadata.created_at for m in messages}
        plan["signature"] = array_signature(arrays)
        plan["global"] = arrays
        self._round = plan
        log(
            INFO,
            "configure_train: %s selected %d of %d nodes (%s)",
            self.selection,
            len(selected),
            len(available),
            plan["design"],
        )
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Validate, re-weight and aggregate through the wrapped strategy; record the round."""
        plan = self._round
        if plan is None or plan["round"] != server_round:
            raise RuntimeError(
                f"aggregate_train(round {server_round}) without configure_train for that round"
            )
        replies = list(replies)
        sel: Selection = plan["selection"]
        selected: list[int] = plan["selected"]
        index = {node: k for k, node in enumerate(selected)}
        valid: list[ValidReply] = []
        rejected: list[dict[str, Any]] = []
        failures: list[dict[str, Any]] = []
        seen: set[int] = set()
        asked = {
            m.metadata.message_id: int(m.metadata.dst_node_id)
            for m in plan.get("messages", [])
            if m.metadata.message_id
        }
        for reply in replies:
            result = self.validate_reply(reply, plan)
            node = int(reply.metadata.src_node_id)
            if reply.has_error():
                # A SuperLink answers for an unreachable node with an error reply whose sender
                # is the SuperLink itself (node id 1): blame the node the instruction went to.
                node = asked.get(reply.metadata.reply_to_message_id, node)
            if isinstance(result, str):
                entry = {"node": node, "reason": result}
                (failures if reply.has_error() else rejected).append(entry)
                log(WARNING, "aggregate_train: rejected reply of node %d: %s", node, result)
                continue
            if node in seen:
                rejected.append({"node": node, "reason": "duplicate reply"})
                log(WARNING, "aggregate_train: rejected duplicate reply of node %d", node)
                continue
            seen.add(node)
            valid.append(result)
        for node in selected:
            if node not in seen and not any(f["node"] == node for f in failures + rejected):
                failures.append({"node": node, "reason": "no reply"})
        responded = np.zeros(len(selected), dtype=bool)
        for v in valid:
            responded[index[v.node_id]] = True
        weights, notes = self.responder_weights(sel, responded, plan)
        for note in notes:
            log(INFO, "aggregate_train: %s", note)
        w_valid = np.array([weights[index[v.node_id]] for v in valid], dtype=np.float64)

        global_np = {k: decode_array(a) for k, a in plan["global"].items()}
        deltas = self.flat_deltas(valid, global_np)
        self.observe_replies(valid, deltas, w_valid, plan)

        if valid:
            new_replies = self.rewrite_replies(valid, w_valid, global_np, deltas)
            arrays, metrics = self.strategy.aggregate_train(server_round, new_replies)
        else:
            log(WARNING, "aggregate_train: no valid reply in round %d", server_round)
            arrays, metrics = None, None
        record = self.make_record(plan, valid, w_valid, rejected, failures, notes)
        self.save_record(record)
        if metrics is None:
            metrics = MetricRecord()
        for key, value in self.record_metrics(record).items():
            metrics[key] = value
        self._round = None
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
        """Delegate to the wrapped strategy."""
        return self.strategy.aggregate_evaluate(server_round, replies)

    # ------------------------------------------------------------------ hooks: nodes
    def wait_for_nodes(self, grid: Grid) -> list[int]:
        """Connected node ids, waiting up to ``node_wait_timeout`` s for ``clients_per_round``.

        Returns the available nodes at the deadline (WARNING if fewer than wanted); raises
        RuntimeError if none is connected.
        """
        deadline = time.monotonic() + self.node_wait_timeout
        while True:
            ids = list(grid.get_node_ids())
            if len(ids) >= self.clients_per_round:
                return ids
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            log(
                INFO,
                "Waiting for nodes: %d of %d connected (%.0fs left)",
                len(ids),
                self.clients_per_round,
                remaining,
            )
            time.sleep(min(self.poll_interval, remaining))
        if not ids:
            raise RuntimeError(
                f"No node connected after waiting {self.node_wait_timeout:.1f}s "
                "(node_wait_timeout); start SuperNodes or raise the timeout."
            )
        log(
            WARNING,
            "Only %d nodes connected after %.1fs (wanted %d): using all of them",
            len(ids),
            self.node_wait_timeout,
            self.clients_per_round,
        )
        return ids

    def profile_nodes(self, server_round: int, node_ids: list[int], grid: Grid) -> None:
        """Send the profile ``QUERY`` to ``node_ids`` and record sizes and label histograms.

        Nodes that answer with an error, an unusable reply or not at all are marked failed
        (logged); they are never queried again.
        """
        msgs = make_profile_messages(
            node_ids, self.profile_epsilon, self.seed, group_id=f"profile-{server_round}"
        )
        replies = list(grid.send_and_receive(msgs, timeout=self.profile_timeout))
        answered: set[int] = set()
        failed: dict[str, int] = {}
        for reply in replies:
            node = int(reply.metadata.src_node_id)
            if node not in node_ids or node in answered:
                continue
            answered.add(node)
            parsed = parse_profile_reply(reply)
            if isinstance(parsed, str):
                self.registry.set_profile_failed(node, parsed)
                failed[parsed] = failed.get(parsed, 0) + 1
            else:
                self.registry.set_profile(node, *parsed)
        for node in node_ids:
            if node not in answered:
                self.registry.set_profile_failed(node, "no profile reply")
                failed["no profile reply"] = failed.get("no profile reply", 0) + 1
        n_ok = len(node_ids) - sum(failed.values())
        log(
            INFO,
            "Profiled %d new nodes: %d ok, %d failed",
            len(node_ids),
            n_ok,
            sum(failed.values()),
        )
        for reason, count in failed.items():
            log(WARNING, "Profiling failed for %d nodes: %s", count, reason[:200])

    # ------------------------------------------------------------------ hooks: strata
    def _feature_nodes(self, nodes: list[int], kind: str) -> list[int]:
        if kind == "histograms":
            return [n for n in nodes if sum(self.registry.histograms.get(n, [])) > 0]
        return [n for n in nodes if n in self.registry.sketches]

    def _features(self, nodes: list[int], kind: str) -> np.ndarray:
        if kind == "histograms":
            x = self.registry.histogram_matrix(nodes)
            return x / x.sum(axis=1, keepdims=True)
        return self.registry.sketch_matrix(nodes)

    def update_strata(
        self, server_round: int, available: list[int], same_nodes: bool = False
    ) -> None:
        """Build, rebuild or extend the strata (stratified selection only).

        Histograms: at the first round. Sketches (or after profiling failed for all nodes):
        after ``warmup_rounds`` uniform rounds. ``restratify_every=R`` rebuilds every R rounds.
        Nodes seen later go to the stratum with the nearest centroid, or to the "unknown"
        stratum while they have no features.
        """
        if self.selection != "stratified":
            return
        kind = "sketches" if (self.stratify_by == "sketches" or self._fallback) else "histograms"
        if (
            kind == "histograms"
            and self._features_kind != "histograms"
            and not self._feature_nodes(available, "histograms")
        ):
            if not self._fallback:
                log(
                    WARNING,
                    "Profiling gave no label histogram (ClientApp without profile "
                    "handler?): sampling uniformly for %d warm-up rounds, then stratifying "
                    "by update sketches",
                    self.warmup_rounds,
                )
            self._fallback = True
            kind = "sketches"
        due = (
            self._centroids is None
            or (
                self.restratify_every > 0
                and server_round - self._stratified_round >= self.restratify_every
            )
            or kind != self._features_kind
        )
        if due:
            if kind == "sketches" and server_round <= self.warmup_rounds:
                return
            nodes = self._feature_nodes(sorted(set(available) | set(self._node_stratum)), kind)
            n_unknown = len(set(available) - set(nodes))
            if len(nodes) >= 2:
                self.stratify(server_round, nodes, kind, n_unknown)
        if self._centroids is not None and not (
            same_nodes and not due and self._features_kind == "histograms"
        ):
            self.assign_new_nodes(available)

    def stratify(self, server_round: int, nodes: list[int], kind: str, n_unknown: int = 0) -> None:
        """Stratify ``nodes`` on ``kind`` features and choose the design; reset the tracker.

        ``n_unknown`` available nodes have no features: they will form their own stratum,
        which needs one of the ``clients_per_round`` slots.
        """
        x = self._features(nodes, kind)
        sizes = self.registry.sizes(nodes)
        m = min(self.clients_per_round - (1 if n_unknown else 0), len(nodes))
        reason = ""
        if self.design == "auto":
            cands: tuple[int, ...] = (
                (self.n_strata,)
                if self.n_strata
                else tuple(
                    k
                    for k in (2, 3, 4, 5, 6, 8, 10, 12, 16, 20)
                    if self.max_strata is None or k <= self.max_strata
                )
            )
            if m < 2 or (self.n_strata or 2) < 2:
                labels = np.zeros(len(nodes), dtype=np.int64)
                design = "uniform"
                reason = "fallback to uniform: fewer than 2 strata possible"
            else:
                choice = choose_design(
                    sizes,
                    x,
                    m,
                    candidate_strata=cands,
                    seed=self.seed,
                    normalize=False,
                    min_per_stratum=max(self.min_per_stratum, 1),
                )
                design, reason = choice.design, choice.reason
                labels = (
                    choice.strata.labels
                    if choice.strata is not None
                    else np.zeros(len(nodes), dtype=np.int64)
                )
        else:
            max_k = min(self.max_strata or 20, m)
            fn = stratify_by_histograms if kind == "histograms" else stratify_by_sketches
            if self.n_strata is not None:
                k = min(self.n_strata, len(nodes))
                strata = fn(x, n_strata=k, seed=self.seed) if k >= 2 else None
            else:
                strata = fn(x, n_strata=None, seed=self.seed, max_strata=max_k)
            labels = strata.labels if strata is not None else np.zeros(len(nodes), dtype=np.int64)
            design = self.design
            reason = f"design={self.design} requested; {int(labels.max()) + 1} strata ({kind})"
        h = int(labels.max()) + 1
        self._node_stratum = {n: int(lab) for n, lab in zip(nodes, labels, strict=True)}
        self._centroids = np.array([x[labels == k].mean(axis=0) for k in range(h)])
        self._features_kind = kind
        self._resolved_design = design
        self._design_reason = reason
        self._stratified_round = server_round
        self._strata_version += 1
        self.tracker = StratumVarianceTracker(
            h + 1, self.sketch_dim, prior_std=self.prior_std, ema=self.variance_ema
        )
        # Feature proxy of sigma_h (used before any update was observed) and seeding of the
        # tracker with the sketches collected so far.
        proxy = StratumVarianceTracker(h + 1, x.shape[1])
        seeded = self.tracker
        p = sizes / sizes.sum()
        for i, n in enumerate(nodes):
            proxy.update(int(labels[i]), x[i], float(p[i]))
            if n in self.registry.sketches:
                seeded.update(int(labels[i]), np.asarray(self.registry.sketches[n]), float(p[i]))
        self._prior_stds = proxy.stds()
        self._prior_means = (proxy.means(), proxy.counts())
        log(
            INFO,
            "Stratified %d nodes on %s into %d strata (sizes %s); design: %s (%s)",
            len(nodes),
            kind,
            h,
            np.bincount(labels, minlength=h).tolist(),
            design,
            reason,
        )

    def assign_new_nodes(self, nodes: list[int]) -> None:
        """Put nodes without a stratum (or in "unknown" that now have features) in the
        stratum with the nearest centroid; nodes without features go to "unknown"."""
        assert self._centroids is not None and self._features_kind is not None
        unknown = len(self._centroids)
        todo = [n for n in nodes if self._node_stratum.get(n, unknown) == unknown]
        if not todo:
            return
        have = set(self._feature_nodes(todo, self._features_kind))
        with_f = [n for n in todo if n in have]
        if with_f:
            x = self._features(with_f, self._features_kind)
            d = ((x[:, None, :] - self._centroids[None, :, :]) ** 2).sum(axis=2)
            for n, k in zip(with_f, d.argmin(axis=1), strict=True):
                self._node_stratum[n] = int(k)
        for n in todo:
            if n not in have:
                self._node_stratum[n] = unknown
        self._strata_version += 1

    # ------------------------------------------------------------------ hooks: selection
    def plan_round(self, server_round: int, available: list[int]) -> dict[str, Any]:
        """Draw this round's selection over ``available`` (population indices)."""
        sizes, glob = self.population_arrays(available)
        m = min(self.clients_per_round, len(available))
        rng = np.random.default_rng([self.seed, server_round])
        plan: dict[str, Any] = {"round": server_round, "population": available, "sizes": sizes}
        design = self.current_design()
        if design in ("pps", "srswor"):
            present, local = np.unique(glob, return_inverse=True)
            if len(present) * max(self.min_per_stratum, 1) > m:
                log(
                    WARNING,
                    "%d strata present but only %d clients per round: uniform this round",
                    len(present),
                    m,
                )
                design = "uniform"
            else:
                strata = Strata(local.reshape(-1))
                alloc, stds, basis = self.compute_allocation(strata, sizes, present, m, design)
                sampler: Sampler = StratifiedSampler(sizes, strata, alloc, design)
                counts = strata.sizes.astype(np.float64)
                masses = strata.masses(sizes)
                means = self.stratum_means(present, masses, basis)
                prediction = predicted_variance(
                    counts, masses, stds, alloc, design, means=means, m=m
                )
                plan.update(
                    strata=strata,
                    present=present,
                    allocation=alloc,
                    stds=stds,
                    basis=basis,
                    counts=counts,
                    masses=masses,
                    prediction=prediction,
                )
        if design not in ("pps", "srswor"):
            sampler = self.make_baseline_sampler(design, available, sizes, m)
        plan["design"] = design
        plan["sampler"] = sampler
        plan["selection"] = sampler.sample(rng)
        plan["without_replacement"] = design in ("pps", "srswor", "uniform", "uniform-warmup")
        return plan

    def population_arrays(self, available: list[int]) -> tuple[np.ndarray, np.ndarray | None]:
        """Sizes ``n_i`` and global stratum labels (None without strata) of ``available``,
        cached while nodes, sizes and strata are unchanged (O(N) work only when they change)."""
        version = (tuple(available), self.registry.version, self._strata_version)
        if self._pop_cache is not None and self._pop_cache[0] == version:
            return self._pop_cache[1], self._pop_cache[2]
        sizes = self.registry.sizes(available)
        glob = None
        if self._centroids is not None and all(n in self._node_stratum for n in available):
            glob = np.array([self._node_stratum[n] for n in available], dtype=np.int64)
        self._pop_cache = (version, sizes, glob)
        return sizes, glob

    def current_design(self) -> str:
        """The design used this round: a baseline name, ``"pps"``/``"srswor"``/``"uniform"``
        for stratified selection, or ``"uniform-warmup"`` before strata exist."""
        if self.selection != "stratified":
            return self.selection
        if self._resolved_design is None:
            return "uniform-warmup"
        return self._resolved_design

    def make_baseline_sampler(
        self, design: str, available: list[int], sizes: np.ndarray, m: int
    ) -> Sampler:
        """Sampler of a non-stratified design over the available nodes."""
        if design in ("uniform", "uniform-warmup"):
            return UniformSampler(sizes, m)
        if design == "multinomial":
            return MultinomialSampler(sizes, m)
        if design == "clustered1":
            return ClusteredSampler(sizes, m, algorithm=1)
        if design == "clustered2":
            feats = None
            if all(n in self.registry.sketches for n in available):
                feats = self.registry.sketch_matrix(available)
            elif len(self._feature_nodes(available, "histograms")) == len(available):
                feats = self._features(available, "histograms")
            if feats is None:
                log(
                    INFO,
                    "clustered2: no representative vectors for every node yet, "
                    "using algorithm 1 this round",
                )
                return ClusteredSampler(sizes, m, algorithm=1)
            return ClusteredSampler(sizes, m, algorithm=2, updates=feats)
        if design == "poc":
            d = min(len(available), self.poc_d or 2 * m)
            sampler = PowerOfChoiceSampler(sizes, m, max(d, m))
            losses = [self.registry.losses.get(n, np.inf) for n in available]
            sampler.set_losses(np.asarray(losses, dtype=np.float64))
            return sampler
        raise ValueError(f"unknown design {design!r}")

    def stratum_costs(self, present: np.ndarray) -> np.ndarray:
        """``c_h``: mean observed train seconds of the stratum's nodes (overall mean where a
        stratum has none; 1 when nothing was observed)."""
        per: dict[int, list[float]] = {}
        for node, h in self._node_stratum.items():
            c = self.registry.mean_cost(node)
            if c is not None:
                per.setdefault(h, []).append(c)
        allc = [c for v in per.values() for c in v]
        fill = float(np.mean(allc)) if allc else 1.0
        costs = np.array([np.mean(per[h]) if h in per else fill for h in present.tolist()])
        return np.maximum(costs, 1e-9 if fill > 0 else 1.0)

    def compute_allocation(
        self, strata: Strata, sizes: np.ndarray, present: np.ndarray, m: int, design: str
    ) -> tuple[np.ndarray, np.ndarray, str]:
        """``(m_h, sigma_h, basis)`` for the present strata.

        ``sigma_h`` come from the tracker once some stratum has two observed updates
        ("tracked"; strata with fewer get the tracker's pooled prior), before that from the
        stratification features ("prior"). Neyman: ``m_h ∝ P_h sigma_h`` (pps) or
        ``∝ N_h S_{y,h}`` (srswor) via :func:`design_neyman_allocation`; cost:
        ``neyman_allocation(..., costs=c_h)``.
        """
        assert self.tracker is not None
        counts = strata.sizes.astype(np.float64)
        masses = strata.masses(sizes)
        if (self.tracker.counts() >= 2).any():
            stds, basis = self.tracker.stds()[present], "tracked"
        elif self._prior_stds is not None:
            prior = self._prior_stds.copy()
            observed = prior[:-1] if len(prior) > 1 else prior
            prior[-1] = float(np.mean(observed))  # unknown stratum: mean of the others
            stds, basis = prior[present], "prior"
        else:
            stds, basis = np.ones(len(present)), "flat"
        lo = self.min_per_stratum
        if self.allocation == "proportional":
            if design == "pps":
                alloc = proportional_allocation(masses, m, lo, capacity=counts)
            else:
                alloc = proportional_allocation(counts, m, lo)
        elif self.allocation == "neyman":
            alloc = design_neyman_allocation(counts, masses, stds, m, design, lo)
        else:
            costs = self.stratum_costs(present)
            if design == "pps":
                alloc = neyman_allocation(masses, stds, m, lo, costs=costs, capacity=counts)
            else:
                # srswor: S_{y,h} ≈ (P_h/N_h) sigma_h sqrt(N_h/(N_h-1)), as in
                # design_neyman_allocation, then m_h ∝ N_h S_{y,h} / sqrt(c_h).
                s_y = masses / counts * stds * np.sqrt(counts / np.maximum(counts - 1.0, 1.0))
                alloc = neyman_allocation(counts, s_y, m, lo, costs=costs)
        return np.asarray(alloc, dtype=np.int64), np.asarray(stds, dtype=np.float64), basis

    def inner_payload(
        self,
        server_round: int,
        arrays: ArrayRecord,
        config: ConfigRecord,
        grid: Grid,
        selected: list[int],
    ) -> Message:
        """The wrapped strategy's training message (content + type) for this round.

        The wrapped strategy sees a :class:`PayloadGrid` listing only the selected nodes (padded
        to its ``min_available_nodes`` / ``min_train_nodes``), so its own node wait returns at
        once and it builds only a few messages; its first message is the payload.
        """
        need = max(
            1,
            int(find_attr(self.strategy, "min_available_nodes", 0) or 0),
            int(find_attr(self.strategy, "min_train_nodes", 0) or 0),
        )
        view = PayloadGrid(grid, selected, min_count=need)
        msgs = list(self.strategy.configure_train(server_round, arrays, config, view))
        if not msgs:
            raise RuntimeError(
                f"The wrapped strategy {type(self.strategy).__name__} configured no training "
                "message (e.g. fraction_train=0.0); StratifiedSelection needs one to copy its "
                "payload. Use fraction_train > 0 in the wrapped strategy."
            )
        return msgs[0]

    # ------------------------------------------------------------------ hooks: aggregation
    def validate_reply(self, reply: Message, plan: dict[str, Any]) -> ValidReply | str:
        """Decoded reply, or the reason to reject it (see :func:`validate_train_reply`)."""
        return validate_train_reply(
            reply, plan["signature"], set(plan["selected"]), self.weighted_by_key
        )

    def responder_weights(
        self, sel: Selection, responded: np.ndarray, plan: dict[str, Any]
    ) -> tuple[np.ndarray, list[str]]:
        """Aggregation weights of the responders (non-responders 0)."""
        if plan["without_replacement"]:
            certainty = sel.inclusion >= 1.0 - 1e-12
        else:
            certainty = np.zeros(len(sel), dtype=bool)
        return responder_weights(sel.weights, sel.strata, certainty, responded)

    def flat_deltas(
        self, valid: list[ValidReply], global_np: dict[str, np.ndarray]
    ) -> np.ndarray | None:
        """``(R, D)`` float64 matrix of flattened floating-point updates ``x_i - x_g`` (keys in
        the order of the global arrays; integer arrays left out)."""
        keys = [k for k, v in global_np.items() if v.dtype.kind == "f"]
        if not valid or not keys:
            return None
        g = np.concatenate([global_np[k].ravel() for k in keys]).astype(np.float64)
        out = np.empty((len(valid), g.size))
        for r, v in enumerate(valid):
            out[r] = np.concatenate([v.arrays[k].ravel() for k in keys])
        out -= g
        return out

    def observe_replies(
        self,
        valid: list[ValidReply],
        deltas: np.ndarray | None,
        weights: np.ndarray,
        plan: dict[str, Any],
    ) -> None:
        """Store sizes, sketches, losses and costs; update the per-stratum tracker.

        The tracker gets the sketch of ``Delta_i`` with the HT weight ``w_i`` of the responder,
        as :class:`~fedstrat.sampling.StratumVarianceTracker` expects (p-weighted stratum
        moments for :func:`~fedstrat.sampling.predicted_variance`).
        """
        sketches = None
        if deltas is not None:
            with single_thread_blas():
                sketches = sketch_update(deltas, self.sketch_dim, self.sketch_seed)
        now = time.time()
        for r, v in enumerate(valid):
            loss = v.metrics.get("train-loss")
            cost = v.metrics.get(self.cost_key)
            if cost is None or isinstance(cost, list):
                sent = plan["sent_at"].get(v.node_id)
                created = v.message.metadata.created_at
                cost = (created or now) - sent if sent else None
            self.registry.observe_train(
                v.node_id,
                num_examples=v.num_examples,
                sketch=None if sketches is None else sketches[r],
                loss=None if loss is None or isinstance(loss, list) else float(loss),
                cost=None if cost is None else float(cost),
            )
            if (
                sketches is not None
                and self.tracker is not None
                and weights[r] > 0
                and v.node_id in self._node_stratum
            ):
                self.tracker.update(self._node_stratum[v.node_id], sketches[r], weights[r])

    def rewrite_replies(
        self,
        valid: list[ValidReply],
        weights: np.ndarray,
        global_np: dict[str, np.ndarray],
        deltas: np.ndarray | None = None,
    ) -> list[Message]:
        """Replies for the wrapped strategy: weight metric ``w_i``; with ``estimator="ht"``
        floating arrays ``x_g + W (x_i - x_g)``, ``W = sum_i w_i`` (computed in float64 from
        ``deltas`` = :meth:`flat_deltas`, cast back to each array's dtype)."""
        big_w = float(weights.sum())
        float_keys = [k for k, a in global_np.items() if a.dtype.kind == "f"]
        if self.estimator == "ht" and float_keys and deltas is None:
            deltas = self.flat_deltas(valid, global_np)
        bounds: dict[str, tuple[int, int]] = {}
        start = 0
        for k in float_keys:
            bounds[k] = (start, start + global_np[k].size)
            start += global_np[k].size
        g_flat = (
            np.concatenate([global_np[k].ravel() for k in float_keys]).astype(np.float64)
            if float_keys
            else None
        )
        out = []
        for r, (v, w) in enumerate(zip(valid, weights, strict=True)):
            content = RecordDict()
            for key, rec in v.message.content.items():
                content[key] = rec
            if self.estimator == "ht":
                record = v.message.content[v.array_key]
                new: dict[str, Array] = {}
                flat = None if g_flat is None else g_flat + big_w * deltas[r]
                for k, x in v.arrays.items():
                    if k in bounds:
                        a, b = bounds[k]
                        val = flat[a:b].reshape(x.shape).astype(x.dtype)
                        new[k] = encode_like(record[k], val)
                    else:
                        new[k] = record[k]
                content[v.array_key] = ArrayRecord(new)
            metrics = MetricRecord(dict(v.metrics))
            metrics[self.weighted_by_key] = float(w)
            content[v.metric_key] = metrics
            out.append(Message(content=content, metadata=copy.copy(v.message.metadata)))
        return out

    # ------------------------------------------------------------------ records
    def make_record(
        self,
        plan: dict[str, Any],
        valid: list[ValidReply],
        weights: np.ndarray,
        rejected: list[dict[str, Any]],
        failures: list[dict[str, Any]],
        notes: list[str],
    ) -> dict[str, Any]:
        """The per-round record (JSON-serialisable)."""
        sel: Selection = plan["selection"]
        rec: dict[str, Any] = {
            "round": plan["round"],
            "selection": self.selection,
            "design": plan["design"],
            "design_reason": self._design_reason,
            "estimator": self.estimator,
            "allocation_rule": self.allocation,
            "n_available": len(plan["population"]),
            "selected": [int(n) for n in plan["selected"]],
            "selection_weights": [float(w) for w in sel.weights],
            "inclusion": [float(p) for p in sel.inclusion],
            "selected_strata": (
                None
                if sel.strata is None or "present" not in plan
                else [int(h) for h in plan["present"][sel.strata]]
            ),
            "responders": [v.node_id for v in valid],
            "weights": [float(w) for w in weights],
            "rejected": rejected,
            "failures": failures,
            "notes": notes,
            "strata": None,
            "N_h": None,
            "P_h": None,
            "m_h": None,
            "S_h": None,
            "pred_var": None,
            "pred_var_uniform": None,
            "var_ratio": None,
        }
        if "strata" in plan:
            pred = plan["prediction"]
            rec.update(
                strata=[int(h) for h in plan["present"]],
                N_h=[int(c) for c in plan["counts"]],
                P_h=[float(x) for x in plan["masses"]],
                m_h=[int(a) for a in plan["allocation"]],
                S_h=[float(x) for x in plan["stds"]],
                S_h_basis=plan["basis"],
                pred_var=float(pred.stratified),
                pred_var_uniform=float(pred.uniform),
                var_ratio=(float(pred.uniform / pred.stratified) if pred.stratified > 0 else None),
            )
        return rec

    def stratum_means(
        self, present: np.ndarray, masses: np.ndarray, basis: str
    ) -> np.ndarray | None:
        """Stratum means ``Dbar_h`` matching the ``sigma_h`` of ``basis``: tracked sketch means
        ("tracked") or feature means ("prior"); unobserved strata get the P-weighted mean of
        the observed ones (no between-strata contribution). None otherwise."""
        if basis == "tracked" and self.tracker is not None:
            means, counts = self.tracker.means()[present], self.tracker.counts()[present]
        elif basis == "prior" and self._prior_means is not None:
            means, counts = self._prior_means[0][present], self._prior_means[1][present]
        else:
            return None
        seen = counts > 0
        if not seen.any():
            return None
        if not seen.all():
            fill = (masses[seen] @ means[seen]) / masses[seen].sum()
            means[~seen] = fill
        return means

    def record_metrics(self, record: dict[str, Any]) -> dict[str, float]:
        """Scalar summaries added to the returned MetricRecord."""
        out: dict[str, float] = {
            "fedstrat-n-selected": float(len(record["selected"])),
            "fedstrat-n-responders": float(len(record["responders"])),
            "fedstrat-n-failed": float(len(record["failures"])),
            "fedstrat-n-rejected": float(len(record["rejected"])),
            "fedstrat-weight-sum": float(sum(record["weights"])),
        }
        if record["pred_var"] is not None:
            out["fedstrat-pred-var"] = record["pred_var"]
            out["fedstrat-pred-var-uniform"] = record["pred_var_uniform"]
            if record["var_ratio"] is not None:
                out["fedstrat-var-ratio"] = record["var_ratio"]
            out["fedstrat-n-strata"] = float(len(record["m_h"]))
        return out

    def save_record(self, record: dict[str, Any]) -> None:
        """Keep the record in ``self.records`` and append it to ``record_path``."""
        self.records.append(record)
        self.n_records += 1
        if self.record_path is not None:
            self.record_path.parent.mkdir(parents=True, exist_ok=True)
            with self.record_path.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(record) + "\n")

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume identically (JSON-serialisable).

        The per-round generator is ``default_rng([seed, round])``, so the round number is the
        whole RNG state.
        """
        tracker = None
        if self.tracker is not None:
            tracker = {
                k: (v.tolist() if isinstance(v, np.ndarray) else v)
                for k, v in self.tracker.state_dict().items()
            }
        return {
            "version": 1,
            "seed": self.seed,
            "last_round": self._last_round,
            "n_records": self.n_records,
            "registry": self.registry.state_dict(),
            "node_stratum": {str(k): v for k, v in self._node_stratum.items()},
            "centroids": None if self._centroids is None else self._centroids.tolist(),
            "features_kind": self._features_kind,
            "design": self._resolved_design,
            "design_reason": self._design_reason,
            "prior_stds": None if self._prior_stds is None else self._prior_stds.tolist(),
            "prior_means": None
            if self._prior_means is None
            else [self._prior_means[0].tolist(), self._prior_means[1].tolist()],
            "stratified_round": self._stratified_round,
            "fallback": self._fallback,
            "tracker": tracker,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict` (the constructor arguments must match)."""
        if state.get("version") != 1:
            raise ValueError(f"unsupported state version {state.get('version')!r}")
        if int(state["seed"]) != self.seed:
            raise ValueError(f"state was saved with seed {state['seed']}, this has {self.seed}")
        self._last_round = int(state["last_round"])
        self.n_records = int(state["n_records"])
        self.registry = NodeRegistry()
        self.registry.load_state_dict(state["registry"])
        self._node_stratum = {int(k): int(v) for k, v in state["node_stratum"].items()}
        c = state["centroids"]
        self._centroids = None if c is None else np.asarray(c, dtype=np.float64)
        self._features_kind = state["features_kind"]
        self._resolved_design = state["design"]
        self._design_reason = state["design_reason"]
        p = state["prior_stds"]
        self._prior_stds = None if p is None else np.asarray(p, dtype=np.float64)
        pm = state["prior_means"]
        self._prior_means = (
            None
            if pm is None
            else (np.asarray(pm[0], dtype=np.float64), np.asarray(pm[1], dtype=np.int64))
        )
        self._stratified_round = int(state["stratified_round"])
        self._fallback = bool(state["fallback"])
        t = state["tracker"]
        if t is None:
            self.tracker = None
        else:
            self.tracker = StratumVarianceTracker(
                int(t["n_strata"]), int(t["dim"]), prior_std=t["prior_std"], ema=t["ema"]
            )
            self.tracker.load_state_dict(t)
        self._round = None
        self._avail_key = None
        self._pop_cache = None
        self._strata_version += 1
