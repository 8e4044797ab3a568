"""pytorch-app ServerApp: FedAvg, with training clients chosen by stratified selection."""

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from fedstrat.strategies import StratifiedSelection
from pytorch_app.task import Net, load_data, test

app = ServerApp()


def central_evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
    net = Net()
    net.load_state_dict(arrays.to_torch_state_dict())
    _, testloader = load_data(0, 1)
    loss, acc = test(net, testloader)
    return MetricRecord({"loss": loss, "accuracy": acc})


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    torch.manual_seed(0)
    strategy = StratifiedSelection(FedAvg(fraction_evaluate=0.0), profiling="query",
                                   clients_per_round=int(cfg["clients-per-round"]))
    result = strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(Net().state_dict()),
        num_rounds=int(cfg["num-server-rounds"]),
        train_config=ConfigRecord({"lr": float(cfg["lr"])}),
        evaluate_fn=central_evaluate,
    )
    last = max(result.evaluate_metrics_serverapp)
    print(f"final accuracy: {result.evaluate_metrics_serverapp[last]['accuracy']:.3f}")
