"""Mixture-of-experts outside PyTorch: one graph in a gather formulation, tau as an input.

The eager :class:`MoEFFN` branches in Python on how many tokens each expert
got, which ``torch.export`` refuses (GuardOnDataDependentSymNode) and a
tracer would freeze. The exported form has no such branch: per expert, the
tokens routed to it are found with ``nonzero``, gathered, run through the
expert and added back (``index_select`` / ``index_add``), so an expert runs
on exactly its tokens at run time, in ONNX Runtime as in PyTorch. The
threshold ``tau`` is a graph input (one value per row), so the knob stays
settable: at ``tau = 1`` every expert runs on every token, as in the dense
path. Routing mode ``topk`` is not exported (its ``k`` would be a constant).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import nn

from frugalnn.errors import UserError
from frugalnn.methods.moe.convert import MoEModel
from frugalnn.methods.moe.layer import MoEFFN
from frugalnn.runtime.graphs import SUFFIX, graph_bytes
from frugalnn.runtime.knob import KnobHolder, KnobRunner, WithKnob, knob_of_rows
from frugalnn.utils.io import write_bytes_atomic

__all__ = ["KIND", "claims", "export_parts", "load_runner"]

KIND = "moe"


class _GatherMoE(nn.Module):
    """:class:`MoEFFN` in a form without data-dependent Python branches."""

    def __init__(self, layer: MoEFFN, tau: KnobHolder) -> None:
        super().__init__()
        self.layer = layer
        self.tau = tau

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.layer
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        scores = m.scores(x2).reshape(*shape[:-1], m.num_experts)
        t = knob_of_rows(self.tau, scores, x.dim())
        mask = (scores >= (1.0 - t) * scores.amax(dim=-1, keepdim=True)) | (t >= 1.0)
        mask = mask.reshape(-1, m.num_experts)
        s = m.expert_size
        y = m.fc2_bias.expand(x2.shape[0], m.out_dim).clone()
        for e in range(m.num_experts):
            rows = slice(e * s, (e + 1) * s)
            idx = mask[:, e].nonzero().squeeze(1)
            h = m.hidden(x2.index_select(0, idx), rows)
            y = y.index_add(0, idx, h @ m.fc2_weight_t[rows])
        return y.reshape(*shape[:-1], m.out_dim)


def claims(model: Any) -> bool:
    return isinstance(model, MoEModel) or any(isinstance(m, MoEFFN) for m in model.modules())


def _swap(module: nn.Module, tau: KnobHolder) -> None:
    for name, child in module.named_children():
        if isinstance(child, MoEFFN):
            setattr(module, name, _GatherMoE(child, tau))
        else:
            _swap(child, tau)


@torch.no_grad()
def export_parts(model: nn.Module, example: torch.Tensor, fmt: str, out_dir: Path,
                 opset: int) -> dict[str, Any]:
    layers = [m for m in model.modules() if isinstance(m, MoEFFN)]
    if any(m.mode != "dynamic" for m in layers):
        raise UserError("MoE export supports routing mode 'dynamic' (knob tau); this model "
                        "routes top-k")
    tau = KnobHolder()
    copied = copy.deepcopy(model).eval()
    _swap(copied, tau)
    wrapped = WithKnob(copied, tau).eval()
    file = "model" + SUFFIX[fmt]
    tau_in = torch.full((example.shape[0],), 0.5)
    write_bytes_atomic(out_dir / file, graph_bytes(
        wrapped, (example, tau_in), fmt, input_names=["input", "tau"], output_names=["logits"],
        opset=opset, what="mixture-of-experts model"))
    values = model.budget_values() if hasattr(model, "budget_values") else [1.0]
    loop = {"budget_name": "tau", "values": list(values), "full": 1.0, "low": 0.0, "high": 1.0}
    return {"graphs": {"model": file}, "loop": loop, "budget_name": "tau"}


def load_runner(manifest: dict[str, Any], graphs: dict[str, Any]) -> KnobRunner:
    return KnobRunner(manifest, graphs)
