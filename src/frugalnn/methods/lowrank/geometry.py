"""The geometry of a convolution that a factorised chain must reproduce.

Kept apart from the layers so that cost formulas and rank selection can reason
about a layer without building it. ``ConvSpec.of`` refuses (``UserError``)
what the chains cannot reproduce: grouped convolutions, non-zero padding modes
and ``padding='same'`` with an even effective kernel.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from torch import nn

from frugalnn.errors import UserError


def _pair(v: Any) -> tuple[int, int]:
    if isinstance(v, (tuple, list)):
        return int(v[0]), int(v[1])
    return int(v), int(v)


def out_len(n: int, k: int, s: int, p: int, d: int) -> int:
    return (n + 2 * p - d * (k - 1) - 1) // s + 1


@dataclass(frozen=True)
class ConvSpec:
    """The geometry of a ``Conv2d`` that a factorised chain must reproduce."""

    in_channels: int
    out_channels: int
    kernel: tuple[int, int]
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    bias: bool = True

    @classmethod
    def of(cls, conv: nn.Conv2d, name: str = "conv") -> ConvSpec:
        """Read and validate a convolution; refuse what a chain cannot reproduce."""
        if not isinstance(conv, nn.Conv2d):
            raise UserError(f"{name} is a {type(conv).__name__}, not a Conv2d; cannot factorise it")
        if conv.groups != 1:
            raise UserError(
                f"{name} is a grouped convolution (groups={conv.groups}); only groups=1 can be "
                "factorised, leave it out of the layer list"
            )
        if conv.padding_mode != "zeros":
            raise UserError(
                f"{name} uses padding_mode={conv.padding_mode!r}; only 'zeros' can be factorised"
            )
        kernel = _pair(conv.kernel_size)
        dilation = _pair(conv.dilation)
        padding = conv.padding
        if isinstance(padding, str):
            if padding == "valid":
                padding = (0, 0)
            elif any((d * (k - 1)) % 2 for k, d in zip(kernel, dilation)):
                raise UserError(
                    f"{name} uses padding='same' with an even effective kernel; give explicit "
                    "padding to factorise it"
                )
            else:
                padding = tuple(d * (k - 1) // 2 for k, d in zip(kernel, dilation))
        return cls(
            conv.in_channels, conv.out_channels, kernel, _pair(conv.stride), _pair(padding),
            dilation, conv.bias is not None,
        )

    def out_hw(self, h: int, w: int) -> tuple[int, int]:
        return (
            out_len(h, self.kernel[0], self.stride[0], self.padding[0], self.dilation[0]),
            out_len(w, self.kernel[1], self.stride[1], self.padding[1], self.dilation[1]),
        )

    def dense_params(self) -> int:
        kh, kw = self.kernel
        return self.out_channels * self.in_channels * kh * kw + self.out_channels * self.bias

    def dense_flops(self, h: int, w: int) -> int:
        """FLOPs of the dense conv for one example (2 per multiply-add, bias not counted)."""
        ho, wo = self.out_hw(h, w)
        kh, kw = self.kernel
        return 2 * self.out_channels * self.in_channels * kh * kw * ho * wo

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def linear_spec(linear: nn.Linear) -> ConvSpec:
    """A Linear seen as a 1x1 convolution (tokens laid out along the height)."""
    return ConvSpec(linear.in_features, linear.out_features, (1, 1), bias=linear.bias is not None)
