"""Record something about each call of a layer type during one forward pass (tests only)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn


def per_call(model: nn.Module, layer_type: type, x: Any,
             record: Callable[[nn.Module, torch.Tensor], Any]) -> list[Any]:
    """``record(layer, rows)`` for each call of a ``layer_type`` module, in execution order,
    while ``model(x)`` runs under ``no_grad``; ``rows`` is the layer's input flattened to
    ``(tokens, features)``."""
    out: list[Any] = []

    def hook(layer: nn.Module, args: tuple, _out: Any) -> None:
        out.append(record(layer, args[0].reshape(-1, args[0].shape[-1])))

    hooks = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, layer_type)]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return out
