"""ACM outside PyTorch, with ``q`` settable at run time.

The eager :class:`ACMFFN` sorts tokens by how many learners they need and
loops in Python over counts it reads back from the tensor, which the
exporters refuse or freeze. Three export layouts:

- ``segments`` (ONNX): the model is cut at its ACM layers
  (:mod:`frugalnn.runtime.sites`). ``segment<s>`` graphs hold the dense parts
  between layers and end with each layer's gate, ``parts<k>`` holds the
  learners of layer ``k`` (one input and output per learner, each its own
  number of rows). The runner picks each token's learner count from the gate
  and ``q`` in the loop, gathers the rows of each learner, runs ``parts<k>``
  once and adds the outputs back.
- ``in-graph`` (the default for ONNX): the pieces of ``segments`` in one
  graph; the choice from the gate and the knob (a graph input) is made in the
  graph (:mod:`frugalnn.runtime.ingraph`), so one ONNX Runtime call runs a
  batch.
- ``one-graph`` (the only layout for the torch formats): per learner ``j``,
  the tokens that run it (``k > j``, found with ``nonzero``) are gathered, run
  and added back; ``q`` is a graph input with one value per row.

Learner 1 runs on every token. At ``q = 1`` every token runs every learner, as
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
from frugalnn.runtime.sites import LAYOUTS, SiteLoop, choose_layout, export_segments
from frugalnn.utils.io import write_bytes_atomic

__all__ = ["ACMSiteRunner", "DICT_INPUTS", "KIND", "LAYOUTS", "claims", "export_parts",
           "load_runner"]

#: ``export_parts`` takes a dict of several tensors (a Hugging Face model's inputs) in
#: the ``in-graph`` layout.
DICT_INPUTS = True

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


class _Learners(nn.Module):
    """The learners of one layer: ``x_j (rows_j, dim) -> learner j's output (rows_j, out)``,
    its output bias included."""

    def __init__(self, layer: ACMFFN) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, *xs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        m = self.layer
        return tuple(torch.addmm(m.b2[j], m.hidden(x, j), m.w2[j]) for j, x in enumerate(xs))


def _loop(model: nn.Module) -> dict[str, Any]:
    values = model.budget_values() if hasattr(model, "budget_values") else [1.0]
    return {"budget_name": "q", "values": list(values), "full": 1.0, "low": 0.0, "high": 1.0}


def _gate_logits(layer: ACMFFN) -> Any:
    return lambda x: layer.gate(x).float()


def _export_segments(model: nn.Module, example: torch.Tensor, out_dir: Path,
                     opset: int) -> dict[str, Any]:
    # Learner 1 runs on every token: no gather, no scatter (always=1).
    parts = export_segments(
        model, example, out_dir, opset, is_site=lambda m: isinstance(m, ACMFFN),
        scorer=_gate_logits,
        parts=lambda layer: (_Learners(layer), layer.num_learners, torch.zeros(layer.out_dim)),
        always=1, what="ACM model")
    loop = _loop(model) | {"layout": "segments", "plan": parts["plan"], "always_parts": 1}
    return {"graphs": parts["graphs"], "loop": loop, "budget_name": "q"}


def _choose_rows(logits: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """:meth:`ACMSiteRunner._choose` for learners 2.. with ``q`` a tensor: learner ``j``
    runs where the cumulative softmax before it is below ``q`` (it never decreases, so
    this is ``count > j``)."""
    cum = logits.float().softmax(-1).cumsum(-1)
    return (cum[..., :-1] < q) | (q >= 1.0)


def _export_in_graph(model: nn.Module, example: Any, out_dir: Path,
                     opset: int) -> dict[str, Any]:
    from frugalnn.runtime.ingraph import export_in_graph

    parts = export_in_graph(
        model, example, out_dir, opset, is_site=lambda m: isinstance(m, ACMFFN),
        scorer=_gate_logits, choose=_choose_rows, knob="q",
        parts=lambda layer: (_Learners(layer), layer.num_learners, torch.zeros(layer.out_dim)),
        always=1, what="ACM model")
    return {"graphs": parts["graphs"], "loop": _loop(model) | {"layout": "in-graph"},
            "budget_name": "q"}


@torch.no_grad()
def export_parts(model: nn.Module, example: Any, fmt: str, out_dir: Path,
                 opset: int, *, layout: str = "auto") -> dict[str, Any]:
    """Write the graphs of ``layout`` (``auto``: ``in-graph`` for ONNX, the choice inside
    one graph, :mod:`frugalnn.runtime.ingraph`; else ``one-graph``)."""
    layers = [m for m in model.modules() if isinstance(m, ACMFFN)]
    if any(m.mode != "infer" for m in layers):
        raise UserError("ACM export needs the layers in 'infer' mode (not a training mode)")
    chosen = choose_layout(layout, fmt, "an ACM", example)
    if chosen == "segments":
        return _export_segments(model, example, out_dir, opset)
    if chosen == "in-graph":
        return _export_in_graph(model, example, out_dir, opset)
    holder = KnobHolder()
    copied = copy.deepcopy(model).eval()
    _swap(copied, holder)
    wrapped = WithKnob(copied, holder).eval()
    file = "model" + SUFFIX[fmt]
    q_in = torch.full((example.shape[0],), 0.5)
    write_bytes_atomic(out_dir / file, graph_bytes(
        wrapped, (example, q_in), fmt, input_names=["input", "q"], output_names=["logits"],
        opset=opset, what="ACM model"))
    loop = _loop(model) | {"layout": "one-graph"}
    return {"graphs": {"model": file}, "loop": loop, "budget_name": "q"}


class ACMSiteRunner(SiteLoop):
    """The ``segments`` layout: learner ``j`` runs on the rows whose count ``k`` exceeds ``j``
    (``last_rows[k]``: the rows each learner of layer ``k`` ran in the last call)."""

    def __init__(self, manifest: dict[str, Any], graphs: dict[str, Any]) -> None:
        super().__init__(manifest, graphs, self._choose)

    @staticmethod
    def _choose(k: int, logits: torch.Tensor, q: float) -> torch.Tensor:
        n = logits.shape[-1]
        if q >= 1.0:
            return torch.ones(logits.shape, dtype=torch.bool)
        cum = logits.float().softmax(-1).cumsum(-1)
        count = ((cum < q).sum(-1) + 1).clamp(max=n)
        return count.unsqueeze(1) > torch.arange(n)


def load_runner(manifest: dict[str, Any], graphs: dict[str, Any]) -> Any:
    if manifest["loop"].get("layout") == "segments":
        return ACMSiteRunner(manifest, graphs)
    return KnobRunner(manifest, graphs)
