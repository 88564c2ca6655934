"""Transformer building blocks shared by the ViT and the language model.

Kept in one place (as timm's ``layers/``) so that methods replacing the
token mixer (``block.attn``) or the FFN (``block.mlp``) see the same structure
in every transformer the project builds.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from frugalnn.errors import UserError
from frugalnn.models.base import FeedForward, FFNSite
from frugalnn.models.cnn import make_activation


class Attention(nn.Module):
    """Multi-head self-attention ``(B, T, D) -> (B, T, D)`` via SDPA.

    ``F.scaled_dot_product_attention`` picks the fastest kernel available on
    the device; ``causal=True`` masks future tokens (language models).
    """

    def __init__(self, dim: int, heads: int, causal: bool = False, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % heads != 0:
            raise UserError(f"dim ({dim}) must be divisible by heads ({heads})")
        self.heads = heads
        self.causal = causal
        self.dropout = dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        p = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=self.causal)
        return self.proj(out.transpose(1, 2).reshape(b, t, d))


class TransformerBlock(nn.Module):
    """Pre-norm block: ``x + attn(norm1(x))`` then ``x + mlp(norm2(x))``."""

    def __init__(
        self,
        dim: int,
        heads: int,
        mlp_ratio: float = 4.0,
        activation: str = "gelu",
        dropout: float = 0.0,
        causal: bool = False,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn: nn.Module = Attention(dim, heads, causal=causal, dropout=dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp: nn.Module = FeedForward(
            dim, int(dim * mlp_ratio), make_activation(activation), dropout
        )
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attn(self.norm1(x)))
        return x + self.drop(self.mlp(self.norm2(x)))


def block_ffn_sites(blocks: nn.ModuleList) -> list[FFNSite]:
    """One :class:`FFNSite` per block whose ``mlp`` is still a :class:`FeedForward`."""
    sites = []
    for i, block in enumerate(blocks):
        mlp = getattr(block, "mlp", None)
        if not isinstance(mlp, FeedForward):
            continue  # already replaced by a method

        def install(module: nn.Module, block: nn.Module = block) -> None:
            block.mlp = module

        sites.append(FFNSite(f"blocks.{i}.mlp", mlp.fc1, mlp.act, mlp.fc2, install))
    return sites


def init_transformer(module: nn.Module) -> None:
    """Truncated-normal Linear weights (std 0.02), zero biases, unit LayerNorms."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)
