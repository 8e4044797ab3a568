"""Ray resources of simulated ClientApps: a GPU share wherever the ClientApp trains on cuda
(Ray hides GPUs from actors that reserve none), nothing for cpu runs."""

from __future__ import annotations

import dataclasses

import pytest

from fedstrat.app.config import RunConfig
from fedstrat.app.simulation import client_gpu_share, federation_config


@pytest.mark.parametrize(
    ("device", "concurrency", "gpus", "share"),
    [
        ("cuda", 16, 1, 1 / 16),  # one GPU shared by the 16 clients that run at once
        ("cuda:1", 4, 2, 0.5),
        ("auto", 8, 1, 1 / 8),  # auto trains on the GPU where there is one
        ("", 8, 1, 1 / 8),
        ("cuda", 2, 4, 1.0),  # never more than one GPU a client
        ("cpu", 8, 1, 0.0),  # a cpu run keeps the GPUs hidden
        ("auto", 8, 0, 0.0),
        ("cuda", 8, 0, 0.0),
    ],
)
def test_share_spreads_the_visible_gpus_over_concurrent_clients(device, concurrency, gpus, share):
    assert client_gpu_share(device, concurrency, gpus) == pytest.approx(share)


def test_federation_config_asks_ray_for_the_share():
    cfg = RunConfig(dataset="digits", num_clients=100, clients_per_round=10, device="cuda")
    assert federation_config(cfg, 16, 1) == (
        "num-supernodes=100 client-resources-num-cpus=1 client-resources-num-gpus=0.0625 "
        "init-args-num-cpus=16")
    few = dataclasses.replace(cfg, num_clients=4)  # 4 clients at most run at once
    assert "client-resources-num-gpus=0.25 " in federation_config(few, 16, 1)
    cpu = dataclasses.replace(cfg, device="cpu")
    assert federation_config(cpu, 2, 1) == (
        "num-supernodes=100 client-resources-num-cpus=1 init-args-num-cpus=2")
    assert "gpus" not in federation_config(dataclasses.replace(cfg, device="auto"), 2, 0)


def test_an_existing_ray_cluster_gets_no_cpu_count_and_a_whole_gpu_a_client():
    cfg = RunConfig(dataset="digits", num_clients=10, clients_per_round=2, device="cuda",
                    ray_address="127.0.0.1:6379")
    assert federation_config(cfg, 2, 0) == (
        "num-supernodes=10 client-resources-num-cpus=1 client-resources-num-gpus=1")
    assert "num-gpus=0.5" in federation_config(cfg, 2, 1)
