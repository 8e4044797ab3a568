"""Reusable layers shared by the CTR models (FuxiCTR-style split of layers from models)."""

from fedstrat.models.layers.embedding import FeatureEmbedding, LinearLogit
from fedstrat.models.layers.finalmlp import FeatureSelection, InteractionAggregation
from fedstrat.models.layers.interaction import CrossNetworkV2, FMInteraction
from fedstrat.models.layers.mlp import MLPBlock, make_activation

__all__ = [
    "CrossNetworkV2",
    "FMInteraction",
    "FeatureEmbedding",
    "FeatureSelection",
    "InteractionAggregation",
    "LinearLogit",
    "MLPBlock",
    "make_activation",
]
