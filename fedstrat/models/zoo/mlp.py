"""``mlp``: one hidden layer, input -> 50 -> classes (as in Shen et al., 2022)."""

from __future__ import annotations

import math

import torch
from torch import nn

from fedstrat.models.registry import ModelSpec, register_model


class MLP(nn.Module):
    """``logits = W2 relu(W1 flatten(x) + b1) + b2``."""

    def __init__(self, input_dim: int, num_classes: int, hidden: int = 50):
        super().__init__()
        if input_dim < 1 or num_classes < 1 or hidden < 1:
            raise ValueError(
                f"input_dim, num_classes, hidden must be >= 1: {input_dim}, {num_classes}, {hidden}"
            )
        self.fc1 = nn.Linear(input_dim, hidden)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


@register_model("mlp", task="classification")
def build_mlp(spec: ModelSpec, hidden: int = 50) -> MLP:
    return MLP(math.prod(spec.input_shape), spec.num_classes, hidden=hidden)
