"""Explicit feature-interaction layers: FM second order and DCNv2 cross network."""

from __future__ import annotations

import torch
from torch import nn


class FMInteraction(nn.Module):
    """Factorisation-machine second-order term on field embeddings ``e`` of shape (B, F, D).

    ``sum_{f<g} <e_f, e_g> = 1/2 * sum_d [ (sum_f e_{f,d})^2 - sum_f e_{f,d}^2 ]``, shape (B,).
    """

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        if emb.dim() != 3:
            raise ValueError(f"expected embeddings (B, F, D), got {tuple(emb.shape)}")
        square_of_sum = emb.sum(dim=1).pow(2)
        sum_of_square = emb.pow(2).sum(dim=1)
        return 0.5 * (square_of_sum - sum_of_square).sum(dim=1)


class CrossNetworkV2(nn.Module):
    """DCNv2 full-rank cross layers: ``x_{l+1} = x_0 * (W_l x_l + b_l) + x_l`` (``*`` elementwise).

    Input and output shape (B, input_dim). ``W_l`` start Xavier-normal and ``b_l`` at zero
    (FuxiCTR's default for every linear layer, cross layers included).
    """

    def __init__(self, input_dim: int, num_layers: int = 3):
        super().__init__()
        if input_dim < 1 or num_layers < 1:
            raise ValueError(
                f"input_dim and num_layers must be >= 1, got {input_dim}, {num_layers}"
            )
        self.layers = nn.ModuleList(nn.Linear(input_dim, input_dim) for _ in range(num_layers))
        for layer in self.layers:
            nn.init.xavier_normal_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        x = x0
        for layer in self.layers:
            x = x0 * layer(x) + x
        return x
