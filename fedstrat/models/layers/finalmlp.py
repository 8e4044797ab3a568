"""FinalMLP building blocks (Mao et al., 2023): feature-selection gating and bilinear fusion."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from fedstrat.models.layers.mlp import MLPBlock, xavier_init_


class FeatureSelection(nn.Module):
    """Stream-specific soft feature selection: ``x * 2 * sigmoid(MLP(c))``.

    The context ``c`` is a learnable vector of size ``embedding_dim`` shared by all examples
    (``context_fields=None``) or the flattened embeddings of the chosen fields. Initialised as in
    FuxiCTR: ``c = 0`` and Xavier-normal gate layers with zero biases, so with the shared context
    the gate starts at exactly ``2 sigmoid(0) = 1`` (identity); with context fields it starts
    near 1 because embeddings start near 0.
    """

    def __init__(
        self,
        input_dim: int,
        embedding_dim: int,
        context_fields: Sequence[int] | None = None,
        hidden_units: Sequence[int] = (64,),
    ):
        super().__init__()
        self.context_fields = None if context_fields is None else [int(f) for f in context_fields]
        if self.context_fields is None:
            self.context = nn.Parameter(torch.zeros(1, embedding_dim))
            ctx_dim = embedding_dim
        else:
            if len(self.context_fields) == 0:
                raise ValueError("context_fields must be None or non-empty")
            self.context = None
            ctx_dim = embedding_dim * len(self.context_fields)
        self.gate = MLPBlock(ctx_dim, hidden_units, output_dim=input_dim)

    def forward(self, flat: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.context_fields is None:
            ctx = self.context.expand(flat.shape[0], -1)
        else:
            ctx = emb[:, self.context_fields, :].flatten(1)
        return flat * 2.0 * torch.sigmoid(self.gate(ctx))


class InteractionAggregation(nn.Module):
    """Multi-head bilinear fusion of two stream outputs ``x`` (B, dx) and ``y`` (B, dy).

    ``logit = b + w_x^T x + w_y^T y + sum_h x_h^T W_h y_h`` where ``x_h``, ``y_h`` are the h-th of
    ``num_heads`` equal chunks. Returns shape (B,). Init (FuxiCTR): ``w_x``, ``w_y``
    Xavier-normal, zero bias; ``W`` normal with ``std = sqrt(2 / (1 + num_heads * hx * hy))``
    (Xavier-normal of the flattened ``(num_heads * hx * hy, 1)`` matrix).
    """

    def __init__(self, x_dim: int, y_dim: int, num_heads: int = 1):
        super().__init__()
        if num_heads < 1 or x_dim % num_heads or y_dim % num_heads:
            raise ValueError(
                f"num_heads={num_heads} must be >= 1 and divide x_dim={x_dim} and y_dim={y_dim}"
            )
        self.num_heads = num_heads
        self.hx = x_dim // num_heads
        self.hy = y_dim // num_heads
        self.w_x = nn.Linear(x_dim, 1)
        self.w_y = nn.Linear(y_dim, 1, bias=False)
        xavier_init_(self.w_x)
        xavier_init_(self.w_y)
        self.w_xy = nn.Parameter(torch.empty(num_heads, self.hx, self.hy))
        nn.init.normal_(self.w_xy, std=math.sqrt(2.0 / (1 + num_heads * self.hx * self.hy)))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        first = self.w_x(x) + self.w_y(y)
        xh = x.view(-1, self.num_heads, self.hx)
        yh = y.view(-1, self.num_heads, self.hy)
        bilinear = torch.einsum("bhi,hij,bhj->b", xh, self.w_xy, yh)
        return first.squeeze(-1) + bilinear
