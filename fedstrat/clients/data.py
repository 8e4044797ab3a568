"""Which data a node holds: dataset + partition from the Flower run/node config, cached.

A node is identified by ``partition-id`` (and ``num-partitions``) in ``context.node_config``;
Flower sets both in simulation, deployments pass them with ``--node-config``. The dataset and the
partition are built from ``context.run_config`` (keys ``dataset``, ``partition``, ``alpha``,
``num-clients``, ``shards-per-client``, ``natural-key``, ``seed``, ``data-root``, and ``data`` /
``schema`` / ``split`` for ``dataset = "table"`` and the temporal split) exactly as the server side
builds them, so every node sees the same split (a table's paths must name the same file on every
node; ``fedstrat simulate`` passes absolute paths).

Evaluation data (documented choice): every node evaluates on a *seeded slice of the global test
split* of at most ``eval-size`` rows (run-config key, default :data:`DEFAULT_EVAL_SIZE`), drawn
uniformly without replacement with seed ``(seed, partition-id)`` and fixed across rounds. The
node's training data is then exactly its partition, so ``num-examples`` and the label histogram
agree with ``Partition.sizes`` / ``Partition.label_histograms`` (the p_i = n_i / n the samplers
use), and the example-weighted mean of ``eval-acc`` over the evaluated nodes is an unbiased
estimate of the global test accuracy. Holding out 20% of each node's train indices instead would
shrink every n_i and empty tiny Dirichlet clients.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from fedstrat.clients.protocol import ProtocolError

DEFAULT_EVAL_SIZE = 500

#: Run-config keys read by :func:`load_client_data` and their defaults (as in ``RunConfig``).
RUN_CONFIG_DEFAULTS: dict[str, Any] = {
    "dataset": "mnist5k",
    "partition": "dirichlet",
    "alpha": 0.1,
    "num-clients": 100,
    "shards-per-client": 2,
    "natural-key": "user",
    "seed": 0,
    "model": "",
    "device": "auto",
    "data-root": "",
    "data": "",
    "schema": "",
    "split": "",
    "eval-size": DEFAULT_EVAL_SIZE,
}


@dataclass
class ClientData:
    """The in-memory data of one node.

    ``x``/``y`` are the node's training rows (its partition), ``x_test``/``y_test`` its
    evaluation slice, ``label_hist[c]`` the number of training rows of class c (float64, sums
    to ``num_examples``). ``field_dims`` is set for CTR data; ``x`` has the model input shape, so
    a ClientData can be passed to ``fedstrat.models.build_model`` directly.
    """

    x: torch.Tensor
    y: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    task: str
    num_classes: int
    label_hist: np.ndarray
    num_examples: int
    field_dims: list[int] | None = None
    name: str = ""
    partition_id: int = 0
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.x) != len(self.y) or len(self.x_test) != len(self.y_test):
            raise ValueError("x/y and x_test/y_test must have matching numbers of rows")
        if self.num_examples != len(self.y):
            raise ValueError(f"num_examples={self.num_examples} but y has {len(self.y)} rows")


def _get(cfg: Mapping[str, Any], key: str, kind: type) -> Any:
    value = cfg.get(key, RUN_CONFIG_DEFAULTS[key])
    if kind is str:
        if not isinstance(value, str):
            raise ProtocolError(f"run config {key!r} must be a string, got {value!r}")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ProtocolError(f"run config {key!r} must be a number, got {value!r}")
    if kind is int:
        if float(value) != int(value):
            raise ProtocolError(f"run config {key!r} must be an integer, got {value!r}")
        return int(value)
    return float(value)


@dataclass(frozen=True)
class DataSpec:
    """The hashable part of the run config that determines a node's data."""

    dataset: str
    partition: str
    num_clients: int
    alpha: float
    shards_per_client: int
    natural_key: str
    seed: int
    data_root: str
    eval_size: int
    data: str = ""
    schema: str = ""
    split: str = ""
    #: loader keywords from run-config keys (``run_options``), e.g. synthetic sizes
    options: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def from_config(
        cls, run_config: Mapping[str, Any], node_config: Mapping[str, Any] | None = None
    ) -> DataSpec:
        """Read and check the data keys; ``num-partitions`` in ``node_config`` must agree with
        ``num-clients`` in ``run_config`` (it replaces it when the run config has none)."""
        num_clients = _get(run_config, "num-clients", int)
        partition = _get(run_config, "partition", str)
        node_config = node_config or {}
        if "num-partitions" in node_config:
            n_parts = int(node_config["num-partitions"])
            if "num-clients" not in run_config:
                num_clients = n_parts
            elif n_parts != num_clients:
                raise ProtocolError(
                    f"run config num-clients={num_clients} but node config "
                    f"num-partitions={n_parts}; they must be equal (one node per client)"
                )
        if num_clients < 1:
            raise ProtocolError(f"run config 'num-clients' must be >= 1, got {num_clients}")
        eval_size = _get(run_config, "eval-size", int)
        if eval_size < 1:
            raise ProtocolError(f"run config 'eval-size' must be >= 1, got {eval_size}")
        from fedstrat.data.registry import run_options

        dataset = _get(run_config, "dataset", str)
        return cls(
            dataset=dataset,
            partition=partition,
            num_clients=num_clients,
            alpha=_get(run_config, "alpha", float),
            shards_per_client=_get(run_config, "shards-per-client", int),
            natural_key=_get(run_config, "natural-key", str),
            seed=_get(run_config, "seed", int),
            data_root=_get(run_config, "data-root", str),
            eval_size=eval_size,
            data=_get(run_config, "data", str),
            schema=_get(run_config, "schema", str),
            split=_get(run_config, "split", str),
            options=tuple(sorted(run_options(dataset, run_config).items())),
        )


@functools.lru_cache(maxsize=4)
def load_partitioned(spec: DataSpec) -> tuple[Any, Any]:
    """``(Dataset, Partition)`` for ``spec``, loaded once per process (LRU cache of 4)."""
    from fedstrat.data import load_dataset, partition_dataset

    ds = load_dataset(
        spec.dataset,
        root=spec.data_root or None,
        seed=spec.seed,
        data=spec.data,
        schema=spec.schema,
        split=spec.split,
        **dict(spec.options),
    )
    part = partition_dataset(
        ds,
        spec.partition,
        spec.num_clients,
        alpha=spec.alpha,
        shards_per_client=spec.shards_per_client,
        key=spec.natural_key if spec.partition == "natural" else None,
        seed=spec.seed,
    )
    return ds, part


def eval_indices(num_test: int, eval_size: int, seed: int, partition_id: int) -> np.ndarray:
    """Sorted seeded uniform sample without replacement of ``min(num_test, eval_size)`` rows."""
    rng = np.random.default_rng([abs(int(seed)), abs(int(partition_id)), 0xE7A1])
    k = min(int(num_test), int(eval_size))
    return np.sort(rng.choice(int(num_test), size=k, replace=False)).astype(np.int64)


@functools.lru_cache(maxsize=1024)
def _client_data(spec: DataSpec, partition_id: int, num_partitions: int | None) -> ClientData:
    ds, part = load_partitioned(spec)
    n_parts = len(part.indices)
    if num_partitions is not None and num_partitions != n_parts:
        raise ProtocolError(
            f"the {spec.partition!r} partition of {spec.dataset!r} has {n_parts} clients but "
            f"node config num-partitions={num_partitions}"
        )
    if not 0 <= partition_id < n_parts:
        raise ProtocolError(
            f"partition-id {partition_id} out of range: the partition has {n_parts} clients"
        )
    idx = np.asarray(part.indices[partition_id], dtype=np.int64)
    y_np = np.asarray(ds.y[idx])
    labels = y_np.astype(np.int64)
    hist = np.bincount(labels, minlength=int(ds.num_classes)).astype(np.float64)
    test_idx = eval_indices(len(ds.y_test), spec.eval_size, spec.seed, partition_id)
    return ClientData(
        x=torch.from_numpy(np.ascontiguousarray(ds.x[idx])),
        y=torch.from_numpy(np.ascontiguousarray(y_np)),
        x_test=torch.from_numpy(np.ascontiguousarray(ds.x_test[test_idx])),
        y_test=torch.from_numpy(np.ascontiguousarray(ds.y_test[test_idx])),
        task=str(ds.task),
        num_classes=int(ds.num_classes),
        label_hist=hist,
        num_examples=int(len(idx)),
        field_dims=None if ds.field_dims is None else [int(d) for d in ds.field_dims],
        name=str(ds.name),
        partition_id=int(partition_id),
    )


def load_client_data(
    run_config: Mapping[str, Any], node_config: Mapping[str, Any] | None = None
) -> ClientData:
    """The data of the node described by ``node_config`` (``partition-id``, ``num-partitions``)
    under ``run_config``; cached per process. Raises ``ValueError`` on bad config, unknown
    dataset (from ``fedstrat.data``) or an out-of-range partition id."""
    node_config = node_config or {}
    spec = DataSpec.from_config(run_config, node_config)
    if "partition-id" not in node_config:
        raise ProtocolError(
            "node config has no 'partition-id' (Flower sets it in simulation; pass "
            '--node-config "partition-id=<i> num-partitions=<N>" to a SuperNode)'
        )
    pid = node_config["partition-id"]
    if isinstance(pid, bool) or not isinstance(pid, (int, float)) or int(pid) != pid:
        raise ProtocolError(f"node config 'partition-id' must be an integer, got {pid!r}")
    n_parts = node_config.get("num-partitions")
    return _client_data(spec, int(pid), None if n_parts is None else int(n_parts))


def clear_cache() -> None:
    """Drop every cached dataset, partition and node tensor set of this process."""
    _client_data.cache_clear()
    load_partitioned.cache_clear()
