"""``fm``: factorisation machine, ``logit = b + sum_f w_{x_f} + sum_{f<g} <v_{x_f}, v_{x_g}>``."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from fedstrat.models.layers import FeatureEmbedding, FMInteraction, LinearLogit
from fedstrat.models.registry import ModelSpec, register_model


class FM(nn.Module):
    """``embedding_l2``: L2 penalty on the first-order weights and the embeddings (0 = off)."""

    def __init__(
        self, field_dims: Sequence[int], embedding_dim: int = 16, embedding_l2: float = 0.0
    ):
        super().__init__()
        self.linear = LinearLogit(field_dims, l2=embedding_l2)
        self.embedding = FeatureEmbedding(field_dims, embedding_dim, l2=embedding_l2)
        self.fm = FMInteraction()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) + self.fm(self.embedding(x))


@register_model("fm", task="ctr")
def build_fm(spec: ModelSpec, **kwargs) -> FM:
    return FM(spec.field_dims, **kwargs)
