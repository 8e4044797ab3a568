"""digits-app ServerApp: FedAvg, with training clients chosen by stratified selection."""

from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from digits_app.task import evaluate, init_arrays, test_data
from fedstrat.strategies import StratifiedSelection

app = ServerApp()


def central_evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
    loss, acc = evaluate(arrays, *test_data())
    return MetricRecord({"loss": loss, "accuracy": acc})


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    m = int(cfg.get("clients-per-round", 10))
    strategy = StratifiedSelection(FedAvg(fraction_evaluate=0.0), clients_per_round=m,
                                   profiling="query")
    result = strategy.start(
        grid=grid,
        initial_arrays=init_arrays(),
        num_rounds=int(cfg.get("num-server-rounds", 20)),
        train_config=ConfigRecord(
            {"lr": float(cfg.get("lr", 0.5)), "local-epochs": int(cfg.get("local-epochs", 2))}
        ),
        evaluate_fn=central_evaluate,
    )
    print(
        "final accuracy:",
        result.evaluate_metrics_serverapp[max(result.evaluate_metrics_serverapp)]["accuracy"],
    )
