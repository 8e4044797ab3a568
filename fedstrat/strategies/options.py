"""The options of :class:`~fedstrat.strategies.StratifiedSelection`, validated once.

This module is the single vocabulary of selection names, designs, allocation rules, estimators
and stratification features: ``fedstrat.app.config`` and the CLI import these tuples.
:data:`SELECTIONS` is the key list of the policy registry
(:data:`fedstrat.strategies.policies.POLICIES`), so a new selection scheme is one policy class
plus one registry entry.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

from fedstrat.sampling import SKETCH_METHODS

from .policies import POLICIES

SELECTIONS: tuple[str, ...] = tuple(POLICIES)
DESIGNS: tuple[str, ...] = ("auto", "pps", "srswor")
ALLOCATIONS: tuple[str, ...] = ("neyman", "proportional", "cost")
ESTIMATORS: tuple[str, ...] = ("ht", "ratio", "difference")
CV_FILLS: tuple[str, ...] = ("stratum", "zero")
STRATIFY_BY: tuple[str, ...] = ("histograms", "sketches")
PROFILING: tuple[str, ...] = ("auto", "query")

#: option name -> allowed values
CHOICES: dict[str, tuple[str, ...]] = {
    "selection": SELECTIONS,
    "design": DESIGNS,
    "allocation": ALLOCATIONS,
    "estimator": ESTIMATORS,
    "cv_fill": CV_FILLS,
    "stratify_by": STRATIFY_BY,
    "profiling": PROFILING,
    "sketch_method": SKETCH_METHODS,
}


def _is_int(v: Any) -> bool:
    try:
        return not isinstance(v, bool) and int(v) == v
    except (TypeError, ValueError):
        return False


def _finite_nonneg(v: Any) -> bool:
    return math.isfinite(v) and v >= 0


Check = Callable[[Any, "SelectionOptions"], bool]

#: ``(option, check(value, options), message)``, applied in order after :data:`CHOICES`; the
#: message is formatted with ``name`` and ``value``. The first failing rule raises ValueError.
RULES: tuple[tuple[str, Check, str], ...] = (
    ("size_strata", lambda v, o: isinstance(v, bool), "{name} must be True or False"),
    ("balanced_fedavg", lambda v, o: isinstance(v, bool), "{name} must be True or False"),
    ("clients_per_round", lambda v, o: _is_int(v), "{name} must be an integer"),
    ("clients_per_round", lambda v, o: v >= 1, "{name} must be >= 1, got {value}"),
    ("n_strata", lambda v, o: v is None or v >= 1, "{name} must be >= 1 or None, got {value}"),
    (
        "n_strata",
        lambda v, o: v is None or v <= o.clients_per_round,
        "n_strata cannot exceed clients_per_round (every stratum needs m_h>=1)",
    ),
    ("max_strata", lambda v, o: v is None or v >= 2, "{name} must be >= 2 or None, got {value}"),
    *(
        (name, lambda v, o: v >= 0, "{name} must be >= 0, got {value}")
        for name in ("restratify_every", "warmup_rounds", "min_per_stratum")
    ),
    *(
        (name, lambda v, o: _finite_nonneg(v), "{name} must be finite and >= 0, got {value}")
        for name in ("node_wait_timeout", "profile_timeout", "poll_interval", "profile_epsilon",
                     "size_cap", "size_tolerance")
    ),
    ("sketch_dim", lambda v, o: v >= 1, "{name} must be >= 1, got {value}"),
    ("cv_decay", lambda v, o: 0 <= v <= 1, "{name} must be in [0, 1], got {value}"),
    ("cv_budget_bytes", lambda v, o: _is_int(v) and v >= 0, "{name} must be an integer >= 0"),
    (
        "poc_d",
        lambda v, o: v is None or v >= o.clients_per_round,
        "poc_d must be >= clients_per_round",
    ),
)

_INTS = ("clients_per_round", "restratify_every", "warmup_rounds", "min_per_stratum",
         "sketch_dim", "sketch_seed", "seed", "cv_budget_bytes")
_FLOATS = ("node_wait_timeout", "profile_timeout", "profile_epsilon", "poll_interval",
           "size_cap", "size_tolerance")


@dataclass(frozen=True)
class SelectionOptions:
    """Every option of the selection, validated at construction by :data:`CHOICES` and
    :data:`RULES` (ValueError naming the option); integer and float options are then
    normalised to ``int`` / ``float``.

    Parameters
    ----------
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
        ``"neyman"`` (tracked ``S_h``), ``"proportional"`` (``m_h ∝ N_h`` for srswor, ``∝ P_h``
        for pps) or ``"cost"`` (Neyman with ``c_h`` = mean train seconds).
    estimator : str
        ``"ht"`` (Horvitz-Thompson, unbiased), ``"ratio"`` (self-normalised) or
        ``"difference"`` (control variates: ``sum_i p_i c_i + sum_s w_i (Delta_i - c_i)``,
        ``c_i`` a node's last accepted update, fixed before the draw; unbiased, see
        :mod:`.control_variates`).
    cv_decay : float
        Difference estimator: ``c_i = cv_decay^(age) x`` last update (1 = no decay).
    cv_budget_bytes : int
        Difference estimator: server memory for the ``c_i`` (float32); beyond it the oldest
        are dropped and those nodes get the fill (0 = no limit).
    cv_fill : str
        Control of a node without a stored update: ``"stratum"`` (mean of the stored controls
        of its stratum, else of all) or ``"zero"``.
    stratify_by : str
        ``"histograms"`` (profile replies) or ``"sketches"`` (update sketches after
        ``warmup_rounds`` uniform rounds).
    n_strata, max_strata : int | None
        Number of strata (None = automatic) and the upper bound of the automatic choice.
    restratify_every : int
        Re-stratify every R rounds (0 = never).
    warmup_rounds : int
        Uniform rounds before sketch-based stratification (``stratify_by="sketches"`` or after
        profiling failed).
    min_per_stratum : int
        Lower bound of ``m_h``.
    size_strata : bool
        Track equal-mass size strata as a second candidate design (default configuration
        only; :mod:`.size_strata`); False: label (or sketch) strata only.
    balanced_fedavg : bool
        Draw FedAvg rounds balanced (uniform inclusion, one node from each of ``m`` blocks of
        similar nodes by profiled histogram or last sketch; :mod:`.balanced_draw`); False:
        plain uniform draws.
    node_wait_timeout, profile_timeout, poll_interval : float
        Seconds to wait for ``clients_per_round`` nodes, for the profile round trip, and
        between node-count polls.
    profile_epsilon : float
        Local DP epsilon asked from nodes for their label histograms (0 = exact).
    size_cap : float
        No node's size ``n_i`` enters the designs above ``size_cap`` times the median known
        size (0 = no cap); the default 20 does not bind for honest nodes of the shipped
        partitions (largest/median size <= 11.4). See :mod:`.weight_cap`.
    size_tolerance : float
        Relative difference allowed between a node's statements of its size (profile vs label
        histogram, later training replies vs the size learned first); beyond it the profile
        or the reply is refused, with the reason recorded.
    sketch_dim, sketch_seed : int
        Random-projection sketches of updates (:func:`fedstrat.sampling.sketch_update`).
    sketch_method : str
        ``"countsketch"`` (O(D) count sketch, default) or ``"gaussian"`` (dense Gaussian
        projection, O(D dim); the method of checkpoints that recorded none).
    prior_std, variance_ema : float | None
        Prior per-stratum std of the tracker (None = pooled) and its exponential forgetting
        (None = all rounds equally).
    poc_d : int | None
        ``d`` of Power-of-Choice (None = ``min(N, 2 m)``).
    cost_key : str
        Reply metric with training seconds (allocation ``"cost"``); without it the reply's
        round-trip time from message metadata is used.
    seed : int
        Seed of stratification and of the per-round selection ``default_rng([seed, round])``.
    profiling : str
        ``"auto"`` (default): send nothing the ClientApp does not already handle; sizes come
        from train replies, strata from update sketches after ``warmup_rounds`` (an unmodified
        ClientApp logs no error). ``"query"``: send the profile ``QUERY`` to new nodes (label
        histograms at round 1; the ClientApp needs ``register_profiling``).
    """

    clients_per_round: int
    selection: str = "stratified"
    design: str = "auto"
    allocation: str = "neyman"
    estimator: str = "ht"
    cv_decay: float = 1.0
    cv_budget_bytes: int = 1 << 30
    cv_fill: str = "stratum"
    stratify_by: str = "histograms"
    n_strata: int | None = None
    max_strata: int | None = None
    restratify_every: int = 0
    warmup_rounds: int = 1
    min_per_stratum: int = 1
    size_strata: bool = True
    balanced_fedavg: bool = True
    node_wait_timeout: float = 60.0
    profile_timeout: float = 60.0
    profile_epsilon: float = 0.0
    sketch_dim: int = 64
    sketch_seed: int = 0
    sketch_method: str = "countsketch"
    prior_std: float | None = None
    variance_ema: float | None = None
    poc_d: int | None = None
    cost_key: str = "train-seconds"
    seed: int = 0
    poll_interval: float = 1.0
    size_cap: float = 20.0
    size_tolerance: float = 0.1
    profiling: str = "auto"

    def __post_init__(self) -> None:
        for name, allowed in CHOICES.items():
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        for name, check, message in RULES:
            value = getattr(self, name)
            if not check(value, self):
                raise ValueError(message.format(name=name, value=value))
        for name in _INTS:
            object.__setattr__(self, name, int(getattr(self, name)))
        for name in _FLOATS:
            object.__setattr__(self, name, float(getattr(self, name)))

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The option names, in declaration order."""
        return tuple(f.name for f in fields(cls))
