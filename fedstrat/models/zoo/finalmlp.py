"""``finalmlp``: two-stream MLP with feature selection and bilinear fusion (Mao et al., 2023).

``e = flatten(embeddings)``; stream k sees ``e * 2 sigmoid(MLP_k^gate(c_k))`` and computes
``o_k = MLP_k(.)``; ``logit = b + w_1^T o_1 + w_2^T o_2 + sum_h o_{1,h}^T W_h o_{2,h}``.
Options (all off by default): ``dropout`` and ``batch_norm`` in both MLPs, ``embedding_l2``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from fedstrat.models.layers import (
    FeatureEmbedding,
    FeatureSelection,
    InteractionAggregation,
    MLPBlock,
)
from fedstrat.models.registry import ModelSpec, register_model


class FinalMLP(nn.Module):
    def __init__(
        self,
        field_dims: Sequence[int],
        embedding_dim: int = 16,
        mlp1_hidden_units: Sequence[int] = (64, 64),
        mlp2_hidden_units: Sequence[int] = (64, 64),
        feature_selection: bool = True,
        fs1_context: Sequence[int] | None = None,
        fs2_context: Sequence[int] | None = None,
        fs_hidden_units: Sequence[int] = (64,),
        num_heads: int = 1,
        dropout: float = 0.0,
        batch_norm: bool = False,
        embedding_l2: float = 0.0,
    ):
        super().__init__()
        self.embedding = FeatureEmbedding(field_dims, embedding_dim, l2=embedding_l2)
        d = len(field_dims) * embedding_dim
        self.feature_selection = feature_selection
        if feature_selection:
            self.fs1 = FeatureSelection(d, embedding_dim, fs1_context, fs_hidden_units)
            self.fs2 = FeatureSelection(d, embedding_dim, fs2_context, fs_hidden_units)
        self.mlp1 = MLPBlock(d, mlp1_hidden_units, dropout=dropout, batch_norm=batch_norm)
        self.mlp2 = MLPBlock(d, mlp2_hidden_units, dropout=dropout, batch_norm=batch_norm)
        self.fusion = InteractionAggregation(
            self.mlp1.output_dim, self.mlp2.output_dim, num_heads=num_heads
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        emb = self.embedding(x)
        flat = emb.flatten(1)
        if self.feature_selection:
            x1, x2 = self.fs1(flat, emb), self.fs2(flat, emb)
        else:
            x1 = x2 = flat
        return self.fusion(self.mlp1(x1), self.mlp2(x2))


@register_model("finalmlp", task="ctr")
def build_finalmlp(spec: ModelSpec, **kwargs) -> FinalMLP:
    return FinalMLP(spec.field_dims, **kwargs)
