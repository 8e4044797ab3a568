"""``lr``: logistic regression on one-hot fields, ``logit = b + sum_f w_{f, x_f}``."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from fedstrat.models.layers import LinearLogit
from fedstrat.models.registry import ModelSpec, register_model


class LR(nn.Module):
    """``embedding_l2``: L2 penalty ``l2/2 ||w||^2`` on the field weights (0 = off)."""

    def __init__(self, field_dims: Sequence[int], embedding_l2: float = 0.0):
        super().__init__()
        self.linear = LinearLogit(field_dims, l2=embedding_l2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


@register_model("lr", task="ctr")
def build_lr(spec: ModelSpec, **kwargs) -> LR:
    return LR(spec.field_dims, **kwargs)
