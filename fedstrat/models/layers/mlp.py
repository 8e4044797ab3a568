"""Fully connected block used by the deep parts of CTR models (and anywhere else)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

_ACTIVATIONS = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "gelu": nn.GELU,
    "leakyrelu": nn.LeakyReLU,
    "silu": nn.SiLU,
}


def xavier_init_(module: nn.Module) -> nn.Module:
    """FuxiCTR's dense initialisation, in place: every ``nn.Linear`` inside ``module`` gets
    Xavier-normal weights (``std = sqrt(2 / (fan_in + fan_out))``) and a zero bias."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_normal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return module


def make_activation(name: str) -> nn.Module:
    """Return a fresh activation module by (case-insensitive) name."""
    key = name.lower().replace("_", "")
    if key not in _ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose from {sorted(_ACTIVATIONS)}")
    return _ACTIVATIONS[key]()


class MLPBlock(nn.Module):
    """``[Linear -> (BatchNorm) -> activation -> (Dropout)] * len(hidden_units)`` then an
    optional output ``Linear(hidden_units[-1], output_dim)``.

    ``output_dim=None`` means no output layer (the block ends with the last hidden layer).
    ``output_dim == 1`` squeezes the last axis, so a logit has shape (B,).
    Linear layers start Xavier-normal with zero bias (:func:`xavier_init_`). Dropout and batch
    norm are off by default.
    """

    def __init__(
        self,
        input_dim: int,
        hidden_units: Sequence[int] = (64, 64),
        activation: str = "relu",
        dropout: float = 0.0,
        batch_norm: bool = False,
        output_dim: int | None = None,
    ):
        super().__init__()
        if input_dim < 1:
            raise ValueError(f"input_dim must be >= 1, got {input_dim}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        units = [int(u) for u in hidden_units]
        if any(u < 1 for u in units):
            raise ValueError(f"hidden_units must be positive, got {units}")
        layers: list[nn.Module] = []
        prev = int(input_dim)
        for u in units:
            layers.append(nn.Linear(prev, u))
            if batch_norm:
                layers.append(nn.BatchNorm1d(u))
            layers.append(make_activation(activation))
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            prev = u
        if output_dim is not None:
            if output_dim < 1:
                raise ValueError(f"output_dim must be >= 1, got {output_dim}")
            layers.append(nn.Linear(prev, int(output_dim)))
            prev = int(output_dim)
        self.net = nn.Sequential(*layers)
        xavier_init_(self.net)
        self.output_dim = prev
        self._squeeze = output_dim == 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        return out.squeeze(-1) if self._squeeze else out
