r"""Server memory of the control variates of the difference estimator.

``estimator="difference"`` aggregates

.. math:: \hat T = \sum_{i \in U} p_i c_i + \sum_{i \in s} w_i (\Delta_i - c_i)

over the round's population ``U`` (see :mod:`fedstrat.sampling.difference`). Here
:math:`c_i = \beta^{\,r - t_i} x_i` with :math:`x_i` the last accepted update of node i (round
:math:`t_i`) and :math:`\beta` = ``decay``; a node without a stored update gets the fill: the
plain mean of the stored controls of its stratum (``fill="stratum"``; all stored controls when
its stratum has none or no strata are known), or 0 (``fill="zero"``).

Stale controls (``decay = 1``, the default, with ``learn=True``): the coefficient is learnt
instead of fixed, :math:`c_i = b_{k(r - t_i)} x_i` with :math:`b_k` the size-weighted
least-squares coefficient of the new update on the stored one over the nodes of age bucket
``k`` (``floor(log2 age)``) accepted in earlier rounds
(:class:`fedstrat.sampling.difference.StaleControlModel`; 1 before anything is learnt). An
explicit ``decay < 1`` keeps the fixed :math:`\beta^{\,r - t_i}`.

Memory: one float32 vector per node, ``4 D`` bytes. Beyond ``budget_bytes`` (0 = no limit) the
OLDEST vectors (smallest ``t_i``, ties: larger node id first) are dropped after each update;
their nodes then get the fill like never-seen nodes. Every ``c_i`` is a function of what the
server knew before the round's draw (stored vectors, their rounds, the strata), never of the
draw, so the estimator stays design-unbiased under any budget, decay or fill; these choices
only change its variance.

Residual size measure: :meth:`ControlVariates.residual_scales` predicts each node's residual
norm :math:`\hat s_i` before the draw (``rho_k ||x_i||`` by age bucket, the RMS residual of
nodes drawn without a stored update; :meth:`~fedstrat.sampling.difference.StaleControlModel.
residual_scale`); the stratified policy draws pps by :math:`z_i = p_i \hat s_i` inside strata
(:class:`~fedstrat.sampling.difference.ResidualPPSSampler`, HT weights :math:`p_i / \pi_i`).
It too depends only on what the server knew before the draw.

Checkpoint: :meth:`ControlVariates.state_dict` is JSON (vectors as base64 of their float32
bytes), so a resumed run restores the controls bit for bit.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedstrat.sampling.difference import StaleControlModel


@dataclass(frozen=True)
class RoundControls:
    """The controls of one round: ``offset = sum_{i in U} p_i c_i`` (float64, ``(D,)``) and
    :meth:`of` a node's ``c_i``."""

    offset: np.ndarray
    rows: dict[int, np.ndarray]
    fills: dict[int, np.ndarray]
    node_label: dict[int, int]

    def of(self, node: int) -> np.ndarray:
        """``c_i`` of a population node (float64)."""
        if node in self.rows:
            return self.rows[node]
        return self.fills[self.node_label.get(node, -1)]

    def matrix(self, nodes: list[int]) -> np.ndarray:
        """``(len(nodes), D)`` float64 controls of ``nodes``."""
        if not nodes:
            return np.zeros((0, self.offset.size))
        return np.stack([self.of(int(n)) for n in nodes])


class ControlVariates:
    """Last accepted update per node (float32) under a byte budget; see the module docstring."""

    def __init__(
        self, decay: float = 1.0, budget_bytes: int = 0, fill: str = "stratum", learn: bool = True
    ) -> None:
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"decay must be in [0, 1], got {decay}")
        if fill not in ("stratum", "zero"):
            raise ValueError(f"fill must be 'stratum' or 'zero', got {fill!r}")
        if budget_bytes < 0:
            raise ValueError(f"budget_bytes must be >= 0, got {budget_bytes}")
        self.decay = float(decay)
        self.budget_bytes = int(budget_bytes)
        self.fill = fill
        self.vectors: dict[int, np.ndarray] = {}
        self.rounds: dict[int, int] = {}
        self.norms: dict[int, float] = {}  # ||x_i|| of each stored vector
        self.dropped = 0  # vectors dropped by the budget so far
        #: the learnt stale-control coefficients (``decay == 1`` and ``learn``), else None
        self.model = StaleControlModel() if learn and self.decay == 1.0 else None

    @property
    def nbytes(self) -> int:
        """Bytes held by the stored vectors."""
        return sum(v.nbytes for v in self.vectors.values())

    def residual_scales(self, round_: int, nodes: Sequence[int]) -> np.ndarray:
        r"""Predicted residual norms :math:`\hat s_i` of ``nodes`` at round ``round_`` (all
        ones without the learnt model, e.g. with a fixed ``decay < 1``, or before it has
        learnt): the residual pps size measure is then the plain size."""
        if self.model is None or not self.model.learnt:
            return np.ones(len(nodes))
        ages = np.array([round_ - self.rounds[int(n)] if int(n) in self.vectors else 0
                         for n in nodes], dtype=np.int64)
        norms = np.array([self.norms.get(int(n), 0.0) for n in nodes], dtype=np.float64)
        return self.model.residual_scale(ages, norms)

    def controls(
        self,
        round_: int,
        nodes: list[int],
        sizes: np.ndarray,
        dim: int,
        labels: dict[int, int] | None = None,
    ) -> RoundControls:
        """The controls of round ``round_`` for the population ``nodes`` with sizes ``n_i``
        (``labels``: node -> stratum for the fill; None = one stratum)."""
        p = np.asarray(sizes, dtype=np.float64)
        p = p / p.sum()
        rows: dict[int, np.ndarray] = {}
        for n in nodes:
            v = self.vectors.get(int(n))
            if v is not None and v.size == dim:
                c = v.astype(np.float64)
                if self.decay != 1.0:
                    c *= self.decay ** (round_ - self.rounds[int(n)])
                elif self.model is not None:
                    c *= float(self.model.coefficients(np.array([round_ - self.rounds[int(n)]]))[0])
                rows[int(n)] = c
        node_label = {int(n): int(labels.get(int(n), -1)) for n in nodes} if labels else {}
        fills: dict[int, np.ndarray] = {}
        overall = (np.mean(list(rows.values()), axis=0) if rows and self.fill == "stratum"
                   else np.zeros(dim))
        fills[-1] = overall
        if self.fill == "stratum" and node_label:
            groups: dict[int, list[np.ndarray]] = {}
            for n, c in rows.items():
                groups.setdefault(node_label.get(n, -1), []).append(c)
            for h in set(node_label.values()):
                if h != -1:
                    fills[h] = np.mean(groups[h], axis=0) if h in groups else overall
        offset = np.zeros(dim)
        unknown_mass: dict[int, float] = {}
        for k, n in enumerate(nodes):
            n = int(n)
            if n in rows:
                offset += p[k] * rows[n]
            else:
                h = node_label.get(n, -1)
                unknown_mass[h] = unknown_mass.get(h, 0.0) + float(p[k])
        for h, mass in unknown_mass.items():
            offset += mass * fills.get(h, overall)
        return RoundControls(offset, rows, fills, node_label)

    def update(
        self,
        round_: int,
        nodes: list[int],
        deltas: np.ndarray,
        used: np.ndarray | None = None,
        weights: np.ndarray | None = None,
    ) -> None:
        """Store the accepted updates of ``round_`` (rows of ``deltas``), then keep the most
        recent vectors within the budget. With the controls ``used`` in this round's aggregate
        and the nodes' size weights ``p_i``, the learnt coefficients learn from them first."""
        if self.model is not None and used is not None and len(nodes):
            d = np.asarray(deltas, dtype=np.float64)
            has = [int(n) in self.vectors and self.vectors[int(n)].size == d.shape[1]
                   for n in nodes]
            ages = np.array([round_ - self.rounds[int(n)] if h else 0
                             for n, h in zip(nodes, has, strict=True)], dtype=np.int64)
            old = np.stack([self.vectors[int(n)].astype(np.float64) if h
                            else np.zeros(d.shape[1]) for n, h in zip(nodes, has, strict=True)])
            w = np.ones(len(nodes)) if weights is None else np.asarray(weights, np.float64)
            self.model.observe(ages, d, old, d - np.asarray(used, np.float64), w)
        for n, d in zip(nodes, deltas, strict=True):
            v = np.asarray(d, dtype=np.float32).copy()
            self.vectors[int(n)] = v
            self.rounds[int(n)] = int(round_)
            self.norms[int(n)] = _norm(v)
        if self.budget_bytes:
            total = self.nbytes
            for n in sorted(self.vectors, key=lambda k: (self.rounds[k], -k)):
                if total <= self.budget_bytes:
                    break
                total -= self.vectors.pop(n).nbytes
                del self.rounds[n]
                self.norms.pop(n, None)
                self.dropped += 1

    def state_dict(self) -> dict[str, Any]:
        """JSON: rounds, dropped count and each vector's float32 bytes in base64."""
        return {
            "rounds": {str(n): r for n, r in self.rounds.items()},
            "vectors": {str(n): base64.b64encode(v.tobytes()).decode("ascii")
                        for n, v in self.vectors.items()},
            "dropped": self.dropped,
            **({"model": self.model.state_dict()} if self.model is not None else {}),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (bit-exact vectors)."""
        self.rounds = {int(n): int(r) for n, r in state.get("rounds", {}).items()}
        self.vectors = {
            int(n): np.frombuffer(base64.b64decode(b), dtype=np.float32).copy()
            for n, b in state.get("vectors", {}).items()
        }
        self.norms = {n: _norm(v) for n, v in self.vectors.items()}
        self.dropped = int(state.get("dropped", 0))
        if self.model is not None:
            self.model = StaleControlModel()
            self.model.load_state_dict(state.get("model", {}))


def _norm(v: np.ndarray) -> float:
    """``||v||`` in float64 (of the stored float32 vector)."""
    x = v.astype(np.float64)
    return float(np.sqrt(x @ x))


def make_controls(options: Any, policy: Any = None) -> ControlVariates | None:
    """The memory for ``options.estimator == "difference"`` (else None); handed to
    ``policy.attach_controls`` when the policy has it (the stratified policy draws with the
    residual size measure of this memory)."""
    if getattr(options, "estimator", "") != "difference":
        return None
    memory = ControlVariates(float(options.cv_decay), int(options.cv_budget_bytes),
                             options.cv_fill)
    if hasattr(policy, "attach_controls"):
        policy.attach_controls(memory)
    return memory


def difference_controls(
    memory: ControlVariates | None, plan: Any, valid: list[Any], deltas: np.ndarray | None
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """``(controls of the accepted replies, offset)`` of ``plan``'s round from the memory as it
    was BEFORE this round, then store the accepted updates ``deltas`` (rows aligned with
    ``valid``). ``(None, None)`` without a memory or floating-point updates. The fill strata
    are the draw's strata over the population (one stratum without them)."""
    if memory is None or deltas is None:
        return None, None
    labels = None
    strata = getattr(plan.draw, "strata", None)
    if strata is not None:
        labels = {int(n): int(h) for n, h in zip(plan.population, strata.strata.labels,
                                                 strict=True)}
    cv = memory.controls(plan.round, [int(n) for n in plan.population], plan.sizes,
                         deltas.shape[1], labels)
    nodes = [int(v.node_id) for v in valid]
    rows = cv.matrix(nodes)
    where = {int(n): k for k, n in enumerate(plan.population)}
    p = np.asarray(plan.sizes, dtype=np.float64)
    p = p / p.sum()
    memory.update(plan.round, nodes, deltas, rows, np.array([p[where[n]] for n in nodes]))
    return rows, cv.offset
