"""Small reference models that train in seconds on a CPU (usable as ``python:saliencydb.data.zoo:small_cnn``)."""

from __future__ import annotations

import torch
from torch import nn


class SmallCNN(nn.Module):
    """Three conv-BN-ReLU blocks (16, 32, 64 channels; the last two stride 2), global average pool, linear head."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(inplace=True),
            nn.Conv2d(16, 32, 3, padding=1, stride=2),
            nn.BatchNorm2d(32),
            nn.ReLU(inplace=True),
            nn.Conv2d(32, 64, 3, padding=1, stride=2),
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.classifier = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of shape (N, num_classes) for inputs of shape (N, in_channels, H, W), e.g. 28×28 digits."""
        return self.classifier(self.features(x))


def small_cnn(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    """A fresh, randomly initialised ``SmallCNN``."""
    return SmallCNN(num_classes=num_classes, in_channels=in_channels)
