"""The uniform block structure every reference model exposes.

Later methods (early exits, mixture-of-experts, per-token learners, low-rank
replacement) work on any model through this interface instead of
model-specific code:

* ``embed(x) -> state``: everything before the first block (stem, patch or
  token embedding);
* ``blocks``: an ``nn.ModuleList``; each block maps ``state -> state``;
* ``classify(state) -> logits``: everything after the last block (pooling,
  final norm, classifier);
* ``feature_kind``: ``"image"`` (state is ``(B, C, H, W)``) or ``"tokens"``
  (state is ``(B, T, D)``), so a method can pick a head design;
* ``ffn_sites()``: the feed-forward layers (``fc1 -> act -> fc2``) a method may
  replace, with a setter that installs the replacement. Models that do not
  define it (any ``nn.Module``) are read by
  :func:`frugalnn.models.adapters.ffn.find_ffn_sites`.

A state is a tensor with the batch first, or (for adapters that carry an
attention mask) a dict of such tensors; :func:`select_rows` and
:func:`hidden_of` handle both.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from frugalnn.utils.batch import call_model

State = torch.Tensor | dict[str, torch.Tensor]


@dataclass
class FFNSite:
    """One feed-forward layer ``x -> fc2(act(fc1(x)))`` inside a model.

    A gated (GLU / SwiGLU) FFN also has ``gate``: ``fc2(act(gate(x)) * fc1(x))``,
    ``fc1`` being the up projection and ``fc2`` the down projection.
    ``install(module)`` puts ``module`` where the FFN was; the module must map
    the FFN's input to its output (same shapes).
    """

    name: str
    fc1: nn.Linear
    act: nn.Module
    fc2: nn.Linear
    install: Callable[[nn.Module], None]
    gate: nn.Linear | None = None


def require_ffn_sites(
    model: nn.Module, purpose: str, pattern: str | None = None
) -> list[FFNSite]:
    """The model's feed-forward sites, or a one-line error naming what needs them.

    MoE conversion, sparsity enforcement and adaptive computation all replace
    FFNs; a CNN has none, and the user should hear that before any training.
    Sites come from :func:`frugalnn.models.adapters.ffn.find_ffn_sites`
    (``pattern`` names the FFN modules of a model it does not recognise);
    ``purpose`` completes "... layers; <purpose> needs ...".
    """
    from frugalnn.models.adapters.ffn import find_ffn_sites

    return find_ffn_sites(model, pattern, purpose=purpose)


class FeedForward(nn.Module):
    """The FFN of a transformer block: ``fc2(dropout(act(fc1(x))))``."""

    def __init__(self, dim: int, hidden: int, act: nn.Module, dropout: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = act
        self.drop = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.drop(self.act(self.fc1(x))))


class StagedModel(nn.Module, abc.ABC):
    """Base class of the reference models: ``classify(blocks(embed(x)))``."""

    feature_kind: str = "image"
    blocks: nn.ModuleList

    @abc.abstractmethod
    def embed(self, x: Any) -> State:
        """Everything before the first block."""

    @abc.abstractmethod
    def classify(self, state: State) -> torch.Tensor:
        """Everything after the last block."""

    def forward(self, x: Any) -> torch.Tensor:
        state = self.embed(x)
        for block in self.blocks:
            state = block(state)
        return self.classify(state)

    def ffn_sites(self) -> list[FFNSite]:
        """Feed-forward layers a method may replace (none for CNNs)."""
        return []


class WrappedModel(StagedModel):
    """A staged model that keeps another one whole under ``base`` and delegates to it.

    For conversions that install layers inside the base model (mixture of
    experts, adaptive computation modules) and add a budget knob on top: the
    base model's ``forward`` is used, so adapters with their own input handling
    keep working; ``embed``, ``blocks``, ``classify`` and ``ffn_sites`` are the
    base model's, and its registry spec and transformation record are carried.
    """

    def __init__(self, base: nn.Module) -> None:
        super().__init__()
        self.base = base
        self.feature_kind = getattr(base, "feature_kind", "tokens")
        self.frugalnn_spec = getattr(base, "frugalnn_spec", None)
        self.frugalnn_transforms = list(getattr(base, "frugalnn_transforms", []))

    @property
    def blocks(self) -> nn.ModuleList:  # type: ignore[override]
        return self.base.blocks

    def embed(self, x: Any) -> State:
        return self.base.embed(x)

    def classify(self, state: State) -> torch.Tensor:
        return self.base.classify(state)

    def forward(self, x: Any) -> Any:
        return call_model(self.base, x)

    def ffn_sites(self) -> list[FFNSite]:
        from frugalnn.models.adapters.ffn import find_ffn_sites

        return find_ffn_sites(self.base, getattr(self, "ffn_pattern", None), required=False)


def select_rows(state: State, idx: torch.Tensor) -> State:
    """The rows ``idx`` of a state (tensor or dict of batch-first tensors)."""
    if isinstance(state, dict):
        return {k: v[idx] for k, v in state.items()}
    return state[idx]


def hidden_of(state: State) -> torch.Tensor:
    """The feature tensor of a state (``state['hidden']`` for dict states)."""
    return state["hidden"] if isinstance(state, dict) else state


def replace_hidden(state: State, hidden: torch.Tensor) -> State:
    """A copy of ``state`` whose feature tensor is ``hidden``."""
    if isinstance(state, dict):
        return {**state, "hidden": hidden}
    return hidden
