"""Measured ratios pair rows by round and seed; a measured FedAvg-round draw is not FedAvg."""

from __future__ import annotations

import math

import pytest

from fedstrat.measure.variance import MeasureResult, ratio_se


def row(sel, r, seed, mse, se=0.01, **info):
    return {"selection": sel, "round": r, "seed": seed, "measured": mse, "measured_se": se,
            "info": info}


def test_uniform_over_this_is_the_mean_of_per_seed_pairs():
    rows = [row("uniform", 1, 0, 2.0), row("stratified", 1, 0, 1.0),
            row("uniform", 1, 1, 3.0), row("stratified", 1, 1, 1.0)]
    res = MeasureResult(rows, {})
    assert res.ratio(1) == pytest.approx((2.0 + 3.0) / 2)
    assert math.isnan(MeasureResult(rows[:1], {}).ratio(1))


def test_a_measured_fedavg_round_draw_has_a_ratio_with_its_error_and_a_copy_has_none():
    fed = (1.0, 0.01)
    drawn = ratio_se(fed, row("fedavg-run", 5, 0, 0.9, 0.01,
                              measured="the policy's own FedAvg-round draw, FedAvg's weights"))
    assert drawn[0] == pytest.approx(1 / 0.9) and drawn[1] > 0
    copy = ratio_se(fed, row("fedavg-run", 5, 0, 1.0, 0.01,
                             measured="the fedavg row's Monte Carlo MSE"))
    assert copy == (1.0, 0.0)
