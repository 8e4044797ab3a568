"""``digits-cnn``: tiny CNN for 1x8x8 images (sklearn digits).

conv(C->16, 3x3, pad 1) -> ReLU -> maxpool 2 -> conv(16->32, 3x3, pad 1) -> ReLU -> maxpool 2 ->
fc(32*2*2 -> 64) -> ReLU -> fc(64 -> classes).
"""

from __future__ import annotations

import torch
from torch import nn

from fedstrat.models.registry import ModelSpec, register_model
from fedstrat.models.zoo._vision import as_images, flat_size, image_shape


class DigitsCNN(nn.Module):
    def __init__(self, input_shape: tuple[int, int, int], num_classes: int, hidden: int = 64):
        super().__init__()
        self.input_shape = tuple(input_shape)
        self.features = nn.Sequential(
            nn.Conv2d(self.input_shape[0], 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1),
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


@register_model("digits-cnn", task="classification")
def build_digits_cnn(spec: ModelSpec, hidden: int = 64) -> DigitsCNN:
    return DigitsCNN(image_shape(spec), spec.num_classes, hidden=hidden)
