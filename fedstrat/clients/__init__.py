"""The fedstrat Flower ClientApp: train / evaluate / profiling handlers on a node's data.

``fedstrat.clients.client_app:app`` is the ClientApp component of the Flower App;
:func:`register_profiling` adds the ``"fedstrat-profile"`` query handler to any other ClientApp.
The profiling and protocol helpers need numpy and Flower only: the torch-based parts
(:func:`make_client_app`, :class:`ClientData`, :func:`load_client_data`) are imported when
first used, so a node of someone else's app pays no torch import for the one-line profiling
handler.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from fedstrat.clients.profiling import (
    dataset_labels,
    label_histogram,
    label_profile,
    profile_reply,
    register_profiling,
)
from fedstrat.clients.protocol import ProtocolError, TrainConfig, client_seed

if TYPE_CHECKING:
    from fedstrat.clients.client_app import make_client_app
    from fedstrat.clients.data import ClientData, load_client_data

#: torch-based names -> their module, imported on first use (PEP 562)
_LAZY = {
    "make_client_app": "fedstrat.clients.client_app",
    "ClientData": "fedstrat.clients.data",
    "load_client_data": "fedstrat.clients.data",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'fedstrat.clients' has no attribute {name!r}")


__all__ = [
    "ClientData",
    "ProtocolError",
    "TrainConfig",
    "client_seed",
    "dataset_labels",
    "label_histogram",
    "label_profile",
    "load_client_data",
    "make_client_app",
    "profile_reply",
    "register_profiling",
]
