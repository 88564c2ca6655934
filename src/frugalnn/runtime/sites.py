"""Input-dependent layers as holes in an exported graph, filled by a runtime loop.

A mixture-of-experts or ACM layer saves time by running each expert
(learner) on exactly the tokens routed to it. Written as one ONNX graph
(``nonzero`` / ``index_select`` / ``index_add`` per expert), that saving is
lost on ONNX Runtime. This module exports such a model in *segments* instead
(and gives :mod:`frugalnn.runtime.ingraph` the pieces it joins into one graph):

1. every input-dependent layer is replaced by a :class:`SiteMarker`, which
   flattens the tokens, computes the layer's small static scorer (MoE's
   router, ACM's gate) on them, and leaves one opaque node
   (``frugalnn.site::Site``) for the rest;
2. the model is exported to ONNX once, and :func:`partition` cuts the graph at
   those nodes: ``segment<s>`` computes everything that depends on the first
   ``s`` sites only (the dense parts: attention, norms, residuals, the
   classifier), and outputs whatever later segments and sites read;
3. each layer's experts (learners) are one more graph, ``parts<k>``
   (:func:`pack_parts`): given the tokens, the rows of every expert and how
   many each has, it gathers and splits the rows, runs each expert on its own
   rows and adds the outputs back into place.

:class:`SiteLoop` runs the segments in order; at site ``k`` it hands the
tokens and the scores to the method's site function, which picks the rows of
each expert from the scores and the budget knob and runs ``parts<k>`` once on
them (:func:`run_parts`). The knob is therefore read in the loop and stays
settable.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from frugalnn.errors import UserError
from frugalnn.runtime.knob import KnobSettings

__all__ = [
    "LAYOUTS",
    "ONNX_LAYOUTS",
    "SITE_DOMAIN",
    "SiteLoop",
    "SiteMarker",
    "choose_layout",
    "export_segments",
    "exporting_sites",
    "mark_sites",
    "marked_graph",
    "pack_parts",
    "partition",
    "parts_graph",
    "run_parts",
]

SITE_DOMAIN = "frugalnn.site"

#: The layers behind the site nodes while a model is being exported (index -> layer).
_LAYERS: dict[int, nn.Module] = {}


class _Site(torch.autograd.Function):
    """One opaque ONNX node for a layer: ``Site(tokens, scores) -> output``. Run eagerly (as
    the tracer does) it computes the real layer, untraced, so later shapes are right."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, scores: torch.Tensor, index: int,
                out_dim: int) -> torch.Tensor:
        state = torch._C._get_tracing_state()
        torch._C._set_tracing_state(None)
        try:
            with torch.no_grad():
                return _LAYERS[index](x)
        finally:
            torch._C._set_tracing_state(state)

    @staticmethod
    def symbolic(g: Any, x: Any, scores: Any, index: int, out_dim: int) -> Any:
        y = g.op(f"{SITE_DOMAIN}::Site", x, scores, index_i=index)
        y.setType(x.type().with_sizes([None, out_dim]))  # the exporter cannot infer it
        return y


class SiteMarker(nn.Module):
    """Stands in for an input-dependent layer while the model is exported.

    ``scorer`` maps the flattened tokens ``(N, dim)`` to what the layer's
    choice is made from (router scores, gate logits); ``out_dim`` is the
    layer's output width.
    """

    def __init__(self, layer: nn.Module, scorer: Callable[[torch.Tensor], torch.Tensor],
                 index: int, out_dim: int) -> None:
        super().__init__()
        self.layer = layer
        self.scorer = scorer
        self.index = index
        self.out_dim = out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        y = _Site.apply(x2, self.scorer(x2), self.index, self.out_dim)
        return y.reshape(*shape[:-1], self.out_dim)


@contextlib.contextmanager
def exporting_sites(markers: Sequence[SiteMarker]) -> Iterator[None]:
    """Make the markers' layers computable by the site nodes during one export."""
    _LAYERS.clear()
    _LAYERS.update({m.index: m.layer for m in markers})
    try:
        yield
    finally:
        _LAYERS.clear()


LAYOUTS = ("segments", "in-graph", "one-graph")
#: Layouts made of ONNX-only parts (custom nodes cut out or replaced).
ONNX_LAYOUTS = ("segments", "in-graph")


def choose_layout(layout: str, fmt: str, what: str, example: Any = None) -> str:
    """The layout an input-dependent export of ``what`` uses: ``auto`` is ``in-graph``
    (:mod:`frugalnn.runtime.ingraph`) for ONNX and ``one-graph`` for the torch formats;
    anything else is checked (``segments`` and ``in-graph`` are ONNX only; an
    ``example`` that is a dict of several tensors, ``in-graph`` only)."""
    chosen = layout
    if layout == "auto":
        chosen = "in-graph" if fmt == "onnx" else "one-graph"
    elif layout not in LAYOUTS:
        raise UserError(f"unknown layout {layout!r} for {what} export; use "
                        f"auto, {', '.join(LAYOUTS)}")
    elif layout in ONNX_LAYOUTS and fmt != "onnx":
        raise UserError(f"the {layout!r} layout is made for ONNX; use layout 'one-graph' for "
                        f"{fmt}")
    if isinstance(example, dict) and chosen != "in-graph":
        raise UserError(f"{what} model that takes a dict input ({', '.join(example)}) is "
                        f"exported in the 'in-graph' layout to ONNX only, not {chosen!r} "
                        f"to {fmt}")
    return chosen


def mark_sites(model: nn.Module, is_site: Callable[[nn.Module], bool],
               scorer: Callable[[Any], Callable[[torch.Tensor], torch.Tensor]]
               ) -> tuple[nn.Module, list[SiteMarker]]:
    """A copy of ``model`` (eval mode) with every submodule for which ``is_site`` holds
    replaced by a :class:`SiteMarker` (``scorer(layer)``: what its choice is made from)."""
    import copy

    copied = copy.deepcopy(model).eval()
    markers: list[SiteMarker] = []

    def swap(module: nn.Module) -> None:
        for name, child in module.named_children():
            if is_site(child):
                marker = SiteMarker(child, scorer(child), len(markers), int(child.out_dim))
                markers.append(marker)
                setattr(module, name, marker)
            else:
                swap(child)

    swap(copied)
    return copied, markers


def marked_graph(model: nn.Module, markers: Sequence[SiteMarker], example: Any,
                 opset: int, what: str) -> bytes:
    """The ONNX graph of a :func:`mark_sites` copy: one ``frugalnn.site::Site`` node per
    site, output ``logits``; input ``input`` for a tensor example, one input per key for
    a dict of tensors (:mod:`frugalnn.runtime.inputs`, token axes dynamic)."""
    from frugalnn.runtime.graphs import graph_bytes
    from frugalnn.runtime.inputs import KeywordInputs, dynamic_axes, input_names, ordered

    names = input_names(example)
    module = model if isinstance(example, torch.Tensor) else KeywordInputs(model, names)
    with exporting_sites(markers):
        return graph_bytes(module, ordered(example, names), "onnx", input_names=names,
                           output_names=["logits"], opset=opset, what=what,
                           custom_domains=(SITE_DOMAIN,), dynamic_axes=dynamic_axes(example))


def parts_graph(layer: nn.Module, parts: Callable[[Any], tuple[nn.Module, int, torch.Tensor]],
                like: torch.Tensor, opset: int, *, always: int = 0,
                combine: str = "chain", name: str = "") -> bytes:
    """The :func:`pack_parts` graph of one site's layer (``parts(layer)``: the module of
    its parts, their number and the output bias); ``like``: a tensor of the rows' dtype
    and device."""
    from frugalnn.runtime.graphs import graph_bytes

    module, n, bias = parts(layer)
    # Distinct row counts and row axes: each part gets its own number of rows.
    xs = tuple(like.new_zeros(2 + i, layer.dim).normal_() for i in range(n))
    names, outs = [f"x{i}" for i in range(n)], [f"y{i}" for i in range(n)]
    axes = {v: f"rows{i}" for group in (names, outs) for i, v in enumerate(group)}
    return pack_parts(graph_bytes(
        module.eval(), xs, "onnx", input_names=names, output_names=outs, num_outputs=n,
        opset=opset, what=f"parts of layer {getattr(layer, 'name', name)!r}", row_axes=axes),
        bias, always=always, combine=combine)


@torch.no_grad()
def export_segments(model: nn.Module, example: torch.Tensor, out_dir: Any, opset: int, *,
                    is_site: Callable[[nn.Module], bool],
                    scorer: Callable[[Any], Callable[[torch.Tensor], torch.Tensor]],
                    parts: Callable[[Any], tuple[nn.Module, int, torch.Tensor]],
                    always: int = 0, what: str = "model") -> dict[str, Any]:
    """Write the ``segments`` layout of ``model`` into ``out_dir``.

    Every submodule for which ``is_site`` holds becomes a site: ``scorer(layer)``
    is what its choice is made from, ``parts(layer)`` gives the module of its
    parts (one input and one output per part), their number and the output bias.
    Returns ``{"graphs": {name: file}, "plan": ...}`` (see :func:`partition`).
    """
    from frugalnn.utils.io import write_bytes_atomic

    copied, markers = mark_sites(model, is_site, scorer)
    segments, plan = partition(marked_graph(copied, markers, example, opset, what))
    graphs: dict[str, str] = {}
    for s, seg in enumerate(segments):
        if seg is not None:
            graphs[f"segment{s}"] = f"segment{s}.onnx"
            write_bytes_atomic(Path(out_dir) / graphs[f"segment{s}"], seg)
    for k, site in enumerate(plan["sites"]):
        graphs[f"parts{k}"] = f"parts{k}.onnx"
        write_bytes_atomic(Path(out_dir) / graphs[f"parts{k}"], parts_graph(
            markers[site["index"]].layer, parts, example, opset, always=always, name=str(k)))
    return {"graphs": graphs, "plan": plan}


def _fold_constants(graph: Any) -> None:
    """``Constant`` nodes become initializers and ``Identity`` nodes of an initializer (the
    exporter's way of sharing a weight) point at it, so that every segment holds the
    constants it reads instead of receiving them from an earlier segment."""
    from onnx import helper, numpy_helper

    inits = {t.name for t in graph.initializer}
    outputs = {o.name for o in graph.output}
    alias: dict[str, str] = {}
    keep = []
    for node in graph.node:
        if node.op_type == "Constant" and len(node.attribute) == 1 \
                and node.attribute[0].name == "value" and node.output[0] not in outputs:
            tensor = helper.get_attribute_value(node.attribute[0])
            graph.initializer.append(numpy_helper.from_array(
                numpy_helper.to_array(tensor), node.output[0]))
            inits.add(node.output[0])
        elif node.op_type == "Identity" and node.input[0] in inits \
                and node.output[0] not in outputs:
            alias[node.output[0]] = node.input[0]
        else:
            keep.append(node)
    for node in keep:
        for i, name in enumerate(node.input):
            if name in alias:
                node.input[i] = alias[name]
    del graph.node[:]
    graph.node.extend(keep)


def partition(model_bytes: bytes) -> tuple[list[bytes | None], dict[str, Any]]:
    """Cut an ONNX model at its site nodes.

    Returns the segments (``None`` where a segment would hold no node) and the
    plan: ``input``/``output`` names of the model, per segment its ``inputs`` and
    ``outputs`` names, per site (in execution order) ``index`` (the marker's),
    ``tokens``, ``scores`` and ``output`` names.
    """
    import onnx
    from onnx import helper, shape_inference

    model = onnx.load_from_string(model_bytes)
    graph = model.graph
    _fold_constants(graph)
    inits = {t.name: t for t in graph.initializer}
    types: dict[str, Any] = {}
    for info in [*graph.input, *graph.output, *graph.value_info]:
        types[info.name] = info.type
    try:  # fill in what the exporter left out (the site node's inputs are kept as typed)
        inferred = shape_inference.infer_shapes(model)
        for info in inferred.graph.value_info:
            types.setdefault(info.name, info.type)
    except Exception:  # noqa: BLE001 - the exporter's own types are usually enough
        pass
    graph_inputs = [i.name for i in graph.input if i.name not in inits]
    stage: dict[str, int] = {n: 0 for n in [*graph_inputs, *inits, ""]}
    sites: list[dict[str, Any]] = []
    node_stage: list[int] = []
    for node in graph.node:
        s = max((stage[i] for i in node.input), default=0)
        if node.domain == SITE_DOMAIN:
            k = len(sites)
            if s > k:
                raise UserError("the input-dependent layers of this model do not run one after "
                                "another (one feeds another's router); export it with "
                                "layout 'one-graph'")
            index = next(a.i for a in node.attribute if a.name == "index")
            sites.append({"index": int(index), "tokens": node.input[0],
                          "scores": node.input[1], "output": node.output[0]})
            stage[node.output[0]] = k + 1
            node_stage.append(-1)
            types[node.output[0]] = types[node.input[0]]
            continue
        for o in node.output:
            stage[o] = s
        node_stage.append(s)
    count = len(sites) + 1
    # Who reads each name: the stage of every consumer (sites read at their own stage).
    readers: dict[str, set[int]] = {}
    for node, s in zip(graph.node, node_stage):
        reader = s if s >= 0 else next(
            k for k, site in enumerate(sites) if site["output"] == node.output[0])
        for i in node.input:
            readers.setdefault(i, set()).add(reader)
    outputs = [o.name for o in graph.output]
    for o in outputs:
        readers.setdefault(o, set()).add(count)
    opsets = [o for o in model.opset_import if o.domain != SITE_DOMAIN]
    segments: list[bytes | None] = []
    plan_segments = []
    for s in range(count):
        nodes = [n for n, ns in zip(graph.node, node_stage) if ns == s]
        made = {o for n in nodes for o in n.output}
        used = [i for n in nodes for i in n.input if i]
        ins = list(dict.fromkeys(i for i in used if i not in made and i not in inits))
        outs = [o for n in nodes for o in n.output
                if any(r > s or (r == s and _is_site_input(o, sites, s)) for r in
                       readers.get(o, ()))]
        outs = list(dict.fromkeys(outs))
        plan_segments.append({"inputs": ins, "outputs": outs})
        if not nodes:
            segments.append(None)
            continue
        needed = [inits[i] for i in dict.fromkeys(used) if i in inits]

        def info(name: str) -> Any:
            if name not in types:
                raise UserError(f"cannot split the exported graph: no type for {name!r}")
            return helper.make_value_info(name, types[name])

        sub = helper.make_graph(nodes, f"segment{s}", [info(i) for i in ins],
                                [info(o) for o in outs], initializer=needed)
        segment = helper.make_model(sub, opset_imports=opsets, producer_name="frugalnn")
        segment.ir_version = model.ir_version
        segments.append(segment.SerializeToString())
    plan = {"input": graph_inputs[0], "output": outputs[0], "segments": plan_segments,
            "sites": sites}
    return segments, plan


def _is_site_input(name: str, sites: list[dict[str, Any]], s: int) -> bool:
    return s < len(sites) and name in (sites[s]["tokens"], sites[s]["scores"])


def pack_parts(model_bytes: bytes, bias: torch.Tensor, *, always: int = 0,
               combine: str = "chain") -> bytes:
    """A whole layer around an ONNX graph of parts: gather, parts, scatter in one graph.

    ``model_bytes`` has one input ``x<j>`` and one output ``y<j>`` per part, in
    order. The result takes ``x`` (the layer's tokens ``(N, dim)``), ``tokens``
    (int64, the rows of every chosen part, part-major) and ``counts`` (int64,
    rows per chosen part). The first ``always`` parts run on every row, on ``x``
    itself; each other part gathers its rows, runs on them and adds its output
    to its rows of the sum (``ScatterND`` with ``add``, which may work in place),
    which starts from ``bias`` broadcast to ``(N, out)``: one call per layer,
    whatever the number of parts.

    ``combine``: ``chain`` adds the parts' outputs with one ``ScatterND`` each;
    ``concat`` concatenates them (``tokens`` is already their row order) and adds
    them with one ``ScatterND``. ONNX Runtime copies a ``ScatterND``'s whole
    ``(N, out)`` input to its output on every call, so ``concat`` trades one copy
    of the ``(N, out)`` sum per part for one copy of the gathered rows.
    """
    if combine not in ("chain", "concat"):
        raise ValueError(f"combine is 'chain' or 'concat', not {combine!r}")
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load_from_string(model_bytes)
    graph = model.graph
    xs = [i.name for i in graph.input if i.name.startswith("x")]
    ys = [o.name for o in graph.output]
    first = graph.input[0].type.tensor_type
    elem, dim = first.elem_type, first.shape.dim[1].dim_value
    out_dim = int(bias.numel())
    chosen = len(xs) - always
    graph.initializer.extend(numpy_helper.from_array(a, name) for name, a in [
        ("site_bias", bias.detach().float().cpu().reshape(1, -1).numpy()),
        ("site_out_dim", torch.tensor([out_dim]).numpy()),
        ("site_zero", torch.tensor([0]).numpy()), ("site_one", torch.tensor([1]).numpy())])
    for node in graph.node:  # parts that run on every row read x itself
        for i, name in enumerate(node.input):
            if name in xs[:always]:
                node.input[i] = "x"
    mk = helper.make_node
    before = []
    if chosen:
        toks = [f"site_tok{j}" for j in range(always, len(xs))]
        before.append(mk("Split", ["tokens", "counts"], toks, axis=0) if chosen > 1
                      else mk("Identity", ["tokens"], toks))
        before += [mk("Gather", ["x", t], [x], axis=0) for t, x in zip(toks, xs[always:])]
    if always:
        after = [mk("Add", [ys[0], "site_bias"], ["site_acc0"])]
        after += [mk("Add", [f"site_acc{j - 1}", ys[j]], [f"site_acc{j}"])
                  for j in range(1, always)]
        acc = f"site_acc{always - 1}"
    else:
        after = [
            mk("Shape", ["x"], ["site_shape"]),
            mk("Slice", ["site_shape", "site_zero", "site_one"], ["site_n"]),
            mk("Concat", ["site_n", "site_out_dim"], ["site_out_shape"], axis=0),
            mk("Expand", ["site_bias", "site_out_shape"], ["site_start"]),
        ]
        acc = "site_start"
    if combine == "concat" and chosen:
        after += [
            mk("Unsqueeze", ["tokens", "site_one"], ["site_index"]),
            mk("Concat", ys[always:], ["site_rows"], axis=0) if chosen > 1
            else mk("Identity", ys[always:], ["site_rows"]),
            mk("ScatterND", [acc, "site_index", "site_rows"], ["site_sum"], reduction="add"),
        ]
        acc = "site_sum"
    for j in range(always, len(xs)) if combine == "chain" else ():
        after += [
            mk("Unsqueeze", [f"site_tok{j}", "site_one"], [f"site_index{j}"]),
            mk("ScatterND", [acc, f"site_index{j}", ys[j]], [f"site_sum{j}"], reduction="add"),
        ]
        acc = f"site_sum{j}"
    after.append(mk("Identity", [acc], ["y"]))
    nodes = [*before, *graph.node, *after]
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.input[:]
    graph.input.extend([
        helper.make_tensor_value_info("x", elem, ["tokens_in", dim or None]),
        helper.make_tensor_value_info("tokens", TensorProto.INT64, ["pairs"]),
        helper.make_tensor_value_info("counts", TensorProto.INT64, [chosen])])
    del graph.output[:]
    graph.output.extend([helper.make_tensor_value_info("y", elem, ["tokens_in", out_dim])])
    return model.SerializeToString()


def _mask_rows(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``tokens`` (the rows of every part, part-major) and ``counts`` of a choice mask."""
    return mask.t().nonzero()[:, 1].contiguous(), mask.sum(0)


def run_parts(graph: Callable[..., Any], x: torch.Tensor, mask: torch.Tensor,
              always: int = 0) -> tuple[torch.Tensor, list[int]]:
    """Run a :func:`pack_parts` graph with part ``j`` on the rows ``mask[:, j]`` of ``x``
    (the first ``always`` parts on every row); returns the layer's output and the rows
    each part ran."""
    tokens, counts = _mask_rows(mask[:, always:])
    return graph(x, tokens, counts), [x.shape[0]] * always + counts.tolist()


class SiteLoop(KnobSettings):
    """Runs ``segment<s>`` and ``parts<k>`` graphs: the method decides the rows.

    ``choose(k, scores, value) -> mask`` gives, for site ``k`` (in execution
    order) at knob ``value``, which part runs on which row (``(N, parts)``
    booleans). On ONNX Runtime the tensors that only pass from one graph to the
    next (states, tokens, layer outputs) stay ONNX Runtime values: only the
    scores come back to Python, and nothing large is copied between sessions.
    ``last_rows[k]``: the rows each part of site ``k`` ran in the last call.
    """

    def __init__(self, manifest: dict[str, Any], graphs: dict[str, Any],
                 choose: Callable[[int, torch.Tensor, float], torch.Tensor]) -> None:
        from frugalnn.runtime.graphs import OrtGraph

        super().__init__(manifest["loop"])
        self.plan = manifest["loop"]["plan"]
        self.segments = [graphs.get(f"segment{s}") for s in range(len(self.plan["segments"]))]
        self.parts = [graphs[f"parts{k}"] for k in range(len(self.plan["sites"]))]
        self.choose = choose
        #: Leading parts that run on every row (not gathered, not chosen).
        self.always = int(manifest["loop"].get("always_parts", 0))
        self.last_rows: list[list[int]] = [[] for _ in self.parts]
        every = [g for g in [*self.segments, *self.parts] if g is not None]
        self._ort = all(isinstance(g, OrtGraph) and g.device == "cpu" for g in every)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self._call_ort(x) if self._ort else self._call_torch(x)

    def _call_torch(self, x: torch.Tensor) -> torch.Tensor:
        env: dict[str, Any] = {self.plan["input"]: x}
        sites = self.plan["sites"]
        for s, (graph, part) in enumerate(zip(self.segments, self.plan["segments"])):
            if graph is not None:
                outs = graph(*[env[n] for n in part["inputs"]])
                outs = outs if isinstance(outs, tuple) else (outs,)
                env.update(zip(part["outputs"], outs))
            if s < len(sites):
                site = sites[s]
                mask = self.choose(s, env[site["scores"]], self.value)
                env[site["output"]], self.last_rows[s] = run_parts(
                    self.parts[s], env[site["tokens"]], mask, self.always)
        return env[self.plan["output"]]

    def _call_ort(self, x: torch.Tensor) -> torch.Tensor:
        from onnxruntime import OrtValue

        def value(t: torch.Tensor) -> Any:
            return OrtValue.ortvalue_from_numpy(t.detach().contiguous().numpy())

        env: dict[str, Any] = {self.plan["input"]: value(x)}
        sites = self.plan["sites"]
        for s, (graph, part) in enumerate(zip(self.segments, self.plan["segments"])):
            if graph is not None:
                outs = graph.run_values({n: env[n] for n in part["inputs"]})
                env.update(zip(part["outputs"], outs))
            if s < len(sites):
                site = sites[s]
                scores = torch.from_numpy(env[site["scores"]].numpy())
                mask = self.choose(s, scores, self.value)
                tokens, counts = _mask_rows(mask[:, self.always:])
                self.last_rows[s] = [len(mask)] * self.always + counts.tolist()
                env[site["output"]] = self.parts[s].run_values(
                    {"x": env[site["tokens"]], "tokens": value(tokens),
                     "counts": value(counts)})[0]
        return torch.from_numpy(env[self.plan["output"]].numpy())
