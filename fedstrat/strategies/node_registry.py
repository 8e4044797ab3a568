"""What the server knows about each Flower node: profile, latest update sketch, loss, cost."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from logging import WARNING
from typing import Any

import numpy as np

from fedstrat.wire import NUM_EXAMPLES

from .weight_cap import (
    CapEffect,
    FirstClaims,
    SizeRules,
    cap_effect,
    claim_mismatch,
    profile_mismatch,
    size_cap_value,
)

log = logging.getLogger("flwr").log


class NodeRegistry:
    """Per-node knowledge keyed by Flower node id (never by partition id).

    Holds for every node ever seen: its profile (``num-examples`` and label histogram, from the
    profile query) or the reason profiling failed, the number of examples it reported in its
    last training reply, the sketch of its last accepted update, its last ``train-loss`` and its
    mean training cost (seconds). Everything is plain Python so that :meth:`state_dict` is
    JSON-serialisable. Histograms and sketches are tuples of floats, which Python's garbage
    collector stops tracking: one list per node made every full collection walk N objects
    (~3 ms a round at 100k nodes).

    Sizes cannot be bought (``rules``, :mod:`.weight_cap`): a size is learned once (profile,
    else the first accepted training reply); a profile whose ``num-examples`` disagrees with its
    histogram is refused (the node counts as not profiled); :meth:`claim_problem` tells whether
    a later claim disagrees; :meth:`sizes` caps every size at ``rules.cap_multiple`` times the
    median learned size.
    """

    def __init__(self, rules: SizeRules | None = None) -> None:
        self.rules = SizeRules() if rules is None else rules
        self.num_examples: dict[int, float] = {}  # learned once: profile or first train reply
        self.histograms: dict[int, tuple[float, ...]] = {}
        self.profile_failed: dict[int, str] = {}  # node -> reason
        self.sketches: dict[int, tuple[float, ...]] = {}
        self.losses: dict[int, float] = {}
        self.cost_sum: dict[int, float] = {}
        self.cost_count: dict[int, int] = {}
        self.version = 0  # bumped whenever a size or a histogram changes
        self.sketch_updates = 0  # update sketches recorded by this object (not checkpointed)
        self._cut_reported: set[int] = set()  # nodes whose cut by the size cap was logged
        # caches of the O(N) per-round work, valid while the learned sizes are unchanged
        self._cap_cache: tuple[Any, float] | None = None
        self._effect_cache: tuple[Any, list[int], CapEffect] | None = None

    def _sizes_key(self) -> tuple[int, int, int]:
        """Changes whenever a learned size may have changed (set through this class's methods;
        the length and identity of the dict also catch a direct insertion or replacement)."""
        return (self.version, len(self.num_examples), id(self.num_examples))

    # ---------------------------------------------------------------- queries
    def known(self, node_id: int) -> bool:
        """True once the node was profiled (successfully or not)."""
        return node_id in self.histograms or node_id in self.profile_failed

    def unseen(self, node_ids: Sequence[int]) -> list[int]:
        """The nodes of ``node_ids`` never profiled."""
        return [n for n in node_ids if not self.known(n)]

    def size_cap(self) -> float:
        """``c = rules.cap_multiple * median(learned sizes)`` (``inf``: no cap); cached while
        the learned sizes are unchanged."""
        key = (self._sizes_key(), self.rules.cap_multiple)
        if self._cap_cache is None or self._cap_cache[0] != key:
            value = size_cap_value(list(self.num_examples.values()), self.rules.cap_multiple)
            self._cap_cache = (key, value)
        return self._cap_cache[1]

    def sizes(self, node_ids: Sequence[int]) -> np.ndarray:
        """``min(n_i, c)`` of the nodes (:meth:`size_cap`); unknown sizes are the mean of every
        known capped size (1 if none)."""
        cap, num = self.size_cap(), self.num_examples
        known = [min(v, cap) for v in num.values()]
        fill = float(np.mean(known)) if known else 1.0
        if fill <= 0:
            fill = 1.0
        return np.array([min(num[n], cap) if n in num else fill for n in node_ids],
                        dtype=np.float64)

    def first_claims(self, selected: Sequence[int]) -> FirstClaims | None:
        """The :class:`.weight_cap.FirstClaims` of a FedAvg round that drew ``selected``
        (None when every size among them is learned)."""
        num = self.num_examples
        unknown = frozenset(int(n) for n in selected if n not in num)
        if not unknown:
            return None
        fill = float(self.sizes([next(iter(unknown))])[0])
        return FirstClaims(unknown, fill, tuple(num.values()), self.rules.cap_multiple)

    def cap_effect(self, node_ids: Sequence[int]) -> CapEffect:
        """What :meth:`size_cap` does to ``node_ids`` (nodes cut, their claims, share removed);
        a WARNING the first time a node is cut. Cached while ``node_ids`` and the learned
        sizes are unchanged (the same nodes every round: no O(N) Python loop)."""
        key = (self._sizes_key(), self.rules.cap_multiple)
        ids = node_ids if isinstance(node_ids, tuple) else tuple(node_ids)  # the waiter's: shared
        cached = self._effect_cache
        if cached is not None and cached[0] == key and (cached[1] is ids or cached[1] == ids):
            return cached[2]
        get = self.num_examples.get
        effect = cap_effect(node_ids, [get(n) for n in node_ids], self.size_cap())
        self._effect_cache = (key, ids, effect)
        for node, claimed in zip(effect.nodes, effect.claimed, strict=True):
            if node not in self._cut_reported:
                self._cut_reported.add(node)
                log(WARNING, "Size of node %d (%.6g examples) cut to the size cap %.6g "
                    "(size_cap x median size)", node, claimed, effect.cap)
        return effect

    def claim_problem(self, node_id: int, claimed: float, key: str = NUM_EXAMPLES) -> str | None:
        """Why a training reply's weight metric ``key`` = ``claimed`` disagrees with the node's
        learned size (None if it agrees or nothing was learned yet). A profiled node's size is
        compared only with ``num-examples`` claims (another weight metric has other units)."""
        learned = self.num_examples.get(node_id)
        if learned is None or (key != NUM_EXAMPLES and node_id in self.histograms):
            return None
        return claim_mismatch(claimed, learned, self.rules.tolerance, key)

    def histogram_matrix(self, node_ids: list[int]) -> np.ndarray:
        """Label histograms of ``node_ids`` (all must have one), as a float (N, C) array."""
        return np.array([self.histograms[n] for n in node_ids], dtype=np.float64)

    def sketch_matrix(self, node_ids: list[int]) -> np.ndarray:
        """Latest update sketches of ``node_ids`` (all must have one), float (N, dim)."""
        return np.array([self.sketches[n] for n in node_ids], dtype=np.float64)

    def mean_cost(self, node_id: int) -> float | None:
        """Mean observed training seconds of the node, or None."""
        c = self.cost_count.get(node_id, 0)
        return self.cost_sum[node_id] / c if c else None

    # ---------------------------------------------------------------- updates
    def set_profile(
        self, node_id: int, num_examples: float, histogram: list[float]
    ) -> str | None:
        """Record a profile reply; return why it was refused (``num-examples`` disagrees with
        the histogram, :func:`.weight_cap.profile_mismatch`: the node is then marked not
        profiled with that reason), or None."""
        problem = profile_mismatch(num_examples, histogram, self.rules)
        if problem is not None:
            log(WARNING, "Profile of node %d refused: %s", node_id, problem)
            self.set_profile_failed(node_id, problem)
            return problem
        self.num_examples[node_id] = float(num_examples)
        self.histograms[node_id] = tuple(map(float, histogram))
        self.profile_failed.pop(node_id, None)
        self.version += 1
        return None

    def set_profile_failed(self, node_id: int, reason: str) -> None:
        """Record that the node could not be profiled."""
        self.profile_failed[node_id] = reason
        self.version += 1

    def observe_train(
        self,
        node_id: int,
        num_examples: float | None = None,
        sketch: np.ndarray | None = None,
        loss: float | None = None,
        cost: float | None = None,
    ) -> None:
        """Record what an accepted training reply told about the node; its size only if none
        was learned yet (later claims are checked by :meth:`claim_problem`, not learned)."""
        if num_examples is not None and num_examples > 0 and node_id not in self.num_examples:
            self.num_examples[node_id] = float(num_examples)
            self.version += 1
        if sketch is not None:
            self.sketches[node_id] = tuple(np.asarray(sketch, dtype=np.float64).ravel().tolist())
            self.sketch_updates += 1
        if loss is not None and math.isfinite(loss):
            self.losses[node_id] = float(loss)
        if cost is not None and math.isfinite(cost) and cost >= 0:
            self.cost_sum[node_id] = self.cost_sum.get(node_id, 0.0) + float(cost)
            self.cost_count[node_id] = self.cost_count.get(node_id, 0) + 1

    # ---------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state (node ids become strings, as JSON keys must)."""

        def enc(d: dict[int, Any]) -> dict[str, Any]:
            return {str(k): list(v) if isinstance(v, tuple) else v for k, v in d.items()}

        return {
            "num_examples": enc(self.num_examples),
            "histograms": enc(self.histograms),
            "profile_failed": enc(self.profile_failed),
            "sketches": enc(self.sketches),
            "losses": enc(self.losses),
            "cost_sum": enc(self.cost_sum),
            "cost_count": enc(self.cost_count),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict`."""
        for name in (
            "num_examples",
            "histograms",
            "profile_failed",
            "sketches",
            "losses",
            "cost_sum",
            "cost_count",
        ):
            setattr(self, name, {int(k): tuple(v) if isinstance(v, list) else v
                                 for k, v in state.get(name, {}).items()})
        self.version += 1
