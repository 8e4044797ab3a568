"""Test-only ClientApp: fedstrat's ClientApp, except that some partitions corrupt their update.

Copied into a throw-away Flower App by tests/deploy/test_deployment.py (clientapp component
``faulty_client:app``). Partition 0 replies with NaN in every floating array, partition 1 with a
first array of the wrong shape; the other partitions are honest. Evaluate and profile queries go
to the honest ClientApp unchanged.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from fedstrat.clients.client_app import app as honest

FAULTS = {0: "nan", 1: "shape"}

app = ClientApp()


def corrupt(arrays: ArrayRecord, mode: str) -> ArrayRecord:
    """NaN in every floating array (``nan``) or one extra row in the first array (``shape``)."""
    out: dict[str, Array] = {}
    for i, (key, arr) in enumerate(arrays.items()):
        x = np.array(arr.numpy(), copy=True)
        if mode == "nan" and np.issubdtype(x.dtype, np.floating):
            x[...] = np.nan
        elif mode == "shape" and i == 0:
            x = np.concatenate([x, x[:1]], axis=0) if x.ndim else np.zeros(2, x.dtype)
        out[key] = Array(x)
    return ArrayRecord(out)


@app.train()
def train(msg: Message, context: Context) -> Message:
    reply = honest(msg, context)
    mode = FAULTS.get(int(context.node_config["partition-id"]))
    if mode is None or reply.has_error():
        return reply
    content = RecordDict(
        {
            "arrays": corrupt(reply.content["arrays"], mode),
            "metrics": reply.content["metrics"],
        }
    )
    return Message(content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    return honest(msg, context)


@app.query()
def query(msg: Message, context: Context) -> Message:
    return honest(msg, context)
