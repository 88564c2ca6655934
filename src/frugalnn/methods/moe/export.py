"""Mixture-of-experts outside PyTorch, with ``tau`` settable at run time.

The eager :class:`MoEFFN` branches in Python on how many tokens each expert
got, which ``torch.export`` refuses (GuardOnDataDependentSymNode) and a
tracer would freeze. Three export layouts:

- ``segments`` (ONNX): the model is cut at its MoE layers
  (:mod:`frugalnn.runtime.sites`). ``segment<s>`` graphs hold the dense parts
  between layers and end with each layer's router, ``parts<k>`` holds the
  experts of layer ``k`` (one input and output per expert, each its own
  number of rows). The runner picks each token's experts from the router
  scores and ``tau`` in the loop, gathers each expert's rows, runs
  ``parts<k>`` once on exactly those rows and adds the outputs back.
- ``in-graph`` (the default for ONNX): the pieces of ``segments`` in one
  graph; the choice from the router and the knob (a graph input) is made in
  the graph (:mod:`frugalnn.runtime.ingraph`), so one ONNX Runtime call runs
  a batch. On ONNX Runtime it keeps the most of the eager saving of the three
  (benchmarks/results/runtime_dynamic.md).
- ``one-graph`` (the only layout for the torch formats): a gather
  formulation in one graph: per expert, the tokens routed to it are found
  with ``nonzero``, gathered, run and added back (``index_select`` /
  ``index_add``); ``tau`` is a graph input with one value per row.

In all three, at ``tau = 1`` every expert runs on every token, as in the dense
path. Routing mode ``topk`` is not exported.
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
from frugalnn.methods.moe.router import select_dynamic_k
from frugalnn.runtime.graphs import SUFFIX, graph_bytes
from frugalnn.runtime.knob import KnobHolder, KnobRunner, WithKnob, knob_of_rows
from frugalnn.runtime.sites import LAYOUTS, SiteLoop, choose_layout, export_segments
from frugalnn.utils.io import write_bytes_atomic

__all__ = ["DICT_INPUTS", "KIND", "LAYOUTS", "MoESiteRunner", "claims", "export_parts",
           "load_runner"]

#: ``export_parts`` takes a dict of several tensors (a Hugging Face model's inputs) in
#: the ``in-graph`` layout.
DICT_INPUTS = True

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


class _Experts(nn.Module):
    """The experts of one layer: ``x_e (rows_e, dim) -> expert e's output (rows_e, out)``
    without the output bias (added once per token by the runner)."""

    def __init__(self, layer: MoEFFN) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, *xs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        m, s = self.layer, self.layer.expert_size
        return tuple(m.hidden(x, slice(e * s, (e + 1) * s)) @ m.fc2_weight_t[e * s:(e + 1) * s]
                     for e, x in enumerate(xs))


def _loop(model: nn.Module) -> dict[str, Any]:
    values = model.budget_values() if hasattr(model, "budget_values") else [1.0]
    return {"budget_name": "tau", "values": list(values), "full": 1.0, "low": 0.0, "high": 1.0}


def _export_segments(model: nn.Module, example: torch.Tensor, out_dir: Path,
                     opset: int) -> dict[str, Any]:
    parts = export_segments(
        model, example, out_dir, opset, is_site=lambda m: isinstance(m, MoEFFN),
        scorer=lambda layer: layer.scores,
        parts=lambda layer: (_Experts(layer), layer.num_experts, layer.fc2_bias),
        what="mixture-of-experts model")
    loop = _loop(model) | {"layout": "segments", "plan": parts["plan"]}
    return {"graphs": parts["graphs"], "loop": loop, "budget_name": "tau"}


def _choose_rows(scores: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    """:func:`select_dynamic_k` with ``tau`` a tensor of one value per row; ``tau >= 1``
    selects every expert."""
    return select_dynamic_k(scores, tau) | (tau >= 1.0)


def _export_in_graph(model: nn.Module, example: Any, out_dir: Path,
                     opset: int) -> dict[str, Any]:
    from frugalnn.runtime.ingraph import export_in_graph

    parts = export_in_graph(
        model, example, out_dir, opset, is_site=lambda m: isinstance(m, MoEFFN),
        scorer=lambda layer: layer.scores, choose=_choose_rows, knob="tau",
        parts=lambda layer: (_Experts(layer), layer.num_experts, layer.fc2_bias),
        what="mixture-of-experts model")
    return {"graphs": parts["graphs"], "loop": _loop(model) | {"layout": "in-graph"},
            "budget_name": "tau"}


@torch.no_grad()
def export_parts(model: nn.Module, example: Any, fmt: str, out_dir: Path,
                 opset: int, *, layout: str = "auto") -> dict[str, Any]:
    """Write the graphs of ``layout`` (``auto``: ``in-graph`` for ONNX, routing inside one
    graph, :mod:`frugalnn.runtime.ingraph`; else ``one-graph``)."""
    layers = [m for m in model.modules() if isinstance(m, MoEFFN)]
    if any(m.mode != "dynamic" for m in layers):
        raise UserError("MoE export supports routing mode 'dynamic' (knob tau); this model "
                        "routes top-k")
    chosen = choose_layout(layout, fmt, "a mixture-of-experts", example)
    if chosen == "segments":
        return _export_segments(model, example, out_dir, opset)
    if chosen == "in-graph":
        return _export_in_graph(model, example, out_dir, opset)
    tau = KnobHolder()
    copied = copy.deepcopy(model).eval()
    _swap(copied, tau)
    wrapped = WithKnob(copied, tau).eval()
    file = "model" + SUFFIX[fmt]
    tau_in = torch.full((example.shape[0],), 0.5)
    write_bytes_atomic(out_dir / file, graph_bytes(
        wrapped, (example, tau_in), fmt, input_names=["input", "tau"], output_names=["logits"],
        opset=opset, what="mixture-of-experts model"))
    loop = _loop(model) | {"layout": "one-graph"}
    return {"graphs": {"model": file}, "loop": loop, "budget_name": "tau"}


class MoESiteRunner(SiteLoop):
    """The ``segments`` layout: experts run on the rows the router and ``tau`` give them
    (``last_rows[k]``: the rows each expert of layer ``k`` ran in the last call)."""

    def __init__(self, manifest: dict[str, Any], graphs: dict[str, Any]) -> None:
        super().__init__(manifest, graphs, self._choose)

    @staticmethod
    def _choose(k: int, scores: torch.Tensor, tau: float) -> torch.Tensor:
        if tau >= 1.0:
            return torch.ones(scores.shape, dtype=torch.bool)
        return select_dynamic_k(scores, tau)


def load_runner(manifest: dict[str, Any], graphs: dict[str, Any]) -> Any:
    if manifest["loop"].get("layout") == "segments":
        return MoESiteRunner(manifest, graphs)
    return KnobRunner(manifest, graphs)
