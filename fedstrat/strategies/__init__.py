"""Flower strategies with stratified client selection.

``StratifiedSelection(FedAvg(...), clients_per_round=10)`` wraps any
``flwr.serverapp.strategy.Strategy``. ``LocalGrid`` is an in-process Grid for tests and
benchmarks.
"""

from .local_grid import LocalGrid
from .node_registry import NodeRegistry
from .payload_grid import PayloadGrid
from .profiling import PROFILE_KEY, make_profile_messages, parse_profile_reply
from .reply_validation import ValidReply, array_signature, validate_train_reply
from .responder_weights import responder_weights
from .stratified_selection import StratifiedSelection

__all__ = [
    "PROFILE_KEY",
    "LocalGrid",
    "NodeRegistry",
    "PayloadGrid",
    "StratifiedSelection",
    "ValidReply",
    "array_signature",
    "make_profile_messages",
    "parse_profile_reply",
    "responder_weights",
    "validate_train_reply",
]
