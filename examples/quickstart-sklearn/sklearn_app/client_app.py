"""sklearn-app ClientApp: unmodified Flower quickstart shape (no fedstrat import at all)."""

from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from sklearn_app.task import fit, get_model, get_params, load_data, set_params

app = ClientApp()


@app.train()
def train_fn(msg: Message, context: Context) -> Message:
    pid, n = context.node_config["partition-id"], context.node_config["num-partitions"]
    x, y = load_data(int(pid), int(n), float(context.run_config.get("alpha", 0.3)))
    model = set_params(get_model(int(context.run_config["local-epochs"])), msg.content["arrays"])
    model = fit(model, x, y)
    metrics = MetricRecord({"num-examples": len(y)})
    return Message(RecordDict({"arrays": get_params(model), "metrics": metrics}), reply_to=msg)
