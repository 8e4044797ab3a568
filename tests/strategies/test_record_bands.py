"""The round record's predicted-MSE metrics with their bands: the design used, FedAvg, the
stratified candidate and (estimator="difference", FedAvg rounds) the difference estimator on
the uniform draw; from tracked evidence only, and through ``round_row`` into metrics.csv."""

from __future__ import annotations

import pytest
from flwr.app import MetricRecord

from fedstrat.app.server_app import round_row
from fedstrat.sampling import Band
from fedstrat.strategies.plan import DesignDecision
from fedstrat.strategies.record import PRED_VAR_METRICS, RoundRecord, band_metric_names

STRAT = Band(1.0, 0.7, 1.5, 8.0)
FEDAVG = Band(4.0, 3.0, 5.5, 8.0)
UNI_DIFF = Band(0.5, 0.3, 0.9, 8.0)


def record(decision: DesignDecision | None, estimator: str = "ratio") -> RoundRecord:
    return RoundRecord(
        round=3, selection="stratified", design=decision.mode if decision else "uniform",
        design_reason="", estimator=estimator, allocation_rule="neyman", n_available=4,
        selected=[1, 2], selection_weights=[0.5, 0.5], inclusion=[0.5, 0.5],
        selected_strata=None, responders=[1, 2], weights=[0.5, 0.5], rejected=[],
        failures=[], notes=[], decision=decision,
    )


def band_of(metrics: dict[str, float], what: str) -> list[float] | None:
    names = band_metric_names(PRED_VAR_METRICS[what])
    if names[0] not in metrics:
        assert not any(n in metrics for n in names), names
        return None
    return [metrics[n] for n in names]


def test_a_stratified_round_reports_the_design_used_and_fedavg_with_bands():
    d = DesignDecision("stratified", "tracked", "pps", STRAT, FEDAVG, "why")
    m = record(d).metrics()
    assert band_of(m, "chosen") == STRAT.to_json() == band_of(m, "design")
    assert band_of(m, "fedavg") == FEDAVG.to_json()
    assert band_of(m, "uniform_difference") is None
    assert m["fedstrat-var-ratio-fedavg"] == pytest.approx(4.0)
    assert m["fedstrat-stratified"] == 1.0


def test_a_fedavg_round_uses_fedavg_and_its_own_band():
    d = DesignDecision("fedavg", "tracked", "pps", STRAT, FEDAVG, "candidate lost")
    m = record(d, estimator="ratio").metrics()
    assert band_of(m, "chosen") == FEDAVG.to_json() == band_of(m, "fedavg")
    assert band_of(m, "design") == STRAT.to_json()  # the candidate that lost
    assert m["fedstrat-stratified"] == 0.0


def test_a_difference_fedavg_round_reports_the_uniform_difference_prediction():
    d = DesignDecision("fedavg", "tracked", None, None, FEDAVG, "no strata",
                       predicted_uniform_difference=UNI_DIFF)
    rec = record(d, estimator="difference")
    m = rec.metrics()
    assert band_of(m, "uniform_difference") == UNI_DIFF.to_json()
    assert band_of(m, "uniform_difference") == rec.to_json()["decision"][
        "pred_var_uniform_difference"]
    assert band_of(m, "chosen") == UNI_DIFF.to_json()  # HT weights + difference estimator
    assert band_of(m, "fedavg") == FEDAVG.to_json()
    assert band_of(m, "design") is None and "fedstrat-var-ratio-fedavg" not in m


def test_proxy_evidence_gives_no_predicted_mse_metrics():
    """Before tracked evidence (label-proportion units) the bands stay in sampling.jsonl."""
    d = DesignDecision("stratified", "proxy", "pps", STRAT, FEDAVG, "fit-time choice")
    rec = record(d)
    m = rec.metrics()
    for what in PRED_VAR_METRICS:
        assert band_of(m, what) is None, what
    assert "fedstrat-var-ratio-fedavg" not in m
    assert rec.to_json()["decision"]["pred_var"] == STRAT.to_json()
    assert record(None).chosen_bands() == (None, None)
    warmup = DesignDecision("fedavg", "none", None, None, None, "no strata yet")
    assert band_of(record(warmup, "difference").metrics(), "chosen") is None


def test_the_record_bands_reach_the_metrics_row():
    d = DesignDecision("fedavg", "tracked", None, None, FEDAVG, "no strata",
                       predicted_uniform_difference=UNI_DIFF)
    row = round_row(3, MetricRecord(record(d, "difference").metrics()), None, 1.0, 1.0)
    assert [row.pred_var_uniform_difference, row.pred_var_uniform_difference_lo,
            row.pred_var_uniform_difference_hi] == UNI_DIFF.to_json()
    assert [row.pred_var_chosen, row.pred_var_chosen_lo, row.pred_var_chosen_hi] == (
        UNI_DIFF.to_json())
    assert [row.pred_var_fedavg, row.pred_var_fedavg_lo, row.pred_var_fedavg_hi] == (
        FEDAVG.to_json())
