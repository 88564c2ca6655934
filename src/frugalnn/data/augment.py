"""Normalisation and light augmentation on tensors (no torchvision needed).

Both work on batches ``(B, C, H, W)`` on any device, so a training loop may
also apply them to whole batches on the GPU.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

#: CIFAR-10 statistics used by the pretrained ResNet checkpoints (on [0, 1] pixels).
CIFAR10_MEAN = (0.485, 0.456, 0.406)
CIFAR10_STD = (0.229, 0.224, 0.225)
#: The customary MNIST statistics.
MNIST_MEAN = (0.1307,)
MNIST_STD = (0.3081,)


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """``(x - mean) / std`` per channel, for ``(C, H, W)`` or ``(B, C, H, W)`` input."""
    shape = (-1, 1, 1)
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(shape)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(shape)
    return (x - m) / s


def random_crop_flip(
    x: torch.Tensor,
    pad: int = 4,
    *,
    generator: torch.Generator | None = None,
    flip: bool = True,
) -> torch.Tensor:
    """Random ``H x W`` crop of the zero-padded batch, then random horizontal flip.

    One crop offset and one flip coin per example, drawn from ``generator`` (on
    the CPU, so results do not depend on the device). Padding is with zeros in
    the *normalised* space, i.e. the channel mean, as is customary.
    """
    b, c, h, w = x.shape
    if pad > 0:
        padded = F.pad(x, (pad, pad, pad, pad))
        oy = torch.randint(0, 2 * pad + 1, (b,), generator=generator).to(x.device)
        ox = torch.randint(0, 2 * pad + 1, (b,), generator=generator).to(x.device)
        rows = (oy[:, None] + torch.arange(h, device=x.device))[:, :, None]  # (B, H, 1)
        cols = (ox[:, None] + torch.arange(w, device=x.device))[:, None, :]  # (B, 1, W)
        idx = torch.arange(b, device=x.device)[:, None, None]
        x = padded.permute(0, 2, 3, 1)[idx, rows, cols].permute(0, 3, 1, 2)
    if flip:
        coin = torch.rand(b, generator=generator).to(x.device) < 0.5
        x = torch.where(coin[:, None, None, None], x.flip(-1), x)
    return x.contiguous()


def random_crop_flip_one(
    x: torch.Tensor, pad: int, generator: torch.Generator, flip: bool = True
) -> torch.Tensor:
    """:func:`random_crop_flip` for one ``(C, H, W)`` image, with plain slicing.

    Draws the same random numbers in the same order as the batch version with a
    batch of one (so both give identical results), but avoids its gather, which
    dominates the cost of per-example augmentation in a data loader.
    """
    _, h, w = x.shape
    if pad > 0:
        oy = int(torch.randint(0, 2 * pad + 1, (1,), generator=generator))
        ox = int(torch.randint(0, 2 * pad + 1, (1,), generator=generator))
        x = F.pad(x, (pad, pad, pad, pad))[:, oy : oy + h, ox : ox + w]
    if flip and float(torch.rand(1, generator=generator)) < 0.5:
        x = x.flip(-1)
    return x.contiguous()
