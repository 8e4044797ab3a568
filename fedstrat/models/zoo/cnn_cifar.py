"""``cnn-cifar``: small LeNet-style CNN for 3x32x32 images.

conv(3->32, 5x5) -> ReLU -> maxpool 2 -> conv(32->64, 5x5) -> ReLU -> maxpool 2 ->
fc(1600 -> 256) -> ReLU -> fc(256 -> 128) -> ReLU -> fc(128 -> classes).
"""

from __future__ import annotations

import torch
from torch import nn

from fedstrat.models.registry import ModelSpec, register_model
from fedstrat.models.zoo._vision import as_images, flat_size, image_shape


class CifarCNN(nn.Module):
    def __init__(self, input_shape: tuple[int, int, int], num_classes: int):
        super().__init__()
        self.input_shape = tuple(input_shape)
        self.features = nn.Sequential(
            nn.Conv2d(self.input_shape[0], 32, 5),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 5),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
        )
        n = flat_size(self.features, self.input_shape)
        self.classifier = nn.Sequential(
            nn.Linear(n, 256),
            nn.ReLU(),
            nn.Linear(256, 128),
            nn.ReLU(),
            nn.Linear(128, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(as_images(x, self.input_shape)))


@register_model("cnn-cifar", task="classification")
def build_cnn_cifar(spec: ModelSpec) -> CifarCNN:
    return CifarCNN(image_shape(spec), spec.num_classes)
