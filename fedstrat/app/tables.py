"""Text renderings shared by report, compare and measure: number formatting, markdown tables
and CSV files of row objects."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fedstrat.app.fileio import write_text_atomic


def fmt(value: Any, digits: int = 4) -> str:
    """Compact human formatting: None/NaN -> '-', inf -> 'not reached', small or large
    floats in scientific notation, others with ``digits`` significant digits."""
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        if math.isinf(value):
            return "not reached"
        if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
            return f"{value:.3e}"
        return f"{value:.{digits}g}"
    return str(value)


def fmt_ratio(mean: float | None, se: float | None, rounds: int | None, needed: int) -> str:
    """A ratio averaged over rounds with its standard error: ``"1.82 ± 0.07 (9 rounds)"``;
    ``"-"`` with the reason when there is no mean: ``rounds`` None (not recorded: a run
    directory written before the ratio existed) or fewer than ``needed`` rounds."""
    if rounds is None:
        return "- (not recorded)"
    if mean is None or se is None or not math.isfinite(mean) or not math.isfinite(se):
        return f"- ({rounds} tracked round{'s' if rounds != 1 else ''}, {needed} needed)"
    return f"{fmt(mean, 3)} ± {fmt(se, 2)} ({rounds} rounds)"


def fmt_pm(mean: float, se: float, digits: int = 4) -> str:
    """A value with its standard error, ``digits`` and 2 significant digits: ``"3.58 ±
    0.037"``."""
    return f"{fmt(mean, digits)} ± {se:.2g}"


def fmt_band(value: float | None, lo: float | None, hi: float | None) -> str:
    """A predicted value with its band, 3 and 2 significant digits: ``"0.000372 [0.00028,
    0.00054]"`` (``"-"`` without a value, the value alone without a band)."""
    if value is None:
        return "-"
    if lo is None or hi is None:
        return f"{value:.3g}"
    return f"{value:.3g} [{lo:.2g}, {hi:.2g}]"


def markdown_table(heads: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A markdown table of already formatted cells."""
    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return "\n".join(lines) + "\n"


def csv_text(rows: Sequence[Mapping[str, Any]]) -> str:
    """CSV with the union of the rows' keys (first-seen order); lists joined by ';'."""
    keys: list[str] = []
    for r in rows:
        keys.extend(k for k in r if k not in keys)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    for r in rows:
        w.writerow(
            {
                k: ";".join("" if x is None else str(x) for x in v) if isinstance(v, list) else v
                for k, v in r.items()
            }
        )
    return buf.getvalue()


def write_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """:func:`csv_text` of ``rows`` written atomically to ``path``."""
    write_text_atomic(Path(path), csv_text(rows))
