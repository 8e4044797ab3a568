"""Field embeddings for categorical (CTR) inputs, and their L2 penalty.

Input convention: ``x`` is int64 of shape ``(B, F)`` and ``x[:, f]`` lies in
``0 .. field_dims[f] - 1``. One shared ``nn.Embedding`` covers all fields; field ``f`` owns rows
``offset_f .. offset_f + field_dims[f] - 1`` with ``offset_f = sum_{g<f} field_dims[g]``.

Initialisation follows FuxiCTR: rows ``~ N(0, init_std^2)`` with ``init_std = 1e-4`` (nearly
zero, so rows that are never trained, e.g. an out-of-vocabulary slot, contribute ~nothing).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

#: Standard deviation of the initial embedding rows (FuxiCTR's default).
EMBEDDING_INIT_STD = 1e-4


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
    federated averaging could corrupt). ``l2 > 0`` makes :meth:`penalty` return
    ``l2 / 2 * ||W||_F^2`` over the whole table (FuxiCTR's ``embedding_regularizer``), which
    :func:`embedding_penalty` sums and the trainer adds to each batch loss.
    """

    def __init__(
        self,
        field_dims: Sequence[int],
        embedding_dim: int,
        init_std: float = EMBEDDING_INIT_STD,
        l2: float = 0.0,
    ):
        super().__init__()
        dims = _check_field_dims(field_dims)
        if embedding_dim < 1:
            raise ValueError(f"embedding_dim must be >= 1, got {embedding_dim}")
        if not l2 >= 0.0:
            raise ValueError(f"embedding l2 must be >= 0, got {l2}")
        self.field_dims = dims
        self.num_fields = len(dims)
        self.embedding_dim = int(embedding_dim)
        self.l2 = float(l2)
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

    def penalty(self) -> torch.Tensor:
        """``l2 / 2 * ||W||_F^2`` (a zero tensor when ``l2 == 0``)."""
        return 0.5 * self.l2 * self.embedding.weight.pow(2).sum()


class LinearLogit(nn.Module):
    """First-order term ``b + sum_f w_{f, x_f}``; returns shape ``(B,)``. Weights start at 0."""

    def __init__(self, field_dims: Sequence[int], l2: float = 0.0):
        super().__init__()
        self.weights = FeatureEmbedding(field_dims, 1, init_std=0.0, l2=l2)
        self.bias = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weights(x).sum(dim=(1, 2)) + self.bias


def has_embedding_penalty(model: nn.Module) -> bool:
    """Whether any :class:`FeatureEmbedding` inside ``model`` has ``l2 > 0``."""
    return any(isinstance(m, FeatureEmbedding) and m.l2 > 0 for m in model.modules())


def embedding_penalty(model: nn.Module) -> torch.Tensor | None:
    """``sum_e l2_e / 2 * ||W_e||^2`` over the embeddings of ``model`` with ``l2 > 0``;
    None when there are none (so callers add nothing and the arithmetic is unchanged)."""
    terms = [m.penalty() for m in model.modules() if isinstance(m, FeatureEmbedding) and m.l2 > 0]
    if not terms:
        return None
    total = terms[0]
    for t in terms[1:]:
        total = total + t
    return total
