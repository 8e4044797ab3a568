"""``dcnv2``: Deep & Cross Network v2 (Wang et al., 2021), full-rank cross layers.

``x0 = flatten(e)``; "parallel": ``logit = w^T [Cross(x0); MLP(x0)] + b``;
"stacked": ``logit = w^T MLP(Cross(x0)) + b``. Options (all off by default): ``dropout`` and
``batch_norm`` in the MLP, ``embedding_l2``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from fedstrat.models.layers import CrossNetworkV2, FeatureEmbedding, MLPBlock, xavier_init_
from fedstrat.models.registry import ModelSpec, register_model


class DCNv2(nn.Module):
    def __init__(
        self,
        field_dims: Sequence[int],
        embedding_dim: int = 16,
        num_cross_layers: int = 3,
        hidden_units: Sequence[int] = (64, 32),
        structure: str = "parallel",
        dropout: float = 0.0,
        batch_norm: bool = False,
        embedding_l2: float = 0.0,
    ):
        super().__init__()
        if structure not in ("parallel", "stacked"):
            raise ValueError(f"structure must be 'parallel' or 'stacked', got {structure!r}")
        self.structure = structure
        self.embedding = FeatureEmbedding(field_dims, embedding_dim, l2=embedding_l2)
        d = len(field_dims) * embedding_dim
        self.cross = CrossNetworkV2(d, num_cross_layers)
        self.dnn = MLPBlock(d, hidden_units, dropout=dropout, batch_norm=batch_norm)
        out_dim = self.dnn.output_dim + (d if structure == "parallel" else 0)
        self.head = xavier_init_(nn.Linear(out_dim, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x0 = self.embedding(x).flatten(1)
        if self.structure == "parallel":
            h = torch.cat([self.cross(x0), self.dnn(x0)], dim=1)
        else:
            h = self.dnn(self.cross(x0))
        return self.head(h).squeeze(-1)


@register_model("dcnv2", task="ctr")
def build_dcnv2(spec: ModelSpec, **kwargs) -> DCNv2:
    return DCNv2(spec.field_dims, **kwargs)
