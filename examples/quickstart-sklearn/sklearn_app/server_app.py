"""sklearn-app ServerApp: FedAvg with training clients chosen by stratified selection."""

from flwr.app import ArrayRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from fedstrat.strategies import StratifiedSelection
from sklearn_app.task import evaluate, get_model, initial_params, set_params, test_data

app = ServerApp()


def central_evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
    loss, acc = evaluate(set_params(get_model(), arrays), *test_data())
    return MetricRecord({"loss": loss, "accuracy": acc})


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    strategy = StratifiedSelection(FedAvg(fraction_evaluate=0.0),
                                   clients_per_round=int(cfg["clients-per-round"]))
    result = strategy.start(grid=grid, initial_arrays=initial_params(),
                            num_rounds=int(cfg["num-server-rounds"]),
                            evaluate_fn=central_evaluate)
    last = max(result.evaluate_metrics_serverapp)
    print(f"final accuracy: {result.evaluate_metrics_serverapp[last]['accuracy']:.3f}")
