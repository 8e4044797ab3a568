"""Reusable layers shared by the CTR models (FuxiCTR-style split of layers from models)."""

from fedstrat.models.layers.embedding import (
    EMBEDDING_INIT_STD,
    FeatureEmbedding,
    LinearLogit,
    embedding_penalty,
    has_embedding_penalty,
)
from fedstrat.models.layers.finalmlp import FeatureSelection, InteractionAggregation
from fedstrat.models.layers.interaction import CrossNetworkV2, FMInteraction
from fedstrat.models.layers.mlp import MLPBlock, make_activation, xavier_init_

__all__ = [
    "EMBEDDING_INIT_STD",
    "CrossNetworkV2",
    "FMInteraction",
    "FeatureEmbedding",
    "FeatureSelection",
    "InteractionAggregation",
    "LinearLogit",
    "MLPBlock",
    "embedding_penalty",
    "has_embedding_penalty",
    "make_activation",
    "xavier_init_",
]
