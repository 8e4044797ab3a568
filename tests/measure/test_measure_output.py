"""The measured-variance folder: write a MeasureResult, read the measured variance back."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

from fedstrat.measure import MeasureResult
from fedstrat.measure.output import (
    aggregate,
    load_measured,
    markdown_table,
    ratio_line,
    write_outputs,
)


def _result() -> MeasureResult:
    rows = []
    for seed, scale in ((0, 1.0), (1, 3.0)):
        for rnd in (1, 10):
            for sel, mse, pred in (
                ("uniform", 0.2, 0.2),
                ("stratified", 0.05, 0.05),
                ("poc", 0.18, math.nan),
            ):
                rows.append(
                    {
                        "round": rnd,
                        "seed": seed,
                        "selection": sel,
                        "measured": mse * scale,
                        "predicted": pred,
                        "uniform_over_this": 0.2 / mse,
                        "bias_z": 1.0,
                        "unbiased": sel != "poc",
                        "info": {"k": 1},
                    }
                )
    meta = {
        "dataset": "digits",
        "partition": "dirichlet",
        "num_clients": 10,
        "clients_per_round": 3,
        "seeds": [0, 1],
    }
    return MeasureResult(rows=rows, meta=meta)


def test_write_outputs_and_load_measured(tmp_path: Path) -> None:
    files = write_outputs(_result(), tmp_path)
    assert [f.name for f in files] == ["variance.json", "variance.csv", "table.md", "variance.png"]
    assert (tmp_path / "variance.png").read_bytes()[:4] == b"\x89PNG"
    data = json.loads((tmp_path / "variance.json").read_text())
    assert data["rows"][2]["predicted"] is None  # NaN -> null
    measured = load_measured(tmp_path / "variance.json")
    assert measured["uniform"].mean == pytest.approx(0.4)  # 2 rounds x seeds 1.0, 3.0
    assert measured["stratified"].mean == pytest.approx(0.1)
    # a file without measured_se: the ratio against uniform without its error
    assert measured["stratified"].ratio_uniform == pytest.approx(4.0)
    assert math.isnan(measured["stratified"].ratio_uniform_se)
    table = (tmp_path / "table.md").read_text()
    assert table == markdown_table(_result()) and "poc (biased)" in table
    assert load_measured(tmp_path / "missing.json") == {}


def test_measure_output_does_not_import_the_cli() -> None:
    code = (
        "import sys, fedstrat.measure.output; "
        "print(any(m.startswith('fedstrat.cli') for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def _row(rnd: int, seed: int, sel: str, mse: float, se: float | None, **kw: object) -> dict:
    row = {"round": rnd, "seed": seed, "selection": sel, "measured": mse, "predicted": math.nan,
           "bias_z": 1.0, "unbiased": sel not in ("fedavg", "fedavg-run"), "info": {}}
    if se is not None:
        row["measured_se"] = se
    return row | kw


def _tracked() -> MeasureResult:
    """uniform 0.4, FedAvg 0.3, stratified 0.1 (MC s.e. 1% of each), one round, two seeds;
    the in-run predictions of the design and of FedAvg on stratified-run / fedavg-run."""
    rows = []
    for seed, k in ((0, 1.0), (1, 1.1)):
        f, s = 0.3 * k, 0.1 * k
        fed = {"fedavg_over_this_se": 0.0}
        rows += [
            _row(3, seed, "uniform", 0.4 * k, 0.004 * k, uniform_over_this=1.0,
                 fedavg_over_this=0.75),
            _row(3, seed, "fedavg", f, 0.003 * k, fedavg_over_this=1.0, **fed),
            _row(3, seed, "stratified", s, 0.001 * k, fedavg_over_this=3.0,
                 fedavg_over_this_se=3.0 * math.hypot(0.01, 0.01)),
            _row(3, seed, "stratified-run", s, 0.001 * k, predicted=0.12 * k,
                 fedavg_over_this=3.0, fedavg_over_this_se=0.04,
                 info={"band": [0.12 * k, 0.09 * k, 0.15 * k]}),
            _row(3, seed, "fedavg-run", f, 0.003 * k, predicted=0.2 * k, fedavg_over_this=1.0,
                 info={"band": [0.2 * k, 0.15 * k, 0.25 * k]}, **fed),
        ]
    return MeasureResult(rows=rows, meta={"seeds": [0, 1]})


def test_measured_ratios_carry_their_delta_method_standard_error() -> None:
    rows = {a["selection"]: a for a in aggregate(_tracked(), 3)}
    strat = rows["stratified"]
    # uniform / stratified = 4 in both seeds: se of each = 4 * sqrt(0.01^2 + 0.01^2); no
    # spread over seeds, so the combined error is sqrt(2 se^2) / 2
    se = 4 * math.hypot(0.01, 0.01)
    assert strat["ratio"] == pytest.approx(4.0)
    assert strat["ratio_se"] == pytest.approx(math.sqrt(2) * se / 2)
    assert rows["uniform"]["ratio"] == 1.0 and rows["uniform"]["ratio_se"] == 0.0
    assert strat["fedavg_ratio"] == pytest.approx(3.0) and strat["fedavg_ratio_se"] > 0
    table = markdown_table(_tracked())
    assert "| 4 ± 0.04 |" in table and "inf" not in table and "nan" not in table


def test_predicted_is_printed_next_to_measured_for_the_design_and_fedavg() -> None:
    rows = {a["selection"]: a for a in aggregate(_tracked(), 3)}
    run, fed = rows["stratified-run"], rows["fedavg-run"]
    assert run["predicted"] == pytest.approx(0.126) and fed["predicted"] == pytest.approx(0.21)
    assert run["pred_over_meas"] == pytest.approx(1.2) and run["pred_over_meas_se"] > 0
    assert fed["pred_over_meas"] == pytest.approx(2 / 3)
    assert (run["in_band"], fed["in_band"]) == ("2/2", "0/2")
    lines = {ln.split(" | ")[1]: ln for ln in markdown_table(_tracked()).splitlines()[2:]}
    assert "| 0.126 | 2/2 | 1.2 ± " in lines["stratified-run"]
    assert "| 0.21 | 0/2 | 0.6667 ± " in lines["fedavg-run (biased)"]


def test_ratio_line_has_its_uncertainty_or_says_why_not() -> None:
    line = ratio_line(_tracked())
    assert re.fullmatch(
        r"measured MSE uniform/stratified 4 ± 0\.04, FedAvg/stratified 3 ± 0\.03 "
        r"\(mean ± s\.e\. over 1 round x 2 seeds\)", line), line
    only = MeasureResult(rows=[r for r in _tracked().rows if r["selection"] != "fedavg"],
                         meta={})
    assert "FedAvg/stratified - (no fedavg row)" in ratio_line(only)
    zero = MeasureResult(rows=[r | {"measured": 0.0} if r["selection"] == "stratified" else r
                               for r in _tracked().rows], meta={})
    assert "uniform/stratified - (measured 0)" in ratio_line(zero)
    assert "- (no stratified-sketch row)" in ratio_line(zero, over="stratified-sketch")


def test_old_rows_without_standard_errors_print_no_ratio(tmp_path: Path) -> None:
    """_result() is a file written without measured_se / fedavg_over_this: it still reads,
    its ratios print as "-" with the reason, never as a bare number."""
    rows = {a["selection"]: a for a in aggregate(_result(), 1)}
    assert math.isnan(rows["stratified"]["ratio_se"])
    table = markdown_table(_result())
    assert "- (no s.e. recorded)" in table and "- (no FedAvg row)" in table
    cells = [c.strip() for ln in table.splitlines()[2:] for c in ln.split("|")]
    assert {c for c in cells if "±" in c} == {"1 ± 0"}  # only uniform against itself
    assert ratio_line(_result()).startswith("measured MSE uniform/stratified - (no s.e. recorded)")
