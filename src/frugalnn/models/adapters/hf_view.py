"""Staged views of Hugging Face encoder classifiers (BERT-like text, ViT-like image).

The view is the embeddings, one block per encoder layer and the model's own
head (BERT: pooler, dropout, classifier; ViT: final LayerNorm, CLS token,
classifier). Text inputs are the model's own dict (``input_ids``, optional
``attention_mask`` / ``token_type_ids``), ``(B, T)`` token ids or a
``(B, 2, T)`` ids+mask tensor; the state is ``{"hidden", "mask"}`` and the
attention mask is built as the model builds it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from frugalnn.errors import UserError
from frugalnn.models.adapters.view import LivePart, StagedView

__all__ = ["hf_view", "is_hf", "refuse_language_model"]


def is_hf(model: nn.Module) -> bool:
    return getattr(getattr(model, "config", None), "model_type", None) is not None


def refuse_language_model(model: nn.Module) -> None:
    name = type(model).__name__
    config = model.config  # type: ignore[union-attr]
    if (getattr(config, "is_decoder", False) or hasattr(model, "lm_head")
            or name.endswith(("ForCausalLM", "LMHeadModel"))):
        raise UserError(f"{name} is a language model; early exits need a classifier (one "
                        "label per example), so they do not apply to it")


def _layer_list(base: nn.Module) -> nn.ModuleList | None:
    layers = getattr(base, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        layers = getattr(getattr(base, "encoder", None), "layer", None)
    return layers if isinstance(layers, nn.ModuleList) and len(layers) else None


def _mask_function() -> Callable[..., Any]:
    from transformers.masking_utils import create_bidirectional_mask

    return create_bidirectional_mask


def hf_view(model: nn.Module) -> StagedView | None:
    base = getattr(model, "base_model", None)
    head = getattr(model, "classifier", None)
    if base is None or base is model or head is None or not hasattr(base, "embeddings"):
        return None
    layers = _layer_list(base)
    if layers is None:
        return None
    path = {id(m): n for n, m in model.named_modules()}
    layer_paths = [path[id(layer)] for layer in layers]
    name = type(model).__name__
    names = [f"layer.{i}" for i in range(len(layers))]
    embed = path[id(base.embeddings)]
    if name.endswith("ForSequenceClassification"):
        pooler, dropout = getattr(base, "pooler", None), getattr(model, "dropout", None)
        classify = _HFTextClassify(model, pooler=path.get(id(pooler)),
                                   dropout=path.get(id(dropout)), classifier="classifier")
        return StagedView(model, _HFTextEmbed(model, embeddings=embed),
                          [_HFTextBlock(model, layer=p) for p in layer_paths], classify,
                          block_names=names, structure="huggingface-text", feature_kind="tokens",
                          pool="cls")
    norm = getattr(base, "layernorm", None)
    if name.endswith("ForImageClassification") and isinstance(norm, nn.Module):
        return StagedView(model, _HFImageEmbed(model, embeddings=embed),
                          [_HFImageBlock(model, layer=p) for p in layer_paths],
                          _HFImageClassify(model, norm=path[id(norm)], classifier="classifier"),
                          block_names=names, structure="huggingface-image",
                          feature_kind="tokens", pool="cls")
    return None


def _text_inputs(x: Any) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """``(input_ids, attention_mask, token_type_ids)`` of a dict, a ``(B, T)`` ids tensor or
    a ``(B, 2, T)`` ids+mask tensor."""
    if isinstance(x, dict):
        if "input_ids" not in x:
            raise UserError(f"text models take a dict with 'input_ids'; got keys {sorted(x)}")
        return x["input_ids"], x.get("attention_mask"), x.get("token_type_ids")
    if isinstance(x, torch.Tensor) and x.dim() == 3 and x.shape[1] == 2:
        return x[:, 0].long(), x[:, 1].long(), None
    if isinstance(x, torch.Tensor) and x.dim() == 2 and not x.is_floating_point():
        return x, None, None
    shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
    raise UserError("text models take {'input_ids', 'attention_mask'} dicts, (B, T) token ids "
                    f"or (B, 2, T) ids+mask tensors, got {shape}")


class _HFTextEmbed(LivePart):
    def forward(self, x: Any) -> dict[str, torch.Tensor]:
        ids, mask, types = _text_inputs(x)
        hidden = self.sub("embeddings")(input_ids=ids, token_type_ids=types)
        if mask is None:
            mask = torch.ones_like(ids)
        return {"hidden": hidden, "mask": mask}


class _HFTextBlock(LivePart):
    """One encoder layer; the attention mask is built as the model builds it."""

    def forward(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        hidden = state["hidden"]
        mask = _mask_function()(config=self._root.config, inputs_embeds=hidden,
                                attention_mask=state["mask"])
        out = self.sub("layer")(hidden, mask)
        return {**state, "hidden": out[0] if isinstance(out, tuple) else out}


class _HFTextClassify(LivePart):
    def forward(self, state: dict[str, torch.Tensor]) -> torch.Tensor:
        hidden = state["hidden"]
        classifier = self.sub("classifier")
        if self.paths["pooler"] is None:  # the classifier reads the sequence (RoBERTa-style)
            return classifier(hidden)
        pooled = self.sub("pooler")(hidden)
        if self.paths["dropout"] is not None:
            pooled = self.sub("dropout")(pooled)
        return classifier(pooled)


class _HFImageEmbed(LivePart):
    def forward(self, x: Any) -> torch.Tensor:
        pixels = x["pixel_values"] if isinstance(x, dict) else x
        embeddings = self.sub("embeddings")
        return embeddings(pixels.to(next(embeddings.parameters()).dtype))


class _HFImageBlock(LivePart):
    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        mask = _mask_function()(config=self._root.config, inputs_embeds=hidden,
                                attention_mask=None)
        out = self.sub("layer")(hidden, mask)
        return out[0] if isinstance(out, tuple) else out


class _HFImageClassify(LivePart):
    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.sub("classifier")(self.sub("norm")(hidden)[:, 0, :])

