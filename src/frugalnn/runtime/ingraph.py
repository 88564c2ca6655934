"""Input-dependent layers routed inside one ONNX graph: the ``in-graph`` layout.

The ``segments`` layout (:mod:`frugalnn.runtime.sites`) leaves each layer's
choice to a Python loop between ONNX Runtime calls. The ``in-graph`` layout
keeps the same pieces but writes the whole model as one graph, with the
budget knob as a second input (one value per example, as in
:class:`frugalnn.runtime.knob.WithKnob`). Every ``frugalnn.site::Site`` node
of the marked model is replaced in place by

1. the method's *chooser*, exported on its own and run on the scores viewed as
   ``(batch, tokens, parts)`` against the knob as ``(batch, 1, 1)``: a bool
   mask of which chosen part (the parts after the ``always`` ones, which run
   on every row) runs on which token (a site's rows are its examples' tokens,
   example after example, as :class:`~frugalnn.runtime.sites.SiteMarker`
   flattens them);
2. ``NonZero`` of the transposed mask and ``ReduceSum`` of it: the rows of
   every part (part-major) and how many each has;
3. the layer's :func:`~frugalnn.runtime.sites.pack_parts` graph: ``Split`` of
   the rows per part, ``Gather``, the part's own matmuls on exactly its rows,
   and ``ScatterND`` adds back into place (``combine``: one per part, or one
   for the concatenated outputs).

Choice, row selection and row movement thus run in ONNX Runtime's kernels:
one session call per batch, nothing returns to Python between layers.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from frugalnn.runtime.sites import SITE_DOMAIN, mark_sites, marked_graph, parts_graph

__all__ = ["export_in_graph", "inline_sites"]


class _Chooser(nn.Module):
    def __init__(self, choose: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.choose = choose

    def forward(self, scores: torch.Tensor, knob: torch.Tensor) -> torch.Tensor:
        return self.choose(scores, knob)


def _chooser_graph(choose: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                   scores: torch.Tensor, opset: int, what: str) -> bytes:
    """``choose`` as an ONNX graph ``(scores (B, T, S), knob (B, 1, 1)) -> mask``, both
    leading axes dynamic."""
    import io
    import warnings

    from frugalnn.errors import UserError

    scores = scores.reshape(1, *scores.shape).expand(2, -1, -1).contiguous()
    knob = torch.tensor([0.3, 0.6]).reshape(2, 1, 1)
    axes = {"scores": {0: "batch", 1: "tokens"}, "knob": {0: "batch"},
            "mask": {0: "batch", 1: "tokens"}}
    buf = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(_Chooser(choose), (scores, knob), buf, dynamo=False,
                              input_names=["scores", "knob"], output_names=["mask"],
                              dynamic_axes=axes, opset_version=opset)
    except Exception as exc:  # noqa: BLE001 - one line, like every exporter failure
        raise UserError(f"cannot export the choice of {what} to onnx: "
                        f"{type(exc).__name__}: {str(exc).splitlines()[0]}") from None
    return buf.getvalue()


def _renamed(sub: Any, prefix: str, names: dict[str, str]) -> tuple[list[Any], list[Any]]:
    """The nodes and initializers of graph ``sub``, its names prefixed except those in
    ``names`` (inputs and outputs, mapped to the outer graph's)."""

    def name(n: str) -> str:
        return n if not n else names.get(n, prefix + n)

    nodes = []
    for i, node in enumerate(sub.node):
        node.input[:] = [name(n) for n in node.input]
        node.output[:] = [name(n) for n in node.output]
        node.name = f"{prefix}{node.name or node.op_type}_{i}"
        nodes.append(node)
    inits = []
    for t in sub.initializer:
        t.name = name(t.name)
        inits.append(t)
    return nodes, inits


def inline_sites(model_bytes: bytes, sites: dict[int, tuple[bytes, bytes]], *,
                 knob: str = "knob") -> bytes:
    """Replace every site node of ``model_bytes`` (index ``i``) by its chooser and parts
    graphs ``sites[i]``; the knob becomes the graph input ``knob`` ``(batch,)``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load_from_string(model_bytes)
    graph = model.graph
    mk = helper.make_node
    shared = {"site_knob_shape": [-1, 1, 1], "site_minus": [-1], "site_axis0": [0]}
    graph.initializer.extend(numpy_helper.from_array(torch.tensor(v).numpy(), k)
                             for k, v in shared.items())
    graph.initializer.append(numpy_helper.from_array(torch.tensor(1).numpy(), "site_second"))
    # The knob as (batch, 1, 1), once for every site.
    nodes: list[Any] = [mk("Shape", [knob], ["site_batch"]),
                        mk("Reshape", [knob, "site_knob_shape"], ["site_knob"])]
    for node in graph.node:
        if node.domain != SITE_DOMAIN:
            nodes.append(node)
            continue
        index = next(a.i for a in node.attribute if a.name == "index")
        choose_bytes, parts_bytes = sites[int(index)]
        tokens, scores, out = node.input[0], node.input[1], node.output[0]
        p = f"site{index}/"
        nodes += [  # the scores of each example's tokens: (batch, tokens, parts)
            mk("Shape", [scores], [p + "parts"], start=1),
            mk("Concat", ["site_batch", "site_minus", p + "parts"], [p + "grid"], axis=0),
            mk("Reshape", [scores, p + "grid"], [p + "scores"]),
        ]
        chooser = onnx.load_from_string(choose_bytes).graph
        sub, inits = _renamed(chooser, p + "choose/", {
            chooser.input[0].name: p + "scores", chooser.input[1].name: "site_knob",
            chooser.output[0].name: p + "mask3"})
        nodes += sub
        graph.initializer.extend(inits)
        mask = p + "mask"
        nodes += [
            mk("Flatten", [p + "mask3"], [mask], axis=2),
            mk("Cast", [mask], [p + "mask_int"], to=TensorProto.INT64),
            mk("ReduceSum", [p + "mask_int", "site_axis0"], [p + "counts"], keepdims=0),
            mk("Transpose", [mask], [p + "mask_t"], perm=[1, 0]),
            mk("NonZero", [p + "mask_t"], [p + "pairs"]),
            mk("Gather", [p + "pairs", "site_second"], [p + "tokens"], axis=0),
        ]
        parts = onnx.load_from_string(parts_bytes).graph
        sub, inits = _renamed(parts, p + "parts/", {
            "x": tokens, "tokens": p + "tokens", "counts": p + "counts", "y": out})
        nodes += sub
        graph.initializer.extend(inits)
    del graph.node[:]
    graph.node.extend(nodes)
    graph.input.append(helper.make_tensor_value_info(knob, TensorProto.FLOAT, ["batch"]))
    kept = [o for o in model.opset_import if o.domain != SITE_DOMAIN]
    del model.opset_import[:]
    model.opset_import.extend(kept)
    return model.SerializeToString()


@torch.no_grad()
def export_in_graph(model: nn.Module, example: Any, out_dir: Any, opset: int, *,
                    is_site: Callable[[nn.Module], bool],
                    scorer: Callable[[Any], Callable[[torch.Tensor], torch.Tensor]],
                    parts: Callable[[Any], tuple[nn.Module, int, torch.Tensor]],
                    choose: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                    always: int = 0, combine: str = "concat", knob: str = "knob",
                    what: str = "model") -> dict[str, Any]:
    """Write the ``in-graph`` layout of ``model`` (one file, ``model.onnx``) into ``out_dir``.

    ``is_site``, ``scorer``, ``parts`` and ``always`` as for
    :func:`~frugalnn.runtime.sites.export_segments`; ``choose(scores, knob)`` is the
    method's choice as tensor operations: ``scores`` ``(batch, tokens, parts)``,
    ``knob`` ``(batch, 1, 1)`` -> ``(batch, tokens, parts - always)`` booleans, which
    of the parts after the first ``always`` runs on which token; ``knob`` names the graph
    input that carries the knob (one value per example, as
    :class:`~frugalnn.runtime.knob.KnobRunner` feeds it). ``example``: a tensor, or a
    dict of tensors (a Hugging Face model's ``input_ids``, ``attention_mask``, ...), each
    key a graph input before the knob. Returns
    ``{"graphs": {"model": "model.onnx"}}``.
    """
    from frugalnn.utils.io import write_bytes_atomic

    copied, markers = mark_sites(model, is_site, scorer)
    whole = marked_graph(copied, markers, example, opset, what)
    sites = {}
    for m in markers:
        weight = next(p for p in m.layer.parameters() if p.is_floating_point())
        probe = weight.new_zeros(3, m.layer.dim).normal_()
        sites[m.index] = (
            _chooser_graph(choose, m.scorer(probe), opset, what),
            parts_graph(m.layer, parts, probe, opset, always=always, combine=combine,
                        name=str(m.index)))
    write_bytes_atomic(Path(out_dir) / "model.onnx",
                       inline_sites(whole, sites, knob=knob))
    return {"graphs": {"model": "model.onnx"}}
