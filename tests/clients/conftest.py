"""Fixtures for the ClientApp tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from clienthelpers import DIGITS_RUN_CONFIG
from flwr.app import ArrayRecord
from flwr.supercore.task_identity import TaskIdentity

from fedstrat.clients.data import clear_cache, load_client_data
from fedstrat.models import build_model


@pytest.fixture(autouse=True)
def _server_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """Instruction Messages take run/node/task ids from TaskIdentity (set by a ServerApp)."""
    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)


@pytest.fixture(scope="session")
def digits_model_factory() -> Callable[[], Any]:
    """Fresh seeded mlp for the digits node data (same init on every call)."""
    import torch

    data = load_client_data(DIGITS_RUN_CONFIG, {"partition-id": 0, "num-partitions": 5})

    def factory() -> Any:
        torch.manual_seed(0)
        return build_model("mlp", data)

    return factory


@pytest.fixture
def initial_arrays(digits_model_factory: Callable[[], Any]) -> ArrayRecord:
    """ArrayRecord of the seeded initial global model."""
    return ArrayRecord(digits_model_factory().state_dict())


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """Tiny models: one intra-op thread avoids spin-wait contention on the 2-core CI box."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session", autouse=True)
def _fresh_cache() -> Iterator[None]:
    clear_cache()
    yield
    clear_cache()
