"""Shared helpers of the fedstrat.strategies tests: a synthetic non-IID population and a
LocalGrid handler that answers profile and train messages like a tiny linear-model client."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from flwr.app import Array, ArrayRecord, Message, MessageType, MetricRecord, RecordDict

from fedstrat.strategies.local_grid import LocalGrid
from fedstrat.wire import PROFILE_KEY


@dataclass
class Population:
    """N clients with Dirichlet label proportions; client i's update is the mix of class
    directions by its label proportions (+ small noise): a strongly stratified population."""

    node_ids: list[int]
    sizes: np.ndarray
    props: np.ndarray
    dirs: np.ndarray
    noise: float = 0.01
    seed: int = 0
    index: dict[int, int] = field(init=False)

    def __post_init__(self) -> None:
        self.index = {n: i for i, n in enumerate(self.node_ids)}

    def update(self, node: int) -> np.ndarray:
        """Deterministic update of ``node`` (flattened, float64)."""
        i = self.index[node]
        g = np.random.default_rng([self.seed, i])
        return self.props[i] @ self.dirs + self.noise * g.normal(size=self.dirs.shape[1])

    def target(self, node_ids: list[int] | None = None) -> np.ndarray:
        """Full-participation target ``sum_i p_i Delta_i`` over ``node_ids`` (default all)."""
        ids = self.node_ids if node_ids is None else node_ids
        n = np.array([self.sizes[self.index[k]] for k in ids], dtype=np.float64)
        ups = np.array([self.update(k) for k in ids])
        return (n / n.sum()) @ ups

    def histogram(self, node: int) -> list[float]:
        i = self.index[node]
        return [float(v) for v in np.round(self.props[i] * self.sizes[i])]


def make_population(
    n: int = 40, classes: int = 5, dim: int = 6, alpha: float = 0.1, seed: int = 0
) -> Population:
    rng = np.random.default_rng(seed)
    props = rng.dirichlet(np.full(classes, alpha), size=n)
    sizes = rng.integers(20, 300, size=n)
    dirs = rng.normal(size=(classes, dim))
    ids = [int(v) for v in rng.choice(10**9, size=n, replace=False) + 17]
    return Population(ids, sizes, props, dirs, seed=seed)


def split_shapes(dim: int) -> dict[str, tuple[int, ...]]:
    """Two float arrays covering ``dim`` values plus an integer buffer."""
    a = dim // 2
    return {"w": (a,), "b": (dim - a,)}


def global_arrays(
    dim: int, value: float = 0.5, with_int: bool = False, dtype: type = np.float64
) -> ArrayRecord:
    shapes = split_shapes(dim)
    arrs = {k: Array(np.full(s, value, dtype=dtype)) for k, s in shapes.items()}
    if with_int:
        arrs["steps"] = Array(np.array([3], dtype=np.int64))
    return ArrayRecord(arrs)


def flatten(arrays: ArrayRecord | dict) -> np.ndarray:
    items = arrays.items()
    return np.concatenate(
        [(a.numpy() if hasattr(a, "numpy") else a).astype(np.float64).ravel()
         for k, a in items if k in ("w", "b")]
    )


def train_reply(
    msg: Message,
    new: dict[str, np.ndarray],
    metrics: dict | None = None,
) -> Message:
    """A training reply with arrays ``new`` and metrics (default num-examples=10)."""
    rec = ArrayRecord({k: Array(np.asarray(v)) for k, v in new.items()})
    met = MetricRecord(metrics if metrics is not None else {"num-examples": 10})
    return Message(RecordDict({"arrays": rec, "metrics": met}), reply_to=msg)


def profile_reply(msg: Message, n: int, hist: list[float]) -> Message:
    rec = MetricRecord({"num-examples": int(n), "label-hist": hist})
    return Message(RecordDict({PROFILE_KEY: rec}), reply_to=msg)


Behaviour = Callable[[Message, dict[str, np.ndarray]], Message | None]


def population_handler(
    pop: Population,
    profile: bool = True,
    overrides: dict[int, Behaviour] | None = None,
    extra_metrics: Callable[[int], dict] | None = None,
) -> Callable[[Message], Message | None]:
    """Handler for LocalGrid: profile replies from ``pop``; train replies ``x_g + Delta_i``.

    ``overrides[node](msg, new_arrays)`` replaces the train reply of ``node`` (return a
    Message, None for no reply, or raise for an error reply).
    """
    overrides = {} if overrides is None else overrides

    def handler(msg: Message) -> Message | None:
        node = msg.metadata.dst_node_id
        i = pop.index[node]
        if msg.metadata.message_type == MessageType.QUERY:
            if not profile:
                raise ValueError("No query function registered")
            return profile_reply(msg, int(pop.sizes[i]), pop.histogram(node))
        rec = msg.content["arrays"]
        g = np.concatenate([rec[k].numpy().ravel() for k in ("w", "b")]).astype(np.float64)
        new_flat = g + pop.update(node)
        a = rec["w"].numpy().size
        new = {
            "w": new_flat[:a].astype(rec["w"].numpy().dtype),
            "b": new_flat[a:].astype(rec["b"].numpy().dtype),
        }
        for k in rec.keys():
            if k not in new:
                new[k] = rec[k].numpy()
        if node in overrides:
            return overrides[node](msg, new)
        metrics = {"num-examples": int(pop.sizes[i]), "train-loss": float(i)}
        if extra_metrics is not None:
            metrics.update(extra_metrics(node))
        return train_reply(msg, new, metrics)

    return handler


def population_grid(pop: Population, **kwargs) -> LocalGrid:
    return LocalGrid(list(pop.node_ids), population_handler(pop, **kwargs))
