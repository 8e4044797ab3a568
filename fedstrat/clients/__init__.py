"""The fedstrat Flower ClientApp: train / evaluate / profiling handlers on a node's data.

``fedstrat.clients.client_app:app`` is the ClientApp component of the Flower App;
:func:`register_profiling` adds the ``"fedstrat-profile"`` query handler to any other ClientApp.
"""

from fedstrat.clients.client_app import make_client_app
from fedstrat.clients.data import ClientData, load_client_data
from fedstrat.clients.profiling import (
    dataset_labels,
    label_histogram,
    label_profile,
    profile_reply,
    register_profiling,
)
from fedstrat.clients.protocol import ProtocolError, TrainConfig, client_seed

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
