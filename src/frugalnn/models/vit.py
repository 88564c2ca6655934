"""A small Vision Transformer for 32x32 images (and 8x8 digits).

Patch embedding by a strided convolution, a CLS token and learned position
embeddings, pre-norm transformer blocks, a final LayerNorm and a linear head on
the CLS token. The activation of the FFN is selectable because ReLU gives the
exact zeros that mixture-of-experts conversion exploits.
"""

from __future__ import annotations

import torch
from torch import nn

from frugalnn.errors import UserError
from frugalnn.models.base import FFNSite, StagedModel
from frugalnn.models.layers import TransformerBlock, block_ffn_sites, init_transformer
from frugalnn.models.registry import register_model


class VisionTransformer(StagedModel):
    """ViT with state ``(B, 1 + patches, dim)``; the CLS token is position 0."""

    feature_kind = "tokens"

    def __init__(
        self,
        image_size: int = 32,
        patch_size: int = 4,
        in_channels: int = 3,
        num_classes: int = 10,
        dim: int = 192,
        depth: int = 6,
        heads: int = 3,
        mlp_ratio: float = 4.0,
        activation: str = "gelu",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if patch_size < 1 or image_size % patch_size != 0:
            raise UserError(
                f"image_size ({image_size}) must be a multiple of patch_size ({patch_size})"
            )
        self.image_size = image_size
        self.num_patches = (image_size // patch_size) ** 2
        self.patch_embed = nn.Conv2d(in_channels, dim, patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.num_patches, dim))
        self.pos_drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            TransformerBlock(dim, heads, mlp_ratio, activation, dropout) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        init_transformer(self)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            raise UserError(
                f"vit_tiny expects (B, C, {self.image_size}, {self.image_size}) images, "
                f"got {tuple(x.shape)}; build it with matching image_size"
            )
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)
        return self.pos_drop(torch.cat([cls, tokens], dim=1) + self.pos_embed)

    def classify(self, state: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(state)[:, 0])

    def ffn_sites(self) -> list[FFNSite]:
        return block_ffn_sites(self.blocks)


@register_model("vit_tiny", input_shape=(3, 32, 32), description="small ViT for 32x32 images")
def vit_tiny(
    image_size: int = 32,
    patch_size: int = 4,
    in_channels: int = 3,
    num_classes: int = 10,
    dim: int = 192,
    depth: int = 6,
    heads: int = 3,
    mlp_ratio: float = 4.0,
    activation: str = "gelu",
    dropout: float = 0.0,
) -> VisionTransformer:
    return VisionTransformer(
        image_size,
        patch_size,
        in_channels,
        num_classes,
        dim,
        depth,
        heads,
        mlp_ratio,
        activation,
        dropout,
    )
