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


class SmallViT(nn.Module):
    """A two-block vision transformer for 28×28 digits: 7×7 patches (16 tokens) and a class token of
    width 32, pre-norm blocks of 2-head ``nn.MultiheadAttention`` and a 64-wide MLP, a linear head."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, image_size: int = 28, patch: int = 7,
                 width: int = 32, depth: int = 2, heads: int = 2, mlp: int = 64) -> None:
        super().__init__()
        self.patch = nn.Conv2d(in_channels, width, patch, stride=patch)
        tokens = (image_size // patch) ** 2
        self.cls = nn.Parameter(torch.zeros(1, 1, width))
        self.pos = nn.Parameter(torch.randn(1, tokens + 1, width) * 0.02)
        self.blocks = nn.ModuleList(_Block(width, heads, mlp) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.patch(x).flatten(2).transpose(1, 2)  # (B, tokens, width)
        t = torch.cat([self.cls.expand(t.shape[0], -1, -1), t], dim=1) + self.pos
        for block in self.blocks:
            t = block(t)
        return self.head(self.norm(t[:, 0]))


class _Block(nn.Module):
    def __init__(self, width: int, heads: int, mlp: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, mlp), nn.GELU(), nn.Linear(mlp, width))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        h = self.norm1(t)
        t = t + self.attn(h, h, h, need_weights=False)[0]
        return t + self.mlp(self.norm2(t))


def small_vit(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    """A fresh, randomly initialised ``SmallViT`` (usable as ``python:saliencydb.data.zoo:small_vit``)."""
    return SmallViT(num_classes=num_classes, in_channels=in_channels)
