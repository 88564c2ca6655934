"""The plain network an architecture describes (no supernet machinery).

``create_model("nas_net", arch=...)`` builds it from the JSON/YAML file that
``frugalnn nas derive`` writes (or from the same dict). Blocks that chose
``zero`` are skip connections and are left out, so the derived network runs
exactly the operations the search picked. This module imports only models and
the search-space description, so ``frugalnn.models.zoo`` may import it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from frugalnn.methods.nas.ops import build_op
from frugalnn.methods.nas.space import (
    BlockSlot,
    SearchSpace,
    arch_from_dict,
    arch_to_dict,
    build_head,
    build_stem,
)
from frugalnn.models.base import StagedModel
from frugalnn.models.registry import register_model

__all__ = ["NASBlock", "NASNet", "baseline_arch", "build_nas_net"]


class NASBlock(nn.Module):
    """One chosen op, plus the identity shortcut when the shapes allow it."""

    def __init__(self, slot: BlockSlot, op: str) -> None:
        super().__init__()
        self.op_name = op
        self.residual = slot.residual
        self.op = build_op(op, slot.c_in, slot.c_out, slot.stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.op(x)
        return out + x if self.residual else out

    def extra_repr(self) -> str:
        return f"op={self.op_name}, residual={self.residual}"


class NASNet(StagedModel):
    """Stem, the chosen blocks (``zero`` blocks dropped) and the head."""

    feature_kind = "image"

    def __init__(self, space: SearchSpace, ops: list[str]) -> None:
        super().__init__()
        self.space = space
        self.ops = list(ops)
        self.stem = build_stem(space)
        self.blocks = nn.ModuleList(
            NASBlock(slot, op) for slot, op in zip(space.slots(), ops) if op != "zero"
        )
        self.head = build_head(space)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.stem(x)

    def classify(self, state: torch.Tensor) -> torch.Tensor:
        return self.head(state)

    def arch_dict(self) -> dict[str, Any]:
        return arch_to_dict(self.space, self.ops)


def build_nas_net(arch: dict[str, Any] | str | Path) -> NASNet:
    space, ops = arch_from_dict(arch)
    return NASNet(space, ops)


def baseline_arch(space: SearchSpace | None = None, op: str = "mb3_e6") -> dict[str, Any]:
    """A hand-designed network of the same family: ``op`` in every block.

    ``mb3_e6`` everywhere is the MobileNetV2 recipe (3x3 depthwise, expansion 6).
    """
    space = space or SearchSpace()
    return arch_to_dict(space, [op] * len(space.slots()), name=f"baseline_{op}")


@register_model(
    "nas_net",
    input_shape=(3, 32, 32),
    description="network found by `frugalnn nas` (kwarg arch= JSON/YAML path or dict)",
)
def _nas_net(arch: dict[str, Any] | str | None = None) -> NASNet:
    if arch is None:
        arch = baseline_arch()
    if isinstance(arch, (str, Path)):
        # Store the parsed dict so checkpoints stay loadable without the file.
        space, ops = arch_from_dict(arch)
        return NASNet(space, ops)
    return build_nas_net(arch)
