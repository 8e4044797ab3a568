"""``round_row``: a metrics row from the ServerApp's known metric keys."""

from __future__ import annotations

from flwr.app import MetricRecord

from fedstrat.app.rundir import METRIC_COLUMNS, MetricsRow
from fedstrat.app.server_app import EVAL_COLUMNS, TRAIN_METRIC_KEYS, round_row


def test_known_keys_fill_their_columns() -> None:
    assert set(TRAIN_METRIC_KEYS) | set(EVAL_COLUMNS) | {"round", "seconds", "elapsed"} == set(
        METRIC_COLUMNS
    )
    train = MetricRecord(
        {
            "train-loss": 0.7,
            "fedstrat-pred-var": 2.0,
            "fedstrat-pred-var-uniform": 5.0,
            "fedstrat-var-ratio": 2.5,
            "fedstrat-n-selected": 10.0,
            "fedstrat-n-failed": 1.0,
            "fedstrat-n-rejected": 0.0,
            "fedstrat-weight-sum": 1.0,  # not a column
            "fedstrat-pred-var-chosen": 1.0,
            "fedstrat-pred-var-chosen-lo": 0.8,
            "fedstrat-pred-var-chosen-hi": 1.4,
            "fedstrat-pred-var-fedavg": 4.0,
            "fedstrat-pred-var-fedavg-lo": 3.0,
            "fedstrat-pred-var-fedavg-hi": 5.5,
            "fedstrat-pred-var-uniform-difference": 0.5,
            "fedstrat-pred-var-uniform-difference-lo": 0.3,
            "fedstrat-pred-var-uniform-difference-hi": 0.9,
        }
    )
    row = round_row(3, train, MetricRecord({"accuracy": 0.9, "loss": 0.3}), 1.5, 7.0)
    assert row == MetricsRow(
        round=3,
        accuracy=0.9,
        loss=0.3,
        train_loss=0.7,
        pred_var=2.0,
        pred_var_uniform=5.0,
        var_ratio=2.5,
        pred_var_chosen=1.0,
        pred_var_chosen_lo=0.8,
        pred_var_chosen_hi=1.4,
        pred_var_fedavg=4.0,
        pred_var_fedavg_lo=3.0,
        pred_var_fedavg_hi=5.5,
        pred_var_uniform_difference=0.5,
        pred_var_uniform_difference_lo=0.3,
        pred_var_uniform_difference_hi=0.9,
        n_selected=10,
        n_failed=1,
        n_rejected=0,
        seconds=1.5,
        elapsed=7.0,
    )
    assert isinstance(row.n_selected, int)


def test_missing_keys_leave_cells_empty() -> None:
    row = round_row(0, None, MetricRecord({"auc": 0.6, "logloss": 0.69}), 0.0, 0.0)
    assert (row.auc, row.logloss, row.accuracy, row.pred_var, row.n_selected) == (
        0.6,
        0.69,
        None,
        None,
        None,
    )
    # a round without evaluation, without a prediction; the ratio falls back to pvu / pv
    row = round_row(2, MetricRecord({"fedstrat-n-selected": 4.0}), None, 1.0, 2.0)
    assert (row.accuracy, row.pred_var, row.var_ratio, row.n_selected) == (None, None, None, 4)
    train = MetricRecord({"fedstrat-pred-var": 2.0, "fedstrat-pred-var-uniform": 3.0})
    assert round_row(2, train, None, 1.0, 2.0).var_ratio == 1.5
    train = MetricRecord({"train-loss": float("nan")})
    assert round_row(2, train, None, 1.0, 2.0).train_loss is None
