"""Script for test_client_simulation: the fedstrat ClientApp on Flower's Ray simulation engine.

Usage: python sim_client_check.py OUT.json. A tiny ServerApp profiles 3 virtual SuperNodes
(mnist5k defaults, empty run config -> num-clients = num-partitions = 3), sends each a train
message plus one train message without arrays, and writes what came back to OUT.json.
"""

from __future__ import annotations

import json
import os
import sys
import time

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

import torch  # noqa: E402
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict  # noqa: E402
from flwr.serverapp import Grid, ServerApp  # noqa: E402
from flwr.simulation import run_simulation  # noqa: E402

from fedstrat.clients.client_app import app as client_app  # noqa: E402
from fedstrat.clients.data import load_client_data  # noqa: E402
from fedstrat.models import build_model  # noqa: E402

NUM_NODES = 3
server = ServerApp()


@server.main()
def main(grid: Grid, context: Context) -> None:
    t0 = time.time()
    while len(list(grid.get_node_ids())) < NUM_NODES and time.time() - t0 < 120:
        time.sleep(0.5)
    nodes = sorted(grid.get_node_ids())
    out: dict = {"nodes": len(nodes)}
    profile = ConfigRecord({"epsilon": 0.0, "seed": 0})
    queries = [
        Message(RecordDict({"fedstrat-profile": profile}), dst_node_id=n, message_type="query")
        for n in nodes
    ]
    out["profiles"] = [
        dict(r.content["fedstrat-profile"]) if not r.has_error() else {"error": r.error.reason}
        for r in grid.send_and_receive(queries, timeout=300)
    ]
    data = load_client_data({}, {"partition-id": 0, "num-partitions": NUM_NODES})
    torch.manual_seed(0)
    arrays = ArrayRecord(build_model("mlp", data).state_dict())
    cfg = ConfigRecord({"server-round": 1, "local-steps": 5, "lr": 0.05, "seed": 1})
    msgs = [
        Message(
            RecordDict({"arrays": arrays, "config": cfg}),
            dst_node_id=n,
            message_type=MessageType.TRAIN,
        )
        for n in nodes
    ]
    msgs.append(
        Message(RecordDict({"config": cfg}), dst_node_id=nodes[0], message_type=MessageType.TRAIN)
    )
    out["train"] = [
        dict(r.content["metrics"]) if not r.has_error() else {"error": r.error.reason}
        for r in grid.send_and_receive(msgs, timeout=300)
    ]
    with open(sys.argv[1], "w", encoding="utf-8") as fh:
        json.dump(out, fh)


if __name__ == "__main__":
    run_simulation(
        server,
        client_app,
        num_supernodes=NUM_NODES,
        backend_config={"client_resources": {"num_cpus": 1}, "init_args": {"num_cpus": 2}},
    )
