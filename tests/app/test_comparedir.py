"""The compare directory: write a comparison of run directories and read it back."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from fedstrat.app.comparedir import (
    COMPARE_COLUMNS,
    CompareRow,
    compare_markdown,
    find_runs,
    load_comparison,
    run_dir_name,
    write_comparison,
)
from fedstrat.app.config import RunConfig
from fedstrat.app.fileio import json_text
from fedstrat.app.rundir import (
    MetricsRow,
    RunDirError,
    load_run,
    summarize,
    write_config,
    write_metrics,
    write_summary,
)
from fedstrat.measure.output import load_measured


def _run(root: Path, selection: str, seed: int, accs: list[float], pv: float) -> Path:
    d = root / run_dir_name(selection, seed)
    rows = [
        MetricsRow(
            round=r,
            accuracy=a,
            loss=1 - a,
            pred_var=pv if r else None,
            pred_var_uniform=0.04 if r else None,
            var_ratio=0.04 / pv if r else None,
            # FedAvg predicted 0.04 [0.03, 0.05]; the design used pv [pv/2, 2 pv]
            pred_var_chosen=pv if r else None,
            pred_var_chosen_lo=pv / 2 if r else None,
            pred_var_chosen_hi=2 * pv if r else None,
            pred_var_fedavg=0.04 if r else None,
            pred_var_fedavg_lo=0.03 if r else None,
            pred_var_fedavg_hi=0.05 if r else None,
        )
        for r, a in enumerate(accs)
    ]
    cfg = RunConfig(dataset="digits", selection=selection, seed=seed, target_accuracy=0.5)
    write_config(d, cfg)
    write_metrics(d, rows)
    write_summary(d, summarize(rows, cfg, wall_seconds=1.0))
    return d


def test_write_and_load_comparison_round_trip(tmp_path: Path) -> None:
    _run(tmp_path, "uniform", 0, [0.1, 0.2, 0.3], 0.04)
    _run(tmp_path, "stratified", 0, [0.1, 0.6, 0.7, 0.7, 0.7], 0.01)
    _run(tmp_path, "stratified", 1, [0.1, 0.4, 0.6], 0.02)
    paths, compares = find_runs([tmp_path])
    assert compares == [tmp_path] and [p.name for p in paths] == [
        "stratified-s0",
        "stratified-s1",
        "uniform-s0",
    ]
    runs = [load_run(p) for p in paths]
    out = tmp_path / "compare"
    rows, files = write_comparison(runs, out, {"uniform": 2.0, "stratified": 0.5})
    assert sorted(f.name for f in files) == sorted(
        ["compare.json", "compare.csv", "runs.csv", "table.md", "accuracy.png", "variance.png"]
    )
    assert [r.selection for r in rows] == ["stratified", "uniform"]
    strat, uni = rows
    assert (strat.seeds, strat.n_runs, strat.rounds_to_target) == ("0,1", 2, [1, 2])
    assert strat.final_mean == pytest.approx(0.65)
    assert strat.mean_pred_var == pytest.approx(0.015)
    assert uni.rounds_to_target_median == math.inf and math.isnan(uni.speedup_vs_uniform)
    assert strat.measured_ratio_uniform_over == pytest.approx(4.0)
    # infinities are kept as "inf" in compare.json and read back
    assert (
        json.loads((out / "compare.json").read_text())["rows"][1]["rounds_to_target_median"]
        == "inf"
    )
    back_rows, back_runs = load_comparison(out)
    assert [json_text(r.to_dict(), keep_inf=True) for r in back_rows] == [
        json_text(r.to_dict(), keep_inf=True) for r in rows
    ]
    assert back_rows[1].rounds_to_target_median == math.inf
    assert [r.run_dir for r in back_runs] == [str(p) for p in paths]
    assert back_runs[0].final_score == 0.7 and back_runs[0].pred_ratio_fedavg == pytest.approx(4.0)
    table = (out / "table.md").read_text()
    assert table == compare_markdown(rows) and "| stratified | 2 |" in table
    assert len(table.splitlines()[0].split("|")) == len(COMPARE_COLUMNS) + 2


def test_compare_row_fields_and_errors(tmp_path: Path) -> None:
    assert {k for k, _ in COMPARE_COLUMNS} <= set(CompareRow.__dataclass_fields__)
    with pytest.raises(RunDirError, match="not a directory"):
        find_runs([tmp_path / "missing"])
    with pytest.raises(RunDirError, match="neither a run directory"):
        find_runs([tmp_path])
    (tmp_path / "compare").mkdir()
    (tmp_path / "compare" / "compare.json").write_text('{"rows": [{"selection": "x"}], "runs": []}')
    with pytest.raises(RunDirError, match="compare.json"):
        load_comparison(tmp_path / "compare")


def test_compare_ratio_pools_the_runs_with_enough_tracked_rounds(tmp_path: Path) -> None:
    """stratified-s0: 4 tracked rounds of FedAvg/this = 4.0 (s.e. 0); stratified-s1: 2
    rounds (too few: no ratio of its own, counted in the rounds); uniform: 2 rounds."""
    _run(tmp_path, "stratified", 0, [0.1, 0.6, 0.7, 0.7, 0.7], 0.01)
    _run(tmp_path, "stratified", 1, [0.1, 0.4, 0.6], 0.02)
    _run(tmp_path, "uniform", 0, [0.1, 0.2, 0.3], 0.04)
    runs = [load_run(p) for p in find_runs([tmp_path])[0]]
    rows, _ = write_comparison(runs, tmp_path / "compare")
    strat, uni = rows
    assert (strat.pred_ratio_fedavg, strat.pred_ratio_fedavg_se) == (pytest.approx(4.0), 0.0)
    assert strat.pred_ratio_rounds == 6
    assert math.isnan(uni.pred_ratio_fedavg) and uni.pred_ratio_rounds == 2
    table = compare_markdown(rows)
    assert "pred. MSE FedAvg/this (mean ± s.e. over tracked rounds)" in table
    assert "| 4 ± 0 (6 rounds) |" in table
    assert "| - (2 tracked rounds, 3 needed) |" in table
    assert "inf" not in table.replace("not reached", "")


def test_comparison_written_before_the_fedavg_ratio_reads_back(tmp_path: Path) -> None:
    _run(tmp_path, "stratified", 0, [0.1, 0.6, 0.7, 0.7], 0.01)
    out = tmp_path / "compare"
    write_comparison([load_run(p) for p in find_runs([tmp_path])[0]], out)
    data = json.loads((out / "compare.json").read_text())
    for row in data["rows"]:
        row["mean_pred_ratio"] = 4.0
        for key in ("pred_ratio_fedavg", "pred_ratio_fedavg_se", "pred_ratio_rounds"):
            del row[key]
    for run in data["runs"]:
        run["mean_ratio"] = 4.0
        for key in ("pred_ratio_fedavg", "pred_ratio_fedavg_se", "pred_ratio_rounds"):
            del run[key]
    (out / "compare.json").write_text(json.dumps(data))
    rows, runs = load_comparison(out)
    assert math.isnan(rows[0].pred_ratio_fedavg) and rows[0].pred_ratio_rounds is None
    assert runs[0].pred_ratio_fedavg is None
    assert "| - (not recorded) |" in compare_markdown(rows)


def _variance_json(path: Path, with_se: bool = True) -> Path:
    """uniform 0.4 / stratified 0.1 at rounds 1 and 10 of seed 0 (MC s.e. 1%), and at round 1
    of seed 1 uniform 0.6 / stratified 0.1: per-pair ratios 4, 4, 6."""
    rows = []
    for rnd, seed, u, s in ((1, 0, 0.4, 0.1), (10, 0, 0.4, 0.1), (1, 1, 0.6, 0.1)):
        for sel, mse in (("uniform", u), ("stratified", s)):
            row = {"round": rnd, "seed": seed, "selection": sel, "measured": mse}
            rows.append(row | ({"measured_se": mse / 100} if with_se else {}))
    path.mkdir(parents=True, exist_ok=True)
    (path / "variance.json").write_text(json.dumps({"meta": {}, "rows": rows}))
    return path / "variance.json"


def test_measured_ratio_carries_its_standard_error_into_the_comparison(tmp_path: Path) -> None:
    _run(tmp_path, "uniform", 0, [0.1, 0.2, 0.3], 0.04)
    _run(tmp_path, "stratified", 0, [0.1, 0.6, 0.7], 0.01)
    measured = load_measured(_variance_json(tmp_path / "variance"))
    runs = [load_run(p) for p in find_runs([tmp_path])[0]]
    rows, _ = write_comparison(runs, tmp_path / "compare", measured)
    strat, uni = rows
    # mean of the per-(round, seed) ratios 4, 4, 6; the spread over them is the larger error
    spread = math.sqrt(((4 - 14 / 3) ** 2 * 2 + (6 - 14 / 3) ** 2) / 2) / math.sqrt(3)
    assert strat.measured_ratio_uniform_over == pytest.approx(14 / 3)
    assert strat.measured_ratio_uniform_over_se == pytest.approx(spread)
    assert strat.measured_ratio_pairs == 3
    assert (uni.measured_ratio_uniform_over, uni.measured_ratio_uniform_over_se) == (1.0, 0.0)
    assert strat.measured_var == pytest.approx(0.1)
    assert strat.measured_var_se == pytest.approx(math.sqrt(3 * 0.001**2) / 3)
    table = compare_markdown(rows)
    assert "measured uniform/this (mean ± s.e. over rounds × seeds)" in table
    assert f"| 4.67 ± {spread:.2g} (3 pairs) |" in table
    back, _ = load_comparison(tmp_path / "compare")
    assert back[0].measured_ratio_uniform_over_se == pytest.approx(spread)


def test_measured_ratio_without_standard_errors_is_not_printed_as_a_number(
    tmp_path: Path,
) -> None:
    """A variance.json written without measured_se, or bare means: the ratio stays in
    compare.json, the table says why it prints none."""
    _run(tmp_path, "uniform", 0, [0.1, 0.2, 0.3], 0.04)
    _run(tmp_path, "stratified", 0, [0.1, 0.6, 0.7], 0.01)
    runs = [load_run(p) for p in find_runs([tmp_path])[0]]
    old = load_measured(_variance_json(tmp_path / "variance", with_se=False))
    for measured in (old, {"uniform": 0.4, "stratified": 0.1}):
        rows, _ = write_comparison(runs, tmp_path / "compare", measured)
        assert rows[0].measured_ratio_uniform_over > 3.9
        assert math.isnan(rows[0].measured_ratio_uniform_over_se)
        table = compare_markdown(rows)
        strat_line = next(ln for ln in table.splitlines() if ln.startswith("| stratified |"))
        assert strat_line.endswith("| - (no s.e. recorded) |") and "±" not in strat_line
    rows, _ = write_comparison(runs, tmp_path / "compare", {"stratified": 0.1})
    assert "| - (no uniform measured) |" in compare_markdown(rows)


def test_comparison_written_before_the_measured_errors_reads_back(tmp_path: Path) -> None:
    _run(tmp_path, "stratified", 0, [0.1, 0.6, 0.7, 0.7], 0.01)
    out = tmp_path / "compare"
    write_comparison([load_run(p) for p in find_runs([tmp_path])[0]], out, {"stratified": 0.1})
    data = json.loads((out / "compare.json").read_text())
    for row in data["rows"]:
        for key in ("measured_var_se", "measured_ratio_uniform_over_se", "measured_ratio_pairs"):
            del row[key]
    (out / "compare.json").write_text(json.dumps(data))
    rows, _ = load_comparison(out)
    assert math.isnan(rows[0].measured_var_se) and rows[0].measured_ratio_pairs is None
    assert "inf" not in compare_markdown(rows).replace("not reached", "")


def test_speedup_band_brackets_the_ratio_of_medians_and_needs_three_seeds_a_side():
    import math

    from fedstrat.app.comparedir import speedup_band

    base, this = [20, 24, 28, 22, 26], [10, 12, 14, 11, 13]
    lo, hi = speedup_band(base, this)
    assert lo <= 24 / 12 <= hi and 1.0 < lo and hi < 3.0
    assert speedup_band(base, this) == (lo, hi)  # seeded: reproducible
    assert all(math.isnan(v) for v in speedup_band(base, [10, 12]))
    # uniform reaching the target in only some seeds: the band's top is unbounded
    lo, hi = speedup_band([20, None, None, 30, None], [10, 12, 14])
    assert math.isinf(hi) and lo >= 0


def test_speedup_cell_prints_the_band_or_why_not():
    import dataclasses

    from fedstrat.app.comparedir import CompareRow, compare_table

    row = CompareRow("stratified", "0-4", 5, "accuracy", 0.9, 0.01, 0.9, 0.85, 12.0,
                     [10, 12, 14, 11, 13], 5, math.nan, math.nan, speedup_vs_uniform=2.0,
                     speedup_lo=1.6, speedup_hi=math.inf)
    heads, cells = compare_table([row, dataclasses.replace(row, speedup_lo=math.nan),
                                  dataclasses.replace(row, speedup_vs_uniform=math.nan)])
    col = [h.startswith("speed-up") for h in heads].index(True)
    assert cells[0][col].endswith("unbounded]") and "inf" not in cells[0][col]
    assert cells[1][col] == "- (fewer than 3 seeds on a side)"
    assert cells[2][col].startswith("- (")
