"""Measured estimator variance of client-selection schemes (in-process, no Flower)."""

from fedstrat.measure.variance import (
    MEASURED_SELECTIONS,
    MeasureResult,
    Population,
    SelectionStats,
    build_samplers,
    compute_client_updates,
    measure_population,
    measure_variance,
    monte_carlo,
)

__all__ = [
    "MEASURED_SELECTIONS",
    "MeasureResult",
    "Population",
    "SelectionStats",
    "build_samplers",
    "compute_client_updates",
    "measure_population",
    "measure_variance",
    "monte_carlo",
]
