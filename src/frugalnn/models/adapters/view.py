"""The view object behind :func:`~frugalnn.models.adapters.staged.as_staged`.

:class:`StagedView` presents a user's model as ``classify(blocks(embed(x)))``
without copying it; its parts are :class:`LivePart` modules that look the
model's modules up by path at every call, so a module replaced in the model
later (BN folding, quantisation, low-rank factors) is the one that runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from frugalnn.errors import UserError
from frugalnn.models.base import StagedModel, State

__all__ = ["LivePart", "StagedView", "feature_kind_of"]


class StagedView(StagedModel):
    """A user's model seen as ``classify(blocks(embed(x)))``.

    ``model`` is the original model (the only registered child, so the state
    dict is the model's under ``model.``); the parts are kept outside the
    module tree because they hold the same modules. ``block_names[i]`` names
    the point after block ``i`` (an exit point); ``exit_after`` is what
    rebuilds the view (``None``: recognised automatically).
    """

    def __init__(
        self,
        model: nn.Module,
        embed: nn.Module,
        blocks: Sequence[nn.Module],
        classify: nn.Module,
        *,
        block_names: Sequence[str],
        structure: str,
        feature_kind: str | None = None,
        pool: str | None = None,
        exit_after: str | list[str] | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        object.__setattr__(self, "_parts", (embed, nn.ModuleList(blocks), classify))
        self.block_names = list(block_names)
        self.structure = structure
        #: ``None`` until a probe shows the state (:func:`feature_kind_of`).
        self.feature_kind = feature_kind  # type: ignore[assignment]
        if pool is not None:
            self.pool = pool
        self.exit_after = exit_after
        self.frugalnn_spec = getattr(model, "frugalnn_spec", None)

    @property
    def blocks(self) -> nn.ModuleList:  # type: ignore[override]
        return self._parts[1]

    def embed(self, x: Any) -> State:
        return self._parts[0](x)

    def classify(self, state: State) -> torch.Tensor:
        return self._parts[2](state)

    def extra_repr(self) -> str:
        return f"structure={self.structure!r}, blocks={len(self.blocks)}"


class LivePart(nn.Module):
    """A part of a view that finds the model's modules by path at every call.

    ``paths`` maps local names to module paths in the model (``None``: absent).
    A module replaced in the model later (BN folding, quantisation, low-rank
    factors) is then the one that runs, and ``.to()`` on the model moves what
    the part uses. The model is not a child (the view registers it);
    ``modules()`` lists the modules the part uses, as they are now.
    """

    def __init__(self, root: nn.Module, **paths: str | None) -> None:
        super().__init__()
        object.__setattr__(self, "_root", root)
        self.paths = paths

    def __call__(self, *args: Any) -> Any:
        # Straight to ``forward``: no module hooks, so a FLOP counter's module tracker
        # sees only the model's own modules (by their paths), not this unregistered part.
        return self.forward(*args)

    def sub(self, name: str) -> nn.Module:
        path = self.paths[name]
        return self._root.get_submodule(path) if path else self._root

    def named_modules(self, memo: set[nn.Module] | None = None, prefix: str = "",
                      remove_duplicate: bool = True) -> Any:
        self._modules.clear()
        for name, path in self.paths.items():
            if path is not None:
                self._modules[name] = self.sub(name)
        return super().named_modules(memo, prefix, remove_duplicate)


def feature_kind_of(state: State) -> str:
    """``image`` / ``tokens`` / ``vector`` for a ``(B, C, H, W)`` / ``(B, T, D)`` / ``(B, D)``
    state (dict states: their ``hidden`` tensor)."""
    h = state.get("hidden") if isinstance(state, dict) else state
    if not isinstance(h, torch.Tensor):
        raise UserError(f"a block passes on a {type(state).__name__}, not a tensor; early exits "
                        "need tensor states between blocks (choose other exit points)")
    kinds = {4: "image", 3: "tokens", 2: "vector"}
    if h.dim() not in kinds:
        raise UserError(f"a block passes on a tensor of shape {tuple(h.shape)}; early exits need "
                        "(B, C, H, W), (B, T, D) or (B, D) states")
    return kinds[h.dim()]
