"""Field embeddings for categorical (CTR) inputs.

Input convention: ``x`` is int64 of shape ``(B, F)`` and ``x[:, f]`` lies in
``0 .. field_dims[f] - 1``. One shared ``nn.Embedding`` covers all fields; field ``f`` owns rows
``offset_f .. offset_f + field_dims[f] - 1`` with ``offset_f = sum_{g<f} field_dims[g]``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def _check_field_dims(field_dims: Sequence[int]) -> list[int]:
    dims = [int(d) for d in field_dims]
    if len(dims) == 0:
        raise ValueError("field_dims must name at least one field")
    bad = [(f, d) for f, d in enumerate(dims) if d < 1]
    if bad:
        raise ValueError(f"field_dims must be positive; got (field, size) {bad}")
    return dims


class FeatureEmbedding(nn.Module):
    """Map ``(B, F)`` field ids to ``(B, F, D)`` embeddings with one offset table.

    Offsets are a non-persistent buffer, so ``state_dict`` holds only the table (nothing that
    federated averaging could corrupt).
    """

    def __init__(self, field_dims: Sequence[int], embedding_dim: int, init_std: float = 0.01):
        super().__init__()
        dims = _check_field_dims(field_dims)
        if embedding_dim < 1:
            raise ValueError(f"embedding_dim must be >= 1, got {embedding_dim}")
        self.field_dims = dims
        self.num_fields = len(dims)
        self.embedding_dim = int(embedding_dim)
        self.embedding = nn.Embedding(sum(dims), self.embedding_dim)
        nn.init.normal_(self.embedding.weight, std=init_std)
        offsets = torch.tensor([0, *dims[:-1]], dtype=torch.long).cumsum(0)
        self.register_buffer("offsets", offsets, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or x.shape[1] != self.num_fields:
            raise ValueError(
                f"expected field ids of shape (B, {self.num_fields}), got {tuple(x.shape)}"
            )
        return self.embedding(x.long() + self.offsets)


class LinearLogit(nn.Module):
    """First-order term ``b + sum_f w_{f, x_f}``; returns shape ``(B,)``."""

    def __init__(self, field_dims: Sequence[int]):
        super().__init__()
        self.weights = FeatureEmbedding(field_dims, 1, init_std=0.0)
        self.bias = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weights(x).sum(dim=(1, 2)) + self.bias
