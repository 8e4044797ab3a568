"""The per-round line of ``fedstrat deploy local``: predicted MSEs with their bands (design
used and FedAvg), never the uncertainty-free ratio against uniform Horvitz-Thompson."""

from __future__ import annotations

import re

from fedstrat.app.rundir import MetricsRow, round_event
from fedstrat.cli.deploy import round_line, summary_lines
from fedstrat.cli.report import progress_text


def _event(**cols: float | int | None) -> dict:
    return round_event(MetricsRow(**cols), rounds=5)


def test_deploy_round_line_shows_both_predicted_mses_with_bands_and_no_ratio() -> None:
    ev = _event(round=3, accuracy=0.5, loss=1.2, train_loss=0.9, pred_var=0.01,
                pred_var_uniform=0.04, var_ratio=4.0, pred_var_chosen=0.000372,
                pred_var_chosen_lo=0.000279, pred_var_chosen_hi=0.000536,
                pred_var_fedavg=0.0021, pred_var_fedavg_lo=0.0015, pred_var_fedavg_hi=0.0032,
                n_failed=1)
    line = round_line(ev)
    assert line.startswith("round 3/5  acc 0.5  loss 1.2  ")
    assert "pred MSE 0.000372 [0.00028, 0.00054]  FedAvg 0.0021 [0.0015, 0.0032]" in line
    assert "train_loss 0.9" in line and "n_failed 1" in line
    assert "ratio" not in line and not re.search(r"\b4(\.0+)?\b", line)
    # the same text as simulate's progress bar
    assert progress_text(MetricsRow(**{k: v for k, v in ev.items()
                                       if k not in ("event", "rounds")}),
                         "accuracy", "loss") in line


def test_deploy_round_line_without_tracked_evidence_prints_no_prediction() -> None:
    """A round whose only prediction is the ratio against uniform HT (proxy evidence, or a
    run written before the band metrics existed) prints no predicted number at all."""
    line = round_line(_event(round=1, accuracy=0.3, loss=2.0, pred_var=0.01,
                             pred_var_uniform=0.04, var_ratio=4.0))
    assert line == "round 1/5  acc 0.3  loss 2"


def test_deploy_round_line_reads_ctr_and_unknown_or_missing_keys() -> None:
    line = round_line({"event": "round", "round": 2, "rounds": 4, "auc": 0.71,
                       "logloss": 0.52, "a_key_of_a_later_version": 1})
    assert line == "round 2/4  auc 0.71  logloss 0.52"
    assert round_line({"event": "round"}).startswith("round None/None")


def test_deploy_summary_prints_the_fedavg_ratio_with_its_error_or_why_not() -> None:
    s = {"metric": "accuracy", "final": 0.9, "pred_ratio_fedavg": 1.8234,
         "pred_ratio_fedavg_se": 0.0712, "pred_ratio_rounds": 9, "wall_seconds": 3.0}
    lines = summary_lines(s)
    assert lines[0].startswith("summary: {") and '"final": 0.9' in lines[0]
    assert lines[1] == (
        "pred. MSE FedAvg/this (mean ± s.e. over tracked rounds): 1.82 ± 0.071 (9 rounds)")
    few = summary_lines(s | {"pred_ratio_fedavg": None, "pred_ratio_fedavg_se": None,
                             "pred_ratio_rounds": 2})
    assert few[1].endswith(": - (2 tracked rounds, 3 needed)")
    old = summary_lines({"metric": "accuracy", "final": 0.9, "mean_var_ratio": 4.0})
    assert old[1].endswith(": - (not recorded)") and "4.0" not in "".join(old)
    assert summary_lines({}) == []
