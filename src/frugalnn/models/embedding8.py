"""8-bit embedding tables: uint8 rows with a per-row scale and offset, dequantised on lookup.

Row ``r`` of a float table ``w`` is stored as ``q[r] = round((w[r] - lo[r]) / s[r])`` in
``[0, 255]`` with ``lo[r] = min(w[r])`` and ``s[r] = (max(w[r]) - lo[r]) / 255``; a lookup
returns ``q[idx] * s[idx] + lo[idx]`` in float, so everything after the lookup computes in
float. Scale and offset are kept in float16 (4 bytes per row): a table of ``rows x dim``
takes ``rows * (dim + 4)`` bytes against ``rows * dim * 4`` in float32.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["Embedding8", "embedding_bytes"]

#: Bytes per row spent on the scale and the offset (two float16 numbers).
ROW_OVERHEAD = 4


def embedding_bytes(rows: int, dim: int, *, bits: int = 32) -> int:
    """Exact storage of a ``rows x dim`` table: float32 (``bits=32``) or 8-bit with
    per-row float16 scale and offset (``bits=8``)."""
    if bits == 32:
        return rows * dim * 4
    if bits == 8:
        return rows * (dim + ROW_OVERHEAD)
    raise ValueError(f"bits must be 8 or 32, got {bits}")


class Embedding8(nn.Module):
    """An embedding table stored in 8 bits per value (see the module docstring)."""

    def __init__(self, num_embeddings: int, embedding_dim: int) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.register_buffer("q", torch.zeros(num_embeddings, embedding_dim, dtype=torch.uint8))
        self.register_buffer("scale", torch.ones(num_embeddings, dtype=torch.float16))
        self.register_buffer("offset", torch.zeros(num_embeddings, dtype=torch.float16))

    @classmethod
    def from_float(cls, weight: torch.Tensor | nn.Embedding) -> Embedding8:
        """Quantise a float table (a weight matrix or an ``nn.Embedding``)."""
        w = (weight.weight if isinstance(weight, nn.Embedding) else weight).detach().float()
        out = cls(w.shape[0], w.shape[1])
        lo = w.min(dim=1).values
        span = w.max(dim=1).values - lo
        scale = torch.where(span > 0, span / 255.0, torch.ones_like(span))
        # Round scale and offset to their stored precision first, so the codes fit them.
        scale16, lo16 = scale.half(), lo.half()
        q = torch.round((w - lo16.float()[:, None]) / scale16.float()[:, None])
        out.q.copy_(q.clamp(0, 255).to(torch.uint8))
        out.scale.copy_(scale16)
        out.offset.copy_(lo16)
        return out

    def dequantize(self) -> torch.Tensor:
        """The whole table in float32."""
        return self.q.float() * self.scale.float()[:, None] + self.offset.float()[:, None]

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        rows = self.q[idx].float()
        return rows * self.scale[idx].float().unsqueeze(-1) + self.offset[idx].float().unsqueeze(-1)

    @property
    def nbytes(self) -> int:
        """Exact stored bytes (codes, scales and offsets)."""
        return embedding_bytes(self.num_embeddings, self.embedding_dim, bits=8)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, uint8 + float16 scale/offset"
