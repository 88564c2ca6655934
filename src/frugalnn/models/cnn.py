"""Small models for MNIST-sized inputs: a plain CNN and an MLP.

Both are cheap enough to train in seconds on a CPU, which makes them the
default models of the demo and of fast tests. Their blocks are plain
(no residual connections) so every block boundary is a valid exit point and
every Linear is a candidate for low-rank replacement.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from frugalnn.errors import UserError
from frugalnn.models.base import StagedModel
from frugalnn.models.registry import register_model

_ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "silu": nn.SiLU}


def make_activation(name: str) -> nn.Module:
    """An activation module by name (``relu``, ``gelu``, ``tanh``, ``silu``)."""
    try:
        return _ACTIVATIONS[name]()
    except KeyError:
        raise UserError(
            f"unknown activation {name!r}; choose one of {', '.join(sorted(_ACTIVATIONS))}"
        ) from None


class ConvBlock(nn.Module):
    """conv3x3-BN-ReLU, then 2x2 max-pool when ``pool`` (halves the resolution)."""

    def __init__(self, cin: int, cout: int, pool: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.act = nn.ReLU()
        self.pool: nn.Module = nn.MaxPool2d(2) if pool else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.act(self.bn(self.conv(x))))


class SmallCNN(StagedModel):
    """Stem conv, one :class:`ConvBlock` per width, global average pool, linear."""

    feature_kind = "image"

    def __init__(
        self,
        in_channels: int = 1,
        image_size: int = 28,
        num_classes: int = 10,
        widths: Sequence[int] = (16, 32, 64),
    ) -> None:
        super().__init__()
        widths = list(widths)
        if not widths or any(int(w) <= 0 for w in widths):
            raise UserError(f"cnn_small widths must be positive integers, got {widths}")
        if image_size < 1 or in_channels < 1 or num_classes < 1:
            raise UserError("cnn_small needs positive in_channels, image_size and num_classes")
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(),
        )
        blocks = []
        size, cin = image_size, widths[0]
        for w in widths:
            pool = size >= 4  # keep at least a 2x2 map before global pooling
            blocks.append(ConvBlock(cin, int(w), pool))
            size = size // 2 if pool else size
            cin = int(w)
        self.blocks = nn.ModuleList(blocks)
        self.head = nn.Linear(cin, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.stem(x)

    def classify(self, state: torch.Tensor) -> torch.Tensor:
        return self.head(state.mean(dim=(2, 3)))


class MLPBlock(nn.Module):
    """Linear + activation (+ dropout); no residual, so widths may change."""

    def __init__(self, cin: int, cout: int, activation: str, dropout: float) -> None:
        super().__init__()
        self.fc = nn.Linear(cin, cout)
        self.act = make_activation(activation)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.act(self.fc(x)))


class MLP(StagedModel):
    """Flatten, ``depth`` hidden :class:`MLPBlock`s of width ``hidden``, linear head.

    The state between blocks is ``(B, hidden)``; ``feature_kind`` is ``"vector"``
    (heads attach with a plain Linear, no pooling).
    """

    feature_kind = "vector"

    def __init__(
        self,
        in_features: int | None = None,
        input_shape: Sequence[int] = (1, 28, 28),
        hidden: int = 256,
        depth: int = 3,
        num_classes: int = 10,
        activation: str = "relu",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if in_features is None:
            in_features = math.prod(int(s) for s in input_shape)
        if in_features < 1 or hidden < 1 or depth < 1 or num_classes < 1:
            raise UserError("mlp needs positive in_features, hidden, depth and num_classes")
        self.in_features = int(in_features)
        self.blocks = nn.ModuleList(
            MLPBlock(self.in_features if i == 0 else hidden, hidden, activation, dropout)
            for i in range(depth)
        )
        self.head = nn.Linear(hidden, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        if x.shape[1] != self.in_features:
            raise UserError(
                f"mlp expects {self.in_features} input features per example, got {x.shape[1]}; "
                "build it with matching in_features/input_shape"
            )
        return x

    def classify(self, state: torch.Tensor) -> torch.Tensor:
        return self.head(state)


@register_model(
    "cnn_small", input_shape=(1, 28, 28), description="small CNN for MNIST / 8x8 digits"
)
def cnn_small(
    in_channels: int = 1,
    image_size: int = 28,
    num_classes: int = 10,
    widths: Sequence[int] = (16, 32, 64),
) -> SmallCNN:
    return SmallCNN(in_channels, image_size, num_classes, widths)


@register_model("mlp", input_shape=(1, 28, 28), description="MLP of Linear+activation blocks")
def mlp(
    in_features: int | None = None,
    input_shape: Sequence[int] = (1, 28, 28),
    hidden: int = 256,
    depth: int = 3,
    num_classes: int = 10,
    activation: str = "relu",
    dropout: float = 0.0,
) -> MLP:
    return MLP(in_features, input_shape, hidden, depth, num_classes, activation, dropout)
