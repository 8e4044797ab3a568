"""Stratified client sampling: strata, allocation, samplers, variance, design choice.

Imports only numpy, scipy and scikit-learn (never torch or flwr).
"""

from .allocation import design_neyman_allocation, neyman_allocation, proportional_allocation
from .baseline import Band, fedavg_variance, satterthwaite_band
from .design import DesignChoice, LabelHomogeneity, choose_design, label_homogeneity
from .samplers import (
    ClusteredSampler,
    MultinomialSampler,
    PowerOfChoiceSampler,
    SelfNormalisedSampler,
    StratifiedSampler,
    UniformSampler,
    default_poc_d,
    pps_inclusion,
    systematic_pps,
)
from .selection import Sampler, Selection
from .size_trend import SizeTrend
from .sketch import count_sketch
from .strata import (
    SKETCH_METHODS,
    Strata,
    privatize_histogram,
    sketch_update,
    stratify_by_histograms,
    stratify_by_sketches,
)
from .update_scale import UpdateScale
from .variance import (
    StratumVarianceTracker,
    VariancePrediction,
    estimator_variance,
    multinomial_variance,
    point_stratified,
    predicted_variance,
    stratum_statistics,
    uniform_variance,
)

__all__ = [
    "Band",
    "fedavg_variance",
    "satterthwaite_band",
    "ClusteredSampler",
    "DesignChoice",
    "LabelHomogeneity",
    "label_homogeneity",
    "MultinomialSampler",
    "PowerOfChoiceSampler",
    "SKETCH_METHODS",
    "Sampler",
    "Selection",
    "SizeTrend",
    "SelfNormalisedSampler",
    "StratifiedSampler",
    "Strata",
    "StratumVarianceTracker",
    "UniformSampler",
    "UpdateScale",
    "VariancePrediction",
    "choose_design",
    "count_sketch",
    "default_poc_d",
    "design_neyman_allocation",
    "estimator_variance",
    "multinomial_variance",
    "neyman_allocation",
    "pps_inclusion",
    "predicted_variance",
    "point_stratified",
    "privatize_histogram",
    "proportional_allocation",
    "sketch_update",
    "stratify_by_histograms",
    "stratify_by_sketches",
    "stratum_statistics",
    "systematic_pps",
    "uniform_variance",
]
