"""Small feed-forward text models over hashed feature groups (Botha et al., 2017).

:class:`NgramNet`: one embedding table per feature group; the hashed values of a group
are reduced modulo the table's rows, looked up, averaged (or summed) per group; the group
vectors are concatenated and fed to zero, one or two ReLU hidden layers and a linear
output. Inputs are LongTensors ``[batch, groups, K]`` padded with -1. A group whose values
are small integers (the previous tags of the tagger) is an ordinary group whose table has
one row per value. :meth:`NgramNet.quantize_` stores every table in 8 bits
(:class:`frugalnn.models.embedding8.Embedding8`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from frugalnn.models.embedding8 import Embedding8, embedding_bytes

__all__ = ["NgramNet", "mlp_params"]


def mlp_params(inputs: int, hidden: Sequence[int], outputs: int) -> int:
    """Weights and biases of the perceptron ``inputs -> hidden... -> outputs``."""
    sizes = [inputs, *hidden, outputs]
    return sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))


class NgramNet(nn.Module):
    """Per-group hashed embeddings, averaged, concatenated, then a small perceptron."""

    def __init__(self, rows: Sequence[int], dims: Sequence[int], hidden: Sequence[int],
                 num_classes: int, reduce: str = "mean") -> None:
        super().__init__()
        if len(rows) != len(dims):
            raise ValueError("one embedding size per feature group")
        if reduce not in ("mean", "sum"):
            raise ValueError(f"reduce must be mean or sum, got {reduce!r}")
        self.rows, self.dims = [int(r) for r in rows], [int(d) for d in dims]
        self.hidden, self.num_classes, self.reduce = [int(h) for h in hidden], num_classes, reduce
        self.tables = nn.ModuleList(nn.Embedding(r, d) for r, d in zip(self.rows, self.dims))
        for t in self.tables:
            nn.init.normal_(t.weight, std=0.1)
        layers: list[nn.Module] = []
        width = sum(self.dims)
        for h in self.hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, num_classes))
        self.mlp = nn.Sequential(*layers)

    @property
    def quantized(self) -> bool:
        return bool(self.tables) and isinstance(self.tables[0], Embedding8)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, G, K]`` hashed values (-1 = padding) -> ``[B, sum(dims)]``."""
        parts = []
        for g, table in enumerate(self.tables):
            ids = x[:, g]
            mask = (ids >= 0).unsqueeze(-1)
            vec = (table(ids.clamp(min=0) % self.rows[g]) * mask).sum(1)
            if self.reduce == "mean":
                vec = vec / mask.sum(1).clamp(min=1)
            parts.append(vec)
        return torch.cat(parts, dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.embed(x))

    def quantize_(self) -> NgramNet:
        """Store every embedding table in 8 bits (in place); returns ``self``."""
        if not self.quantized:
            self.tables = nn.ModuleList(Embedding8.from_float(t) for t in self.tables)
        return self

    def embedding_bytes(self, bits: int | None = None) -> int:
        """Exact bytes of the tables as stored now (or as they would be at ``bits``)."""
        bits = bits if bits is not None else (8 if self.quantized else 32)
        return sum(embedding_bytes(r, d, bits=bits) for r, d in zip(self.rows, self.dims))

    def nbytes(self, bits: int | None = None) -> int:
        """Exact model bytes: the tables (float32 or 8-bit) plus the float32 perceptron."""
        return self.embedding_bytes(bits) + 4 * mlp_params(sum(self.dims), self.hidden,
                                                           self.num_classes)

    def mlp_flops(self) -> int:
        """FLOPs of the perceptron per example (2 x MACs; the averaging adds excluded)."""
        sizes = [sum(self.dims), *self.hidden, self.num_classes]
        return 2 * sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))

    def spec(self) -> dict:
        return {"rows": self.rows, "dims": self.dims, "hidden": self.hidden,
                "num_classes": self.num_classes, "reduce": self.reduce,
                "quantized": self.quantized}
