"""Run options shared by ``simulate``, ``compare`` and ``measure-variance``.

Every field of :class:`fedstrat.app.config.RunConfig` becomes a CLI option ``--field-name``
(default ``None`` = "not given"), so the CLI, TOML config files and Flower's run config share one
option set. Precedence: built-in defaults < ``--config FILE`` < ``--set KEY=VALUE`` < explicit
flags.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable, Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

import typer

from fedstrat.app import config as cfgmod
from fedstrat.app.config import ConfigError, RunConfig

_TYPES: dict[str, type] = {"int": int, "float": float, "str": str, "bool": bool}


def _choices(values: Iterable[str]) -> str:
    return ", ".join(values)


HELP: dict[str, str] = {
    "dataset": f"Dataset: {_choices(cfgmod.DATASETS)}.",
    "model": "Model name (fedstrat.models registry); empty = the dataset's default model.",
    "partition": f"Partition scheme: {_choices(cfgmod.PARTITIONS)}.",
    "alpha": "Dirichlet concentration of the label skew (partition dirichlet); smaller = more "
    "non-IID.",
    "shards_per_client": "Shards per client for the shard partition.",
    "natural_key": "Key of the natural partition (e.g. user, occupation for MovieLens).",
    "num_clients": "Number of clients N.",
    "clients_per_round": "Clients trained per round m.",
    "rounds": "Number of federated rounds.",
    "local_epochs": "Local epochs per round.",
    "local_steps": "Local SGD steps per round (> 0 overrides --local-epochs).",
    "lr": "Client learning rate.",
    "batch_size": "Client batch size.",
    "optimizer": f"Client optimizer: {_choices(cfgmod.OPTIMIZERS)}.",
    "proximal_mu": "FedProx proximal coefficient mu (strategy fedprox).",
    "server_lr": "Server learning rate eta (fedadam, fedyogi).",
    "clip_norm": "Client gradient clipping norm (0 = off).",
    "selection": f"Client selection: {_choices(cfgmod.SELECTIONS)}.",
    "allocation": f"Allocation of clients to strata: {_choices(cfgmod.ALLOCATIONS)}.",
    "design": f"Within-stratum design: {_choices(cfgmod.DESIGNS)} (auto = by predicted variance).",
    "n_strata": "Number of strata (0 = choose automatically).",
    "stratify_by": f"Stratify on: {_choices(cfgmod.STRATIFY_BY)}.",
    "restratify_every": "Re-stratify every R rounds (0 = never).",
    "estimator": f"Aggregation estimator: {_choices(cfgmod.ESTIMATORS)} (ht = Horvitz-Thompson).",
    "cv_decay": "Difference estimator: control c_i = cv-decay^age x the node's last update.",
    "cv_budget_bytes": "Difference estimator: server memory for the controls (0 = no limit).",
    "cv_fill": "Difference estimator: control of a node without one: stratum (mean) or zero.",
    "profile_epsilon": "Local DP epsilon of the profiled label histograms (0 = exact).",
    "size_cap": "No node's size counts above size-cap x the median node size (a node lying "
    "about its size gets at most that weight); 0 = no cap.",
    "poc_d": "Power-of-Choice candidate set size d (0 = 2 x clients-per-round).",
    "max_strata": "Upper bound of the automatic number of strata (0 = no bound).",
    "warmup_rounds": "Uniform rounds before stratifying on update sketches.",
    "min_per_stratum": "Lower bound of the clients drawn from each stratum, m_h.",
    "size_strata": "Track equal-mass size strata (clients sorted by size, pps inside) as a "
    "second candidate design, chosen only on tracked evidence (default configuration).",
    "balanced_fedavg": "Draw FedAvg rounds balanced: FedAvg's inclusion probabilities, one "
    "node from each of m blocks of similar nodes (profiled histograms, else last sketches).",
    "sketch_dim": "Dimension of the random sketches of client updates.",
    "sketch_seed": "Seed of the sketch map (the same map at every call site).",
    "sketch_method": "Update sketch: countsketch (O(D)) or gaussian (dense projection).",
    "prior_std": "Prior per-stratum std of the variance tracker (0 = pooled).",
    "variance_ema": "Exponential forgetting of the variance tracker, in [0, 1) (0 = none).",
    "cost_key": "Reply metric with training seconds, for allocation cost.",
    "profile_timeout": "Seconds to wait for profile replies (0 = round-timeout).",
    "strategy": f"Server strategy: {_choices(cfgmod.STRATEGIES)}.",
    "seed": "Random seed (partition, model init, selection, client training).",
    "device": "Torch device: auto, cpu, cuda, cuda:0, ...",
    "data_root": "Folder with local data files (else $FEDSTRAT_DATA).",
    "data": "CSV or Parquet click log of --dataset table.",
    "schema": "Schema TOML of --dataset table (label, fields, client key, split).",
    "split": "Train/test split: random or temporal (per-user latest rows; empty = the "
    "dataset's own).",
    "sparse_uplink": "Clients send only the changed rows of embedding tables (indices + rows) "
    "and the changed bits of float arrays zlib-compressed; the server restores them exactly "
    "(same model, fewer uplink bytes).",
    "out": "Output directory (default runs/<timestamp>-<selection>-s<seed>).",
    "eval_every": "Evaluate the global model every k rounds.",
    "target_accuracy": "Target accuracy (AUC for CTR) for 'rounds to target' (0 = dataset "
    "default).",
    "node_wait_timeout": "Seconds to wait for enough nodes each round.",
    "round_timeout": "Seconds to wait for replies each round.",
    "synthetic_samples": "Rows (train + test) of --dataset synthetic.",
    "synthetic_features": "Feature columns of --dataset synthetic.",
    "synthetic_classes": "Classes of --dataset synthetic.",
    "ray_address": "simulate: attach to this running Ray cluster (HOST:PORT, ray start --head).",
    "resume": "Resume the run in this run directory from its last checkpoint.",
}


def config_fields() -> list[tuple[str, type]]:
    """``(name, python type)`` of every RunConfig field."""
    out = []
    for f in fields(RunConfig):
        tname = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "str")
        out.append((f.name, _TYPES.get(tname, str)))
    return out


def shown_default(value: Any) -> str | bool:
    """What ``--help`` shows as an option's default (False: nothing, for an empty value)."""
    if value is None or value == "" or value == ():
        return False
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def flag(name: str) -> str:
    """``num_clients`` -> ``--num-clients``."""
    return "--" + name.replace("_", "-")


def run_options(
    exclude: Iterable[str] = (), helps: Mapping[str, str] | None = None
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator adding one ``--option`` per RunConfig field (minus ``exclude``) to a command;
    ``helps``: this command's own help text of some of them (e.g. its default ``--out``).

    The wrapped function receives the given values as ``run_opts: dict[str, Any]`` (only options
    that were given explicitly, i.e. not ``None``), plus ``config`` and ``set_values``.
    """
    excluded = set(exclude)
    own_help = dict(helps or {})

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        own = inspect.signature(func, eval_str=True)
        params = [
            p for p in own.parameters.values() if p.name not in ("run_opts", "config", "set_values")
        ]
        names = [n for n, _ in config_fields() if n not in excluded]
        added: list[inspect.Parameter] = []
        defaults = RunConfig()  # the embedded default job's values, shown in --help
        for name, typ in config_fields():
            if name in excluded:
                continue
            help_text = own_help.get(name) or HELP.get(name,
                                                       f"Run option {name.replace('_', '-')}.")
            added.append(
                inspect.Parameter(
                    name,
                    inspect.Parameter.KEYWORD_ONLY,
                    default=typer.Option(None, flag(name) if typ is not bool  # --x/--no-x
                                         else f"{flag(name)}/--no-{flag(name)[2:]}",
                                         help=help_text,
                                         show_default=shown_default(getattr(defaults, name))),
                    annotation=typ | None,
                )
            )
        added.append(
            inspect.Parameter(
                "config",
                inspect.Parameter.KEYWORD_ONLY,
                default=typer.Option(
                    None,
                    "--config",
                    help="TOML file whose keys mirror these options (num-clients = 100); "
                    "explicit flags override it.",
                    show_default=False,
                ),
                annotation=Path | None,
            )
        )
        added.append(
            inspect.Parameter(
                "set_values",
                inspect.Parameter.KEYWORD_ONLY,
                default=typer.Option(
                    None,
                    "--set",
                    help="Extra run option KEY=VALUE (repeatable), e.g. --set poc-d=20.",
                    show_default=False,
                ),
                annotation=list[str] | None,
            )
        )

        @functools.wraps(func)
        def wrapper(**kwargs: Any) -> Any:
            run_opts = {n: kwargs.pop(n) for n in names if kwargs.get(n) is not None}
            for n in names:
                kwargs.pop(n, None)
            return func(run_opts=run_opts, **kwargs)

        all_params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in params] + added
        wrapper.__signature__ = inspect.Signature(all_params)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in all_params}
        del wrapper.__wrapped__  # typer must see the new signature, not the original
        return wrapper

    return decorate


def parse_set_values(items: Iterable[str] | None) -> dict[str, Any]:
    """``["poc-d=20", "design=pps"]`` -> ``{"poc-d": 20, "design": "pps"}`` (TOML-typed values)."""
    import tomllib

    out: dict[str, Any] = {}
    for item in items or ():
        if "=" not in item:
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
        key, raw = item.split("=", 1)
        key = key.strip()
        raw = raw.strip()
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw
        out[key] = value
    return out


def build_config(
    run_opts: Mapping[str, Any],
    config: Path | None = None,
    set_values: Iterable[str] | None = None,
    base: RunConfig | None = None,
) -> RunConfig:
    """Resolve defaults < config file < ``--set`` < explicit flags, then validate.

    Raises :class:`ConfigError` (a ``ValueError``) on any bad value, unknown key or bad file.
    """
    cfg = base if base is not None else RunConfig()
    if config is not None:
        cfg = RunConfig.from_toml(config, base=cfg)
    extra = parse_set_values(set_values)
    if extra:
        cfg = RunConfig.from_mapping(extra, base=cfg)
    if run_opts:
        cfg = RunConfig.from_mapping(dict(run_opts), base=cfg)
    return cfg.validate()
