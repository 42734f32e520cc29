"""Multi-layer perceptrons: hidden layers of Linear-BN-ReLU-Dropout (BN optional), one ``LinearBlock`` each."""

from __future__ import annotations

import torch
import torch.nn as nn

from ..erase.sites import Block
from .base import init_weights
from .registry import register_model


class LinearBlock(Block):
    """Linear, batch norm (or a bias instead), ReLU, dropout."""

    sites = ("act",)

    def __init__(self, in_features: int, out_features: int, dropout: float = 0.0, batch_norm: bool = True):
        super().__init__()
        self.fc = nn.Linear(in_features, out_features, bias=not batch_norm)
        self.bn = nn.BatchNorm1d(out_features) if batch_norm else nn.Identity()
        self.act = nn.ReLU(inplace=True)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.act(self.bn(self.fc(x))))


class MLP(nn.Module):
    """``depth`` weighted layers: ``depth - 1`` dense blocks and a linear classifier."""

    def __init__(self, in_features: int, num_classes: int, depth: int, width: int, dropout: float,
                 batch_norm: bool = True):
        super().__init__()
        if depth < 1:
            raise ValueError(f"an MLP needs depth >= 1, got {depth}")
        dims = [in_features] + [width] * (depth - 1)
        self.layers = nn.Sequential(*(LinearBlock(a, b, dropout, batch_norm) for a, b in zip(dims[:-1], dims[1:])))
        self.head = nn.Linear(dims[-1], num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layers(torch.flatten(x, 1)))


@register_model(input_shape=(1, 28, 28))
def mlp(num_classes: int = 10, in_chans: int = 1, image_size: int = 28, depth: int = 4,
        width: int = 256, dropout: float = 0.0, batch_norm: bool = True) -> MLP:
    """A plain MLP on flattened images of ``in_chans x image_size x image_size``."""
    return MLP(in_chans * image_size * image_size, num_classes, depth, width, dropout, batch_norm)


@register_model(input_shape=(1, 28, 28))
def mlp12(num_classes: int = 10, in_chans: int = 1, image_size: int = 28, dropout: float = 0.5) -> MLP:
    """EraseReLU's MLP-12 for MNIST: 11 hidden layers of 1000 units (Linear-BN-ReLU-Dropout), a linear classifier."""
    return MLP(in_chans * image_size * image_size, num_classes, 12, 1000, dropout)
