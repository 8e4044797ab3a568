"""digits-app ClientApp as a plain Flower app has it: train / evaluate, no fedstrat import.

This is the "unmodified ClientApp" of issue 11: a server running
``StratifiedSelection(..., profiling="auto")`` (run config ``mode = "auto"``) sends it nothing
but Flower's TRAIN messages. ``client_app.py`` is the same app plus the one-line profiling
handler.
"""

from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from digits_app.task import evaluate, load_data, train

app = ClientApp()


@app.train()
def train_fn(msg: Message, context: Context) -> Message:
    x, y = load_data(context)
    cfg = msg.content["config"]
    seed = (int(context.run_config.get("seed", 0)), int(cfg["server-round"]),
            int(context.node_config["partition-id"]))
    arrays, loss = train(
        msg.content["arrays"], x, y, int(cfg["local-epochs"]), float(cfg["lr"]), seed,
        steps=int(cfg.get("local-steps", 0)),
    )
    metrics = MetricRecord({"num-examples": len(y), "train-loss": loss})
    return Message(RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=msg)


@app.evaluate()
def evaluate_fn(msg: Message, context: Context) -> Message:
    x, y = load_data(context)
    loss, acc = evaluate(msg.content["arrays"], x, y)
    metrics = MetricRecord({"num-examples": len(y), "eval-loss": loss, "eval-acc": acc})
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)
