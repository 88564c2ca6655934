"""ACM outside PyTorch: one graph in a gather formulation, ``q`` as an input.

The eager :class:`ACMFFN` sorts tokens by how many learners they need and
loops in Python over counts it reads back from the tensor, which the
exporters refuse or freeze. The exported form gathers, for each learner
``j``, the tokens that run it (``k > j``, found with ``nonzero``), runs the
learner on them and adds the result back, so each learner runs on exactly
its tokens at run time. Learner 1 runs on every token. ``q`` is a graph
input (one value per row): at ``q = 1`` every token runs every learner, as
in the dense path.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import nn

from frugalnn.errors import UserError
from frugalnn.methods.acm.convert import ACMModel
from frugalnn.methods.acm.module import ACMFFN
from frugalnn.runtime.graphs import SUFFIX, graph_bytes
from frugalnn.runtime.knob import KnobHolder, KnobRunner, WithKnob, knob_of_rows
from frugalnn.utils.io import write_bytes_atomic

__all__ = ["KIND", "claims", "export_parts", "load_runner"]

KIND = "acm"


class _GatherACM(nn.Module):
    """:class:`ACMFFN` (inference mode) without data-dependent Python branches."""

    def __init__(self, layer: ACMFFN, q: KnobHolder) -> None:
        super().__init__()
        self.layer = layer
        self.q = q

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.layer
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        n = m.num_learners
        logits = m.gate(x2).float().reshape(*shape[:-1], n)
        q = knob_of_rows(self.q, logits, x.dim())
        cum = logits.softmax(-1).cumsum(-1)
        k = ((cum < q).sum(-1) + 1).clamp(max=n)
        k = torch.where(q.reshape(q.shape[:-1]) >= 1.0, torch.full_like(k, n), k).reshape(-1)
        y = torch.addmm(m.b2[0], m.hidden(x2, 0), m.w2[0])
        for j in range(1, n):
            idx = (k > j).nonzero().squeeze(1)
            h = m.hidden(x2.index_select(0, idx), j)
            y = y.index_add(0, idx, torch.addmm(m.b2[j], h, m.w2[j]))
        return y.reshape(*shape[:-1], m.out_dim)


def claims(model: Any) -> bool:
    return isinstance(model, ACMModel) or any(isinstance(m, ACMFFN) for m in model.modules())


def _swap(module: nn.Module, q: KnobHolder) -> None:
    for name, child in module.named_children():
        if isinstance(child, ACMFFN):
            setattr(module, name, _GatherACM(child, q))
        else:
            _swap(child, q)


@torch.no_grad()
def export_parts(model: nn.Module, example: torch.Tensor, fmt: str, out_dir: Path,
                 opset: int) -> dict[str, Any]:
    layers = [m for m in model.modules() if isinstance(m, ACMFFN)]
    if any(m.mode != "infer" for m in layers):
        raise UserError("ACM export needs the layers in 'infer' mode (not a training mode)")
    holder = KnobHolder()
    copied = copy.deepcopy(model).eval()
    _swap(copied, holder)
    wrapped = WithKnob(copied, holder).eval()
    file = "model" + SUFFIX[fmt]
    q_in = torch.full((example.shape[0],), 0.5)
    write_bytes_atomic(out_dir / file, graph_bytes(
        wrapped, (example, q_in), fmt, input_names=["input", "q"], output_names=["logits"],
        opset=opset, what="ACM model"))
    values = model.budget_values() if hasattr(model, "budget_values") else [1.0]
    loop = {"budget_name": "q", "values": list(values), "full": 1.0, "low": 0.0, "high": 1.0}
    return {"graphs": {"model": file}, "loop": loop, "budget_name": "q"}


def load_runner(manifest: dict[str, Any], graphs: dict[str, Any]) -> KnobRunner:
    return KnobRunner(manifest, graphs)
