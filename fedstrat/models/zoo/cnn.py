"""``cnn``: two 5x5 conv layers + two fully connected layers for 28x28 images.

A CPU-sized version of McMahan et al. (2017): conv(C->16, 5x5) -> ReLU -> maxpool 2 ->
conv(16->32, 5x5) -> ReLU -> maxpool 2 -> fc(512 -> 128) -> ReLU -> fc(128 -> classes).
"""

from __future__ import annotations

import torch
from torch import nn

from fedstrat.models.registry import ModelSpec, register_model
from fedstrat.models.zoo._vision import as_images, flat_size, image_shape


class CNN(nn.Module):
    def __init__(self, input_shape: tuple[int, int, int], num_classes: int, hidden: int = 128):
        super().__init__()
        self.input_shape = tuple(input_shape)
        c = self.input_shape[0]
        self.features = nn.Sequential(
            nn.Conv2d(c, 16, 5),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 5),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
        )
        n = flat_size(self.features, self.input_shape)
        self.classifier = nn.Sequential(
            nn.Linear(n, hidden), nn.ReLU(), nn.Linear(hidden, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(as_images(x, self.input_shape)))


@register_model("cnn", task="classification")
def build_cnn(spec: ModelSpec, hidden: int = 128) -> CNN:
    return CNN(image_shape(spec), spec.num_classes, hidden=hidden)
