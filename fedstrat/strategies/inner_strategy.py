"""What :class:`~fedstrat.strategies.StratifiedSelection` checks and borrows from the strategy it
wraps: construction errors and warnings, the options it overrides, the Flower log lines it
explains, and running a subclass's own ``start()`` loop with the wrapper's hooks.

Soundness of the combinations (docs in README "In your own Flower app"):

- weighted averages (FedAvg, FedProx, FedAvgM, FedAdam, FedYogi, FedAdagrad, and Flower's DP
  wrappers around them, in either nesting order) aggregate ``sum_i w_i x_i / sum_i w_i``; the
  HT rewrite makes that the Horvitz-Thompson estimate (server optimisers then step from it).
- robust aggregators (FedMedian, FedTrimmedAvg, Krum, MultiKrum, Bulyan) ignore the weights
  and QFedAvg weights by loss: there the HT rewrite would only rescale updates by
  ``W = sum_i w_i``. They run with ``estimator="ratio"`` (replies passed unchanged), with one
  WARNING at construction: the aggregate is their rule on the stratified sample, not a
  design-unbiased estimate.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from logging import INFO, WARNING
from typing import Any

from flwr.serverapp.strategy import Strategy

log = logging.getLogger("flwr").log

#: strategies whose aggregate ignores the reply weights (class names, any nesting depth)
WEIGHT_IGNORING: dict[str, str] = {
    "FedMedian": "takes the coordinate-wise median",
    "FedTrimmedAvg": "takes a trimmed mean",
    "Krum": "picks the update closest to its neighbours",
    "MultiKrum": "averages the updates closest to their neighbours, unweighted",
    "Bulyan": "combines Krum selection with a trimmed mean",
    "QFedAvg": "weights updates by their loss (q-fair), not by a weight metric",
}

#: XGBoost strategies: bytes payloads and their own node cycling, nothing to re-weight
TREE_STRATEGIES = ("FedXgbBagging", "FedXgbCyclic")

#: the wrapped strategy's node-sampling options that StratifiedSelection replaces
OVERRIDDEN = ("fraction_train", "min_train_nodes", "min_available_nodes")

#: Flower's per-round sampling line of the wrapped strategy (it samples only the payload)
SAMPLED_LINE = "configure_train: Sampled"


def chain(strategy: Any) -> list[Any]:
    """``[strategy, strategy.strategy, ...]`` (Flower's DP wrappers hold ``.strategy``)."""
    out: list[Any] = []
    obj = strategy
    while obj is not None and len(out) < 16:
        out.append(obj)
        obj = vars(obj).get("strategy") if hasattr(obj, "__dict__") else None
    return out


def check_wrapped(strategy: Any, wrapper_cls: type) -> None:
    """Raise ``ValueError`` for what cannot be wrapped: a legacy ``flwr.server.strategy``
    strategy (named as such), a non-strategy, the XGBoost strategies, a StratifiedSelection
    inside the chain, or one that skips training (``fraction_train=0.0``)."""
    if not isinstance(strategy, Strategy):
        cls = type(strategy)
        where = f"{cls.__module__}.{cls.__qualname__}"
        if cls.__module__.startswith("flwr.server.strategy"):
            raise ValueError(
                f"{where} is a legacy Flower strategy (flwr.server.strategy, the "
                "NumPyClient/start_server API); StratifiedSelection wraps the Message-API "
                f"strategies of flwr.serverapp.strategy: use "
                f"flwr.serverapp.strategy.{cls.__name__} instead"
            )
        raise ValueError(
            f"strategy must be a flwr Strategy (flwr.serverapp.strategy.Strategy), got {where}"
        )
    for obj in chain(strategy):
        name = type(obj).__name__
        if name in TREE_STRATEGIES and type(obj).__module__.startswith("flwr."):
            raise ValueError(
                f"{name} exchanges serialised tree models (bytes), not arrays to average, and "
                "chooses its own nodes; StratifiedSelection cannot wrap it"
            )
        if isinstance(obj, wrapper_cls):
            raise ValueError(
                "StratifiedSelection cannot wrap another StratifiedSelection "
                f"(found one inside {type(strategy).__name__}): wrap the inner strategy once"
            )
        if getattr(obj, "fraction_train", None) == 0.0:
            raise ValueError(
                f"{name}(fraction_train=0.0) skips federated training, so it builds no training "
                "message for StratifiedSelection to send to the nodes it selects: use any "
                "fraction_train > 0 (its value is otherwise ignored)"
            )


def weight_ignoring(strategy: Any) -> str | None:
    """The first strategy in the chain that ignores reply weights, as ``"Name does ..."``."""
    for obj in chain(strategy):
        for cls in type(obj).__mro__:
            if cls.__name__ in WEIGHT_IGNORING and cls.__module__.startswith("flwr."):
                return f"{type(obj).__name__} {WEIGHT_IGNORING[cls.__name__]}"
    return None


def overridden_options(strategy: Any) -> list[str]:
    """``"Class(name=value)"`` of the wrapped strategies' node-sampling options that the user
    set and that StratifiedSelection overrides (it decides who trains): ``fraction_train``
    other than the class default, ``min_*`` above it (lowered minimums change nothing)."""
    out: list[str] = []
    for obj in chain(strategy):
        try:
            params = inspect.signature(type(obj).__init__).parameters
        except (TypeError, ValueError):
            continue
        for name in OVERRIDDEN:
            if name in params and hasattr(obj, name):
                default = params[name].default
                value = getattr(obj, name)
                if default is inspect.Parameter.empty or value == default:
                    continue
                if name == "fraction_train" or value > default:  # lowering a minimum is moot
                    out.append(f"{type(obj).__name__}({name}={value!r})")
    return out


def warn_construction(strategy: Any, clients_per_round: int) -> None:
    """One WARNING per wrapped option that StratifiedSelection overrides."""
    over = overridden_options(strategy)
    if over:
        log(
            WARNING,
            "StratifiedSelection: %s ignored: it chooses clients_per_round=%d training "
            "nodes per round itself (the wrapped strategy only builds the payload)",
            ", ".join(over),
            clients_per_round,
        )


class _DropSampledLine(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(SAMPLED_LINE)


@contextmanager
def quiet_inner_sampling() -> Iterator[None]:
    """Drop the wrapped strategy's ``configure_train: Sampled N nodes`` line (it only samples
    the payload from a short node list; the wrapper logs who trains)."""
    logger = logging.getLogger("flwr")
    flt = _DropSampledLine()
    logger.addFilter(flt)
    try:
        yield
    finally:
        logger.removeFilter(flt)


def overrides_start(strategy: Any) -> bool:
    """True when the wrapped strategy's class defines its own ``start()`` (e.g. to checkpoint
    or log in the loop), not Flower's ``Strategy.start``."""
    return getattr(type(strategy), "start", Strategy.start) is not Strategy.start


def start_owner(strategy: Any) -> Any | None:
    """The strategy whose own ``start()`` runs the rounds: ``strategy`` or, through wrappers
    that keep Flower's loop and hold their inner strategy in ``.strategy`` (the DP wrappers),
    the outermost one whose class overrides ``start()``; ``None`` when none does."""
    seen: set[int] = set()
    while strategy is not None and id(strategy) not in seen:
        if overrides_start(strategy):
            return strategy
        seen.add(id(strategy))
        strategy = vars(strategy).get("strategy")
    return None


def warn_start_bypassed(strategy: Any) -> None:
    """First round without StratifiedSelection.start(): a strategy around the wrapper (e.g.
    ``DifferentialPrivacy...(StratifiedSelection(CustomFedAvg(...)))``) runs Flower's own loop,
    so a wrapped ``start()`` (checkpoints, logging) never runs: say so once."""
    owner = start_owner(strategy)
    if owner is not None:
        log(WARNING, "%s.start() does not run: the strategy around StratifiedSelection runs "
            "Flower's own loop. Nest it the other way round, e.g. StratifiedSelection("
            "DifferentialPrivacyServerSideFixedClipping(%s(...)), ...)",
            type(owner).__name__, type(owner).__name__)


HOOKS = ("configure_train", "aggregate_train", "configure_evaluate", "aggregate_evaluate",
         "summary")


def hooked_view(strategy: Any, wrapper: Any) -> Any:
    """An instance of a subclass of ``type(strategy)`` that shares ``strategy``'s attributes
    (same ``__dict__``) but whose round hooks are ``wrapper``'s.

    Running ``type(strategy).start(view, ...)`` runs the subclass's own loop (its checkpoints,
    its logging, ``super().start()``) while StratifiedSelection selects and re-weights; state
    the loop sets on ``self`` lands on ``strategy``.
    """
    cls = type(strategy)
    namespace = {name: _forward(name, wrapper) for name in HOOKS}
    view_cls = type(f"Stratified{cls.__name__}", (cls,), namespace)
    view = object.__new__(view_cls)
    view.__dict__ = strategy.__dict__
    log(INFO, "StratifiedSelection: running %s.start() with stratified selection",
        cls.__name__)
    return view


def _forward(name: str, wrapper: Any) -> Any:
    def hook(self: Any, *args: Any, **kwargs: Any) -> Any:
        return getattr(wrapper, name)(*args, **kwargs)

    hook.__name__ = name
    return hook
