"""Helpers shared by the image classifiers."""

from __future__ import annotations

import math

import torch
from torch import nn

from fedstrat.models.registry import ModelSpec


def image_shape(spec: ModelSpec) -> tuple[int, int, int]:
    """(C, H, W) from the spec; 2-d (H, W) means one channel, 1-d (D,) a square grey image."""
    shape = tuple(spec.input_shape)
    if len(shape) == 3:
        return shape  # type: ignore[return-value]
    if len(shape) == 2:
        return (1, shape[0], shape[1])
    if len(shape) == 1:
        side = math.isqrt(shape[0])
        if side * side == shape[0]:
            return (1, side, side)
    raise ValueError(f"cannot read a (C, H, W) image shape from input_shape {shape}")


def as_images(x: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    """Reshape (B, C*H*W) or (B, C, H, W) input to (B, C, H, W)."""
    return x.reshape(x.shape[0], *shape)


def flat_size(features: nn.Module, shape: tuple[int, int, int]) -> int:
    """Number of features after ``features`` for one image of ``shape`` (probed on zeros)."""
    with torch.no_grad():
        try:
            out = features(torch.zeros(1, *shape))
        except RuntimeError as err:
            raise ValueError(f"input shape {shape} is too small for this network: {err}") from err
    return int(out[0].numel())
