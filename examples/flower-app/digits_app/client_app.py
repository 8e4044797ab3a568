"""digits-app ClientApp: local SGD on this node's partition."""

import numpy as np
from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from digits_app.task import evaluate, load_data, train
from fedstrat.clients import register_profiling

app = ClientApp()


@app.train()
def train_fn(msg: Message, context: Context) -> Message:
    x, y = load_data(context)
    cfg = msg.content["config"]
    seed = int(cfg["server-round"]) * 1000 + int(context.node_config["partition-id"])
    arrays, loss = train(
        msg.content["arrays"], x, y, int(cfg["local-epochs"]), float(cfg["lr"]), seed
    )
    metrics = MetricRecord({"num-examples": len(y), "train-loss": loss})
    return Message(RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=msg)


@app.evaluate()
def evaluate_fn(msg: Message, context: Context) -> Message:
    x, y = load_data(context)
    loss, acc = evaluate(msg.content["arrays"], x, y)
    metrics = MetricRecord({"num-examples": len(y), "eval-loss": loss, "eval-acc": acc})
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)


register_profiling(
    app, lambda ctx: (np.bincount(load_data(ctx)[1], minlength=10), len(load_data(ctx)[1]))
)
