"""Summary statistics of a run's per-round series (no plotting, no I/O)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def series_mean_se(values: Sequence[float]) -> tuple[float, float]:
    """Mean of a series (e.g. one value per round) and its standard error allowing for serial
    correlation: ``sd / sqrt(n) * sqrt((1 + rho) / (1 - rho))`` with ``rho`` the lag-1
    autocorrelation (AR(1) effective sample size ``n (1 - rho) / (1 + rho)``), clipped to
    ``[0, 0.9]``: never below the independent-values error, at most 4.4x it. NaN error with
    fewer than 2 values."""
    x = np.asarray(values, dtype=np.float64)
    mean = float(x.mean()) if x.size else math.nan
    if x.size < 2:
        return mean, math.nan
    c = x - mean
    ss = float(c @ c)
    rho = float(c[1:] @ c[:-1]) / ss if ss > 0 else 0.0
    rho = min(max(rho, 0.0), 0.9)
    return mean, math.sqrt(ss / (x.size - 1) / x.size * (1 + rho) / (1 - rho))
