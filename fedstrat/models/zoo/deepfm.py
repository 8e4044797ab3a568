"""``deepfm``: FM plus an MLP on the concatenated embeddings (Guo et al., 2017).

``logit = LR(x) + FM(e) + MLP(flatten(e))`` with the FM and the MLP sharing embeddings ``e``.
Options (all off by default): ``dropout`` and ``batch_norm`` in the MLP, ``embedding_l2``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from fedstrat.models.layers import FeatureEmbedding, FMInteraction, LinearLogit, MLPBlock
from fedstrat.models.registry import ModelSpec, register_model


class DeepFM(nn.Module):
    def __init__(
        self,
        field_dims: Sequence[int],
        embedding_dim: int = 16,
        hidden_units: Sequence[int] = (64, 32),
        dropout: float = 0.0,
        batch_norm: bool = False,
        embedding_l2: float = 0.0,
    ):
        super().__init__()
        self.linear = LinearLogit(field_dims, l2=embedding_l2)
        self.embedding = FeatureEmbedding(field_dims, embedding_dim, l2=embedding_l2)
        self.fm = FMInteraction()
        self.dnn = MLPBlock(
            len(field_dims) * embedding_dim,
            hidden_units,
            dropout=dropout,
            batch_norm=batch_norm,
            output_dim=1,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        emb = self.embedding(x)
        return self.linear(x) + self.fm(emb) + self.dnn(emb.flatten(1))


@register_model("deepfm", task="ctr")
def build_deepfm(spec: ModelSpec, **kwargs) -> DeepFM:
    return DeepFM(spec.field_dims, **kwargs)
