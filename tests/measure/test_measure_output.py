"""The measured-variance folder: write a MeasureResult, read the measured variance back."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from fedstrat.measure import MeasureResult
from fedstrat.measure.output import load_measured, markdown_table, write_outputs


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
    assert measured["uniform"] == pytest.approx(0.4)  # mean over 2 rounds x seeds 1.0, 3.0
    assert measured["stratified"] == pytest.approx(0.1)
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
