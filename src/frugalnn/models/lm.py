"""A small decoder-only (causal) transformer language model, nanoGPT-style.

Token + learned position embeddings, pre-norm causal blocks with the same
``attn``/``mlp`` structure as the ViT (so FFN methods apply unchanged), final
LayerNorm and a linear head giving next-token logits at every position.
"""

from __future__ import annotations

import torch
from torch import nn

from frugalnn.errors import UserError
from frugalnn.models.base import FFNSite, StagedModel
from frugalnn.models.layers import TransformerBlock, block_ffn_sites, init_transformer
from frugalnn.models.registry import register_model


class TinyLM(StagedModel):
    """Causal LM: ``(B, T)`` token ids -> ``(B, T, vocab_size)`` logits."""

    feature_kind = "tokens"

    def __init__(
        self,
        vocab_size: int = 65,
        context: int = 128,
        dim: int = 128,
        depth: int = 4,
        heads: int = 4,
        mlp_ratio: float = 4.0,
        activation: str = "gelu",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if vocab_size < 2 or context < 1:
            raise UserError("lm_tiny needs vocab_size >= 2 and context >= 1")
        self.vocab_size = vocab_size
        self.context = context
        self.tok_embed = nn.Embedding(vocab_size, dim)
        self.pos_embed = nn.Embedding(context, dim)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            TransformerBlock(dim, heads, mlp_ratio, activation, dropout, causal=True)
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab_size, bias=False)
        init_transformer(self)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or x.dtype not in (torch.long, torch.int32, torch.int64):
            raise UserError(f"lm_tiny expects (B, T) integer token ids, got {tuple(x.shape)}")
        t = x.shape[1]
        if t > self.context:
            raise UserError(f"sequence length {t} exceeds the model's context ({self.context})")
        pos = torch.arange(t, device=x.device)
        return self.drop(self.tok_embed(x) + self.pos_embed(pos))

    def classify(self, state: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(state))

    def ffn_sites(self) -> list[FFNSite]:
        return block_ffn_sites(self.blocks)


@register_model(
    "lm_tiny",
    input_shape=(128,),
    task="lm",
    input_dtype="long",
    description="small causal transformer LM (characters or words)",
)
def lm_tiny(
    vocab_size: int = 65,
    context: int = 128,
    dim: int = 128,
    depth: int = 4,
    heads: int = 4,
    mlp_ratio: float = 4.0,
    activation: str = "gelu",
    dropout: float = 0.0,
) -> TinyLM:
    return TinyLM(vocab_size, context, dim, depth, heads, mlp_ratio, activation, dropout)
