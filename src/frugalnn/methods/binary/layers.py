"""Binary layers: +1 / -1 weights with per-output-channel scales, optionally +1 / -1 inputs.

A :class:`BinaryLinear` / :class:`BinaryConv2d` computes
``alpha[o] * sum_k sign(W[o, k]) * b(x)[k] + bias[o]`` where ``alpha[o]`` is
the mean absolute latent weight of output channel ``o`` (XNOR-Net's scaling
factor) and ``b(x)`` is ``sign(x - t[c])`` with a learned threshold ``t`` per
input channel when activations are binarised (the XNOR case; the threshold
lets a layer that follows a ReLU split its inputs instead of seeing only
+1), else ``x`` itself (binary weights only). ``sign(v)`` is +1 for ``v >= 0``.
Convolutions binarise the zero-padded input, so the padding is part of the
sign pattern and the packed path can reproduce it.

Training keeps float latent weights and passes gradients through the signs
with the straight-through estimator (the gradient of ``sign(v)`` is taken as
1 where ``|v| <= 1``, else 0). :meth:`BinaryLayer.pack` then stores the signs
one bit each (``packed_weight``, words of ``word_bits``) and the scales, and
drops the latent weights: 32x fewer bytes than float32 for the weight matrix.
A packed layer with binary activations runs the XNOR-popcount kernel of
:mod:`frugalnn.methods.binary.kernel` (convolutions through im2col); a packed
layer with float activations multiplies by the unpacked signs. Both paths
give exactly the outputs of the unpacked layer without gradients (whose
integer sums are rounded, as a fast float convolution may be off by an ulp).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from frugalnn.methods.binary.kernel import (
    WORD_BITS,
    check_width,
    pack_signs,
    unpack_signs,
    xnor_gemm,
)

__all__ = ["BinaryConv2d", "BinaryLayer", "BinaryLinear", "sign_ste"]

_STORED = {8: np.uint8, 16: np.int16, 32: np.int32, 64: np.int64}


class _SignSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return grad * (x.abs() <= 1).to(grad.dtype)


def sign_ste(x: torch.Tensor) -> torch.Tensor:
    """+1 where ``x >= 0``, else -1; straight-through gradient clipped to ``|x| <= 1``."""
    return _SignSTE.apply(x)


class BinaryLayer(nn.Module):
    """What :class:`BinaryLinear` and :class:`BinaryConv2d` share (latent or packed weights)."""

    out_channels: int
    width: int  # signs per output channel (in_features, or in_channels * kh * kw)

    def _init_binary(self, weight: torch.Tensor, bias: torch.Tensor | None, in_channels: int,
                     activations: bool, word_bits: int, kernel: str, name: str) -> None:
        check_width(self.width, word_bits, name or type(self).__name__)
        self.activations = bool(activations)
        self.word_bits = int(word_bits)
        self.kernel = kernel
        self.packed = False
        self.weight = nn.Parameter(weight.detach().clone())
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone())
        self.threshold = (nn.Parameter(torch.zeros(in_channels, dtype=weight.dtype))
                          if self.activations else None)
        self._signs: torch.Tensor | None = None

    # -- the two weight forms ------------------------------------------------------------

    def _latent_scale_signs(self) -> tuple[torch.Tensor, torch.Tensor]:
        w = self.weight.reshape(self.out_channels, -1)
        return w.abs().mean(dim=1), sign_ste(w)

    def _scale_signs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(alpha, signs (out, width))`` of either form."""
        if not self.packed:
            return self._latent_scale_signs()
        if self._signs is None:
            words = self.packed_weight.cpu().numpy().view(WORD_BITS[self.word_bits])
            self._signs = self._from_packed_order(torch.from_numpy(unpack_signs(words,
                                                                                self.width)))
        return self.scale, self._signs.to(self.scale.device)

    def _to_packed_order(self, signs: torch.Tensor) -> torch.Tensor:
        """Weight signs ``(out, width)`` in the order their bits are packed."""
        return signs

    def _from_packed_order(self, signs: torch.Tensor) -> torch.Tensor:
        return signs

    def pack(self) -> BinaryLayer:
        """Store the weight signs one bit each plus the scales; drop the latent weights."""
        if self.packed:
            return self
        with torch.no_grad():
            alpha, signs = self._latent_scale_signs()
            words = pack_signs(self._to_packed_order(signs.detach().cpu()), self.word_bits)
        del self.weight
        # Stored as the signed integer type of the word size (safetensors has no uint64).
        self.register_buffer("packed_weight",
                             torch.from_numpy(words.view(_STORED[self.word_bits])).clone())
        self.register_buffer("scale", alpha.detach().clone())
        self.packed = True
        self._signs = None
        return self

    def make_packed_shell(self) -> BinaryLayer:
        """The packed form with zero buffers of the right shapes (weights loaded later)."""
        self.pack()
        self.packed_weight.zero_()
        self.scale.zero_()
        return self

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        self._signs = None  # new packed words: unpack again when needed
        super()._load_from_state_dict(*args, **kwargs)

    # -- cost ------------------------------------------------------------------------------

    def weight_bytes(self, packed: bool) -> int:
        """Bytes of the weight (packed signs + scales, or float32 latent weights)."""
        if packed:
            return self.out_channels * (self.width // 8) + 4 * self.out_channels
        return 4 * self.out_channels * self.width

    def extra_repr(self) -> str:
        return (f"width={self.width}, out={self.out_channels}, activations={self.activations}, "
                f"word_bits={self.word_bits}, packed={self.packed}")

    def _finish(self, y: torch.Tensor, alpha: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        if self.activations and not self.packed and not torch.is_grad_enabled():
            # Sums of +1/-1 are integers; a conv algorithm (Winograd) may round them.
            y = y.round()
        y = y * alpha.reshape(shape)
        if self.bias is not None:
            y = y + self.bias.reshape(shape)
        return y

    def _pack_input(self, t: torch.Tensor) -> torch.Tensor:
        """Signs of ``t`` (rows of ``width``) packed into words, as the stored tensor type."""
        return torch.from_numpy(pack_signs(t, self.word_bits).view(_STORED[self.word_bits]))

    def precision_params(self) -> dict[str, int]:
        """Parameters by storage precision (read by :mod:`frugalnn.cost.bits`)."""
        n_float = sum(p.numel() for p in (self.bias, self.threshold) if p is not None)
        if self.packed:
            return {"binary": self.out_channels * self.width,
                    "fp32": n_float + self.out_channels}
        return {"fp32": n_float + self.weight.numel()}

    def _use_kernel(self) -> bool:
        """The packed CPU kernel (elsewhere, or with gradients: the unpacked signs)."""
        return (self.packed and self.activations and not torch.is_grad_enabled()
                and self.packed_weight.device.type == "cpu")


class BinaryLinear(BinaryLayer):
    """A binary ``nn.Linear`` (see the module)."""

    def __init__(self, linear: nn.Linear, *, activations: bool = True, word_bits: int = 64,
                 kernel: str = "auto", name: str = "") -> None:
        super().__init__()
        self.in_features = linear.in_features
        self.out_features = self.out_channels = linear.out_features
        self.width = linear.in_features
        self._init_binary(linear.weight, linear.bias, linear.in_features, activations,
                          word_bits, kernel, name)

    def binarize_input(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.threshold is None else sign_ste(x - self.threshold)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._use_kernel():
            return self._packed_forward(x)
        alpha, signs = self._scale_signs()
        return self._finish(F.linear(self.binarize_input(x), signs), alpha, (-1,))

    def _packed_forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        t = (x - self.threshold).reshape(-1, self.width)
        dots = xnor_gemm(self._pack_input(t), self.packed_weight, self.width, self.kernel)
        y = dots.to(x.dtype).reshape(*lead, self.out_channels)
        return self._finish(y, self.scale, (-1,))


class BinaryConv2d(BinaryLayer):
    """A binary ``nn.Conv2d`` with ``groups=1`` and zero padding (see the module)."""

    def __init__(self, conv: nn.Conv2d, *, activations: bool = True, word_bits: int = 64,
                 kernel: str = "auto", name: str = "") -> None:
        super().__init__()
        self.in_channels = conv.in_channels
        self.out_channels = conv.out_channels
        self.kernel_size = tuple(conv.kernel_size)
        self.stride = tuple(conv.stride)
        self.padding = tuple(conv.padding)
        self.dilation = tuple(conv.dilation)
        self.width = conv.in_channels * math.prod(self.kernel_size)
        self._init_binary(conv.weight, conv.bias, conv.in_channels, activations, word_bits,
                          kernel, name)

    @property
    def channel_packed(self) -> bool:
        """Whether the input signs are packed per pixel, along channels, before im2col.

        With ``in_channels`` a multiple of the word, each pixel's channel signs are
        whole bytes, so im2col moves packed bytes (32x fewer than floats) and the
        weight bits are stored in ``(kh, kw, in_channels)`` order to match.
        """
        return self.in_channels % self.word_bits == 0

    def _to_packed_order(self, signs: torch.Tensor) -> torch.Tensor:
        if not self.channel_packed:
            return signs
        w = signs.reshape(self.out_channels, self.in_channels, *self.kernel_size)
        return w.permute(0, 2, 3, 1).reshape(self.out_channels, -1)

    def _from_packed_order(self, signs: torch.Tensor) -> torch.Tensor:
        if not self.channel_packed:
            return signs
        w = signs.reshape(self.out_channels, *self.kernel_size, self.in_channels)
        return w.permute(0, 3, 1, 2).reshape(self.out_channels, -1)

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        ph, pw = self.padding
        return F.pad(x, (pw, pw, ph, ph)) if ph or pw else x

    def binarize_input(self, x: torch.Tensor) -> torch.Tensor:
        """The zero-padded input, thresholded to signs (binary activations)."""
        return sign_ste(self._pad(x) - self.threshold.reshape(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._use_kernel():
            return self._packed_forward(x)
        alpha, signs = self._scale_signs()
        w = signs.reshape(self.out_channels, self.in_channels, *self.kernel_size)
        if self.threshold is None:
            y = F.conv2d(x, w, None, self.stride, self.padding, self.dilation)
        else:
            y = F.conv2d(self.binarize_input(x), w, None, self.stride, 0, self.dilation)
        return self._finish(y, alpha, (1, -1, 1, 1))

    def _packed_forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        t = self._pad(x) - self.threshold.reshape(1, -1, 1, 1)
        hp, wp = t.shape[-2:]
        oh, ow = (
            (size - d * (k - 1) - 1) // s + 1
            for size, k, s, d in zip((hp, wp), self.kernel_size, self.stride, self.dilation)
        )
        if self.channel_packed:
            packed = self._packed_columns(t, oh, ow)
        else:
            cols = F.unfold(t, self.kernel_size, dilation=self.dilation, stride=self.stride)
            packed = self._pack_input(cols.transpose(1, 2).reshape(-1, self.width))
        dots = xnor_gemm(packed, self.packed_weight, self.width, self.kernel)
        y = dots.to(x.dtype).reshape(b, oh * ow, self.out_channels)
        y = y.transpose(1, 2).reshape(b, self.out_channels, oh, ow).contiguous()
        return self._finish(y, self.scale, (1, -1, 1, 1))

    def _packed_columns(self, t: torch.Tensor, oh: int, ow: int) -> torch.Tensor:
        """im2col on channel-packed bytes: ``(B * oh * ow, width / word)`` words."""
        bits = (t >= 0).permute(0, 2, 3, 1).contiguous().numpy()  # (B, Hp, Wp, C)
        by = np.packbits(bits, axis=-1, bitorder="little")  # (B, Hp, Wp, C / 8)
        (kh, kw), (sh, sw), (dh, dw) = self.kernel_size, self.stride, self.dilation
        win = np.lib.stride_tricks.sliding_window_view(
            by, (dh * (kh - 1) + 1, dw * (kw - 1) + 1), axis=(1, 2))
        win = win[:, : sh * (oh - 1) + 1 : sh, : sw * (ow - 1) + 1 : sw, :, ::dh, ::dw]
        # (B, oh, ow, C/8, kh, kw) -> (B, oh, ow, kh, kw, C/8): the weight's bit order
        rows = np.ascontiguousarray(win.transpose(0, 1, 2, 4, 5, 3))
        rows = rows.reshape(win.shape[0] * oh * ow, -1)
        return torch.from_numpy(rows.view(_STORED[self.word_bits]))
