"""Flower strategies with stratified client selection.

``StratifiedSelection(FedAvg(...), clients_per_round=10)`` wraps any
``flwr.serverapp.strategy.Strategy``; :class:`SelectionOptions` holds (and validates) its
options; :func:`make_policy` maps a selection name to its :class:`SelectionPolicy`. The parts
(stratifier, allocation rule, triage, rewrite, record, ...) are importable from their modules,
e.g. ``fedstrat.strategies.record.RoundRecord``; ``fedstrat.strategies.local_grid.LocalGrid``
is an in-process Grid for tests and benchmarks.

``StratifiedSelection`` (which imports flwr) is loaded on first use, so that the vocabulary in
:mod:`fedstrat.strategies.options` is cheap to import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .options import SelectionOptions
from .policies import POLICIES, SelectionPolicy, make_policy

if TYPE_CHECKING:
    from .record import RoundRecord
    from .stratified_selection import StratifiedSelection

__all__ = [
    "POLICIES",
    "RoundRecord",
    "SelectionOptions",
    "SelectionPolicy",
    "StratifiedSelection",
    "make_policy",
]

_LAZY = {
    "StratifiedSelection": ".stratified_selection",
    "RoundRecord": ".record",
    # kept importable from the package for existing callers (not in __all__)
    "LocalGrid": ".local_grid",
    "PROFILE_KEY": ".profiling",  # = fedstrat.wire.PROFILE_KEY
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
