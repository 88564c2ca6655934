"""Candidate operations of the search space, built from short readable names.

A name fully describes an operation, so an architecture is just a list of
names (readable JSON) and a latency table can key its entries by name:

* ``mb{k}_e{e}``   inverted-residual (MBConv) block: 1x1 expand by ``e``,
  ``k x k`` depthwise, 1x1 linear projection (MobileNetV2 / ProxylessNAS);
* ``shuffle_g{g}`` ShuffleNet unit: grouped 1x1, channel shuffle, 3x3
  depthwise, grouped 1x1 (ShuffleNet v1 with its bottleneck kept at the output
  width so that the unit is usable at CIFAR widths);
* ``sep{k}``       depthwise-separable convolution: ``k x k`` depthwise then 1x1;
* ``zero``         no computation; only legal where the choice block has an
  identity shortcut, so that the block becomes a skip connection.

Each op maps ``(B, c_in, H, W)`` to ``(B, c_out, H/stride, W/stride)``. The
identity shortcut (when shapes allow) belongs to the enclosing choice block,
not to the op, exactly as in ProxylessNAS.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from frugalnn.errors import UserError

__all__ = [
    "DEFAULT_CANDIDATES",
    "ChannelShuffle",
    "DepthwiseSeparable",
    "MBConv",
    "ShuffleUnit",
    "Zero",
    "build_op",
    "parse_op",
]

DEFAULT_CANDIDATES: tuple[str, ...] = (
    "mb3_e3",
    "mb3_e6",
    "mb5_e3",
    "mb5_e6",
    "mb7_e3",
    "mb7_e6",
    "shuffle_g2",
    "sep3",
    "zero",
)

_PATTERNS = {
    "mb": re.compile(r"^mb(\d+)_e(\d+)$"),
    "shuffle": re.compile(r"^shuffle_g(\d+)$"),
    "sep": re.compile(r"^sep(\d+)$"),
}
_FORMS = "mb{k}_e{e} (k in 3,5,7,...; e >= 1), shuffle_g{g}, sep{k} or zero"


def parse_op(name: str) -> tuple[str, dict[str, int]]:
    """Split an op name into its family and integer parameters (``UserError`` if unknown)."""
    if name == "zero":
        return "zero", {}
    for family, pattern in _PATTERNS.items():
        m = pattern.match(name)
        if not m:
            continue
        if family == "mb":
            k, e = int(m.group(1)), int(m.group(2))
            if k % 2 == 0 or k < 1 or e < 1:
                break
            return "mb", {"kernel": k, "expand": e}
        if family == "shuffle":
            g = int(m.group(1))
            if g < 1:
                break
            return "shuffle", {"groups": g}
        k = int(m.group(1))
        if k % 2 == 0 or k < 1:
            break
        return "sep", {"kernel": k}
    raise UserError(f"unknown operation {name!r}; use one of the forms {_FORMS}")


def _conv_bn(
    c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1, act: bool = True
) -> list[nn.Module]:
    layers: list[nn.Module] = [
        nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(c_out),
    ]
    if act:
        layers.append(nn.ReLU6(inplace=True))
    return layers


class MBConv(nn.Sequential):
    """Inverted residual body: 1x1 expand -> k x k depthwise -> 1x1 linear projection."""

    def __init__(self, c_in: int, c_out: int, stride: int, kernel: int, expand: int) -> None:
        mid = c_in * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers += _conv_bn(c_in, mid, 1)
        layers += _conv_bn(mid, mid, kernel, stride, groups=mid)
        layers += _conv_bn(mid, c_out, 1, act=False)
        super().__init__(*layers)


class DepthwiseSeparable(nn.Sequential):
    """k x k depthwise convolution then a 1x1 pointwise projection (MobileNetV1 style)."""

    def __init__(self, c_in: int, c_out: int, stride: int, kernel: int) -> None:
        super().__init__(
            *_conv_bn(c_in, c_in, kernel, stride, groups=c_in),
            *_conv_bn(c_in, c_out, 1, act=False),
        )


class ChannelShuffle(nn.Module):
    """Interleave channel groups so information crosses grouped convolutions."""

    def __init__(self, groups: int) -> None:
        super().__init__()
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        return x.view(b, self.groups, c // self.groups, h, w).transpose(1, 2).reshape(b, c, h, w)

    def extra_repr(self) -> str:
        return f"groups={self.groups}"


class ShuffleUnit(nn.Sequential):
    """ShuffleNet v1 unit body: grouped 1x1 -> shuffle -> 3x3 depthwise -> grouped 1x1."""

    def __init__(self, c_in: int, c_out: int, stride: int, groups: int) -> None:
        for what, c in (("input", c_in), ("output", c_out)):
            if c % groups:
                raise UserError(
                    f"shuffle_g{groups} needs {what} channels divisible by {groups}, got {c}; "
                    "change the widths or drop this candidate"
                )
        mid = c_out
        super().__init__(
            *_conv_bn(c_in, mid, 1, groups=groups),
            ChannelShuffle(groups),
            *_conv_bn(mid, mid, 3, stride, groups=mid, act=False),
            *_conv_bn(mid, c_out, 1, groups=groups, act=False),
        )


class Zero(nn.Module):
    """The empty operation: contributes nothing (the block's shortcut carries x)."""

    def __init__(self, c_out: int, stride: int) -> None:
        super().__init__()
        self.c_out = c_out
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        return x.new_zeros(b, self.c_out, -(-h // self.stride), -(-w // self.stride))


def build_op(name: str, c_in: int, c_out: int, stride: int) -> nn.Module:
    """Instantiate the op ``name`` for the given channels and stride."""
    family, p = parse_op(name)
    if family == "mb":
        return MBConv(c_in, c_out, stride, p["kernel"], p["expand"])
    if family == "shuffle":
        return ShuffleUnit(c_in, c_out, stride, p["groups"])
    if family == "sep":
        return DepthwiseSeparable(c_in, c_out, stride, p["kernel"])
    return Zero(c_out, stride)
