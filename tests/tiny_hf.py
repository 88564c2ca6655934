"""Tiny Hugging Face models built from configs (no download), shared by the tests.

Hidden size 32, FFN 64, 2 heads: BERT and ViT classifiers and a Llama LM, each
from ``torch.manual_seed(0)`` so that every test sees the same weights.
"""

from __future__ import annotations

import torch
from torch import nn

DIM, HIDDEN, VOCAB = 32, 64, 50


def tiny_bert(layers: int = 2, labels: int = 3, positions: int = 32) -> nn.Module:
    import transformers

    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        vocab_size=VOCAB, hidden_size=DIM, num_hidden_layers=layers, num_attention_heads=2,
        intermediate_size=HIDDEN, max_position_embeddings=positions, num_labels=labels)
    return transformers.BertForSequenceClassification(cfg).eval()


def tiny_vit(layers: int = 2, labels: int = 5) -> nn.Module:
    import transformers

    torch.manual_seed(0)
    cfg = transformers.ViTConfig(
        image_size=16, patch_size=4, num_channels=3, hidden_size=DIM, num_hidden_layers=layers,
        num_attention_heads=2, intermediate_size=HIDDEN, num_labels=labels)
    return transformers.ViTForImageClassification(cfg).eval()


def tiny_llama(layers: int = 2, positions: int = 16) -> nn.Module:
    import transformers

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=DIM, num_hidden_layers=layers, num_attention_heads=2,
        num_key_value_heads=2, intermediate_size=HIDDEN, max_position_embeddings=positions)
    return transformers.LlamaForCausalLM(cfg).eval()
