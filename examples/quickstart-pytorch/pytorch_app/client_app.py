"""pytorch-app ClientApp: train / evaluate (+ the fedstrat profiling handler, 2 lines)."""

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedstrat.clients import label_profile, register_profiling
from pytorch_app.task import Net, load_data, test, train

app = ClientApp()


def _data(context: Context):
    pid, n = context.node_config["partition-id"], context.node_config["num-partitions"]
    return load_data(int(pid), int(n), float(context.run_config.get("alpha", 0.3)))


@app.train()
def train_fn(msg: Message, context: Context) -> Message:
    torch.manual_seed(int(msg.content["config"]["server-round"]))
    net = Net()
    net.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    trainloader, _ = _data(context)
    loss = train(net, trainloader, int(context.run_config["local-epochs"]),
                 float(context.run_config["lr"]))
    metrics = MetricRecord({"train_loss": loss, "num-examples": len(trainloader.dataset)})
    content = RecordDict({"arrays": ArrayRecord(net.state_dict()), "metrics": metrics})
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate_fn(msg: Message, context: Context) -> Message:
    net = Net()
    net.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    trainloader, _ = _data(context)
    loss, acc = test(net, trainloader)
    metrics = MetricRecord({"eval_loss": loss, "eval_acc": acc,
                            "num-examples": len(trainloader.dataset)})
    return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)


register_profiling(app, lambda ctx: label_profile(_data(ctx)[0], num_classes=10))
