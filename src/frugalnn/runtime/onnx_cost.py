"""Static cost of an exported ONNX graph: parameters, MACs/FLOPs, activations.

An exported model has no PyTorch modules to dispatch, so its cost is read from
the graph: ONNX shape inference (with the batch and any other symbolic input
dimension fixed) gives every tensor's shape, and each multiply-add node is
counted with the conventions of :mod:`frugalnn.cost.count` (one multiply-add =
2 FLOPs, biases not counted):

* ``MatMul``, ``MatMulInteger``, ``QLinearMatMul``, ``Gemm``:
  ``2 * prod(output shape) * K`` (K: the reduced dimension);
* ``Conv``, ``ConvInteger``, ``QLinearConv``:
  ``2 * prod(output shape) * (C_in / groups) * prod(kernel)``;
* ``ConvTranspose``: ``2 * N * prod(input spatial) * C_in * (C_out / groups) * prod(kernel)``;
* ``Einsum`` (two operands): ``2 * prod(size of every index)``;
* ``LSTM``, ``GRU``, ``RNN``: ``2 * steps * batch * (numel(W) + numel(R))``;
* ``Attention`` (opset 23, 4-D inputs): ``2*B*H*Tq*Tk*(d + d_v)``.

Integer nodes (``*Integer``, ``QLinear*``) and QDQ nodes (input and weight
both from ``DequantizeLinear``) are labelled ``int8``, the others by their
input's element type. Parameters are the graph's initializers of float
or 8-bit type with at least one dimension (scalars such as scales, zero points
and constants, and int64 shape tensors, are not weights). Every other node
type is either known to do no multiply-adds (elementwise, normalisation,
reshaping, ...) or reported in ``unknown_ops`` with a warning, like the eager
counter. Needs the ``onnx`` package (the ``onnx`` extra).
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from frugalnn.cost.count import CostReport, ModuleCost, warn_unknown_ops
from frugalnn.errors import UserError
from frugalnn.runtime.deps import require

__all__ = ["example_feeds", "first_input", "graph_inputs", "is_graph_path", "measure_onnx"]

# ONNX TensorProto element types -> (precision label, bytes per element)
_DTYPES = {1: ("fp32", 4), 2: ("int8", 1), 3: ("int8", 1), 6: ("int32", 4), 7: ("int64", 8),
           9: ("bool", 1), 10: ("fp16", 2), 11: ("fp64", 8), 16: ("bf16", 2)}
_WEIGHT_TYPES = {"fp32", "int8", "fp16", "fp64", "bf16"}

#: Node types that move data or do arithmetic that is not a multiply-add (not counted).
_CHEAP = frozenset(
    """
    Abs Add And ArgMax ArgMin AveragePool BatchNormalization BitShift Cast CastLike Ceil Clip
    Concat Constant ConstantOfShape Cos CumSum DepthToSpace DequantizeLinear Div Dropout
    DynamicQuantizeLinear Elu Equal Erf Exp Expand EyeLike Flatten Floor Gather GatherElements
    GatherND Gelu GlobalAveragePool GlobalMaxPool Greater GreaterOrEqual GroupNormalization
    HardSigmoid HardSwish Hardmax Identity InstanceNormalization IsInf IsNaN LRN
    LayerNormalization LeakyRelu Less LessOrEqual Log LogSoftmax MaxPool Max Mean Min Mish
    Mod Mul Neg NonZero Not OneHot Or PRelu Pad Pow QuantizeLinear Range Reciprocal ReduceL1
    ReduceL2 ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum
    ReduceSumSquare Relu Reshape Resize RMSNormalization Round ScatterElements ScatterND Selu
    Shape Shrink Sigmoid Sign Sin Size Slice Softmax Softplus Softsign SpaceToDepth Split
    Sqrt Squeeze Sub Sum Tanh ThresholdedRelu Tile TopK Transpose Trilu Unsqueeze Upsample
    Where Xor Sinh Cosh Tan Asin Acos Atan Asinh Acosh Atanh IsInf Col2Im GridSample Swish
    """.split()  # noqa: SIM905 - one word per node type, easier to scan
)


def _shapes(graph: Any) -> dict[str, tuple[list[int] | None, int]]:
    """name -> (shape or None where not fully known, element type) of every typed value."""
    out: dict[str, tuple[list[int] | None, int]] = {}
    for info in [*graph.input, *graph.value_info, *graph.output]:
        t = info.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
        out[info.name] = (None if any(d is None for d in dims) else dims, t.elem_type)
    for init in graph.initializer:
        out[init.name] = (list(init.dims), init.data_type)
    return out


def _fix_inputs(model: Any, batch_size: int, input_shapes: Mapping[str, Sequence[int]]) -> None:
    """Give every graph input a concrete shape: ``input_shapes[name]`` (without the batch)
    where given, else the batch for a symbolic first dimension."""
    inputs = [i for i in model.graph.input
              if i.name not in {init.name for init in model.graph.initializer}]
    # A named symbolic dimension (``sequence``) shared by several inputs takes the size
    # one given shape sets for it: one --input-shape serves input_ids and attention_mask.
    named: dict[str, int] = {}
    for info in inputs:
        given = input_shapes.get(info.name)
        if given is not None:
            dims = info.type.tensor_type.shape.dim
            if len(given) + 1 != len(dims):
                raise UserError(f"input {info.name} has {len(dims)} dimensions; "
                                f"--input-shape gave {len(given)} (without the batch)")
            for d, value in zip(list(dims)[1:], given):
                if d.dim_param:
                    named.setdefault(d.dim_param, int(value))
    for info in inputs:
        dims = info.type.tensor_type.shape.dim
        given = input_shapes.get(info.name)
        if given is not None:
            for d, value in zip(dims, [batch_size, *given]):
                d.dim_value = int(value)
            continue
        for i, d in enumerate(dims):
            if not d.HasField("dim_value"):
                if i and d.dim_param not in named:
                    raise UserError(
                        f"input {info.name} has a symbolic dimension {d.dim_param or i!s}; "
                        "give one example's shape with --input-shape (input_shapes=...)")
                d.dim_value = named[d.dim_param] if i else batch_size


def _attr(node: Any, name: str, default: Any) -> Any:
    for a in node.attribute:
        if a.name == name:
            return a.i if a.type == a.INT else list(a.ints) if a.ints else a.s.decode()
    return default


def _matmul(a: list[int], out: list[int]) -> int:
    return 2 * math.prod(out) * a[-1]


def _conv(w: list[int], out: list[int]) -> int:
    return 2 * math.prod(out) * math.prod(w[1:])


def _node_flops(node: Any, shape: Any) -> int | None:
    """FLOPs of one multiply-add node, ``None`` when its shapes are unknown; raises
    KeyError for a node type that is not a multiply-add node."""
    op, ins, outs = node.op_type, list(node.input), list(node.output)
    out = shape(outs[0]) if outs else None
    if op in ("MatMul", "MatMulInteger"):
        a = shape(ins[0])
        return None if a is None or out is None else _matmul(a, out)
    if op == "QLinearMatMul":
        a = shape(ins[0])
        return None if a is None or out is None else _matmul(a, out)
    if op == "Gemm":
        a = shape(ins[0])
        if a is None or out is None:
            return None
        return 2 * math.prod(out) * (a[0] if _attr(node, "transA", 0) else a[1])
    if op in ("Conv", "ConvInteger", "QLinearConv"):
        w = shape(ins[3] if op == "QLinearConv" else ins[1])
        return None if w is None or out is None else _conv(w, out)
    if op == "ConvTranspose":
        x, w = shape(ins[0]), shape(ins[1])
        return None if x is None or w is None else 2 * x[0] * math.prod(x[2:]) * math.prod(w)
    if op in ("LSTM", "GRU", "RNN"):
        x, w, r = shape(ins[0]), shape(ins[1]), shape(ins[2])
        if x is None or w is None or r is None:
            return None
        return 2 * x[0] * x[1] * (math.prod(w) + math.prod(r))
    if op == "Einsum":
        return _einsum(node, [shape(i) for i in ins])
    if op == "Attention":
        q, k, v = (shape(i) for i in ins[:3])
        if q is None or k is None or v is None or len(q) != 4:
            return None  # 3-D packed heads: sizes per head are not in the shapes
        return 2 * q[0] * q[1] * q[2] * k[2] * (q[3] + v[3])
    raise KeyError(op)


def _einsum(node: Any, shapes: list[list[int] | None]) -> int | None:
    equation = str(_attr(node, "equation", "")).replace(" ", "")
    lhs = equation.split("->")[0].split(",")
    if len(lhs) != 2 or any(s is None for s in shapes) or "." in equation:
        return None
    sizes: dict[str, int] = {}
    for letters, dims in zip(lhs, shapes):
        for letter, size in zip(letters, dims):  # type: ignore[arg-type]
            sizes[letter] = max(sizes.get(letter, 1), size)
    return 2 * math.prod(sizes.values())


def _precision(node: Any, shapes: Mapping[str, tuple[Any, int]],
               dequantized: frozenset[str] = frozenset()) -> str:
    if node.op_type.endswith("Integer") or node.op_type.startswith("QLinear"):
        return "int8"
    # QDQ form: a float node whose input and weight both come out of DequantizeLinear is
    # run by ONNX Runtime as one int8 kernel (QLinearConv, QLinearMatMul, ...).
    if len(node.input) >= 2 and node.input[0] in dequantized and node.input[1] in dequantized:
        return "int8"
    elem = shapes.get(node.input[0], (None, 1))[1] if node.input else 1
    return _DTYPES.get(elem, ("fp32", 4))[0]


def _scope(name: str) -> str:
    """``/layer1/layer1.0/conv1/Conv`` -> ``layer1`` (the top-level module of a node)."""
    parts = [p for p in name.split("/") if p]
    return parts[0] if len(parts) > 1 else ""


def _run_shapes(model: Any) -> dict[str, tuple[list[int] | None, int]]:
    """Shapes of every node output from one ONNX Runtime run on zeros (exact where static
    inference gives up, e.g. after ``Shape``-computed slices); ``{}`` without onnxruntime."""
    from frugalnn.runtime.deps import available

    if not available("onnxruntime"):
        return {}
    import numpy as np
    import onnx
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    have = {o.name for o in probe.graph.output}
    for node in probe.graph.node:
        for out in node.output:
            if out and out not in have:
                probe.graph.output.append(onnx.helper.make_empty_tensor_value_info(out))
                have.add(out)
    initializers = {i.name for i in probe.graph.initializer}
    feeds = {}
    for info in probe.graph.input:
        if info.name not in initializers:
            t = info.type.tensor_type
            dtype = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type)
            feeds[info.name] = np.zeros([d.dim_value for d in t.shape.dim], dtype=dtype)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        session = ort.InferenceSession(probe.SerializeToString(), options,
                                       providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        values = session.run(names, feeds)
    except Exception:  # noqa: BLE001 - fall back to static shape inference
        return {}
    elem = {np.dtype(onnx.helper.tensor_dtype_to_np_dtype(k)): k for k in _DTYPES}
    return {n: (list(v.shape), elem.get(v.dtype, 1)) for n, v in zip(names, values)
            if isinstance(v, np.ndarray)}


def _graph_cost(model: Any) -> dict[str, Any]:
    onnx = require("onnx", "counting the cost of an ONNX graph")
    inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    graph = inferred.graph
    shapes = _shapes(graph)
    if any(dims is None for dims, _ in shapes.values()) or len(shapes) < len(graph.node):
        shapes.update(_run_shapes(model))

    def shape(name: str) -> list[int] | None:
        return shapes.get(name, (None, 0))[0]

    flops = 0
    by_op: dict[str, int] = defaultdict(int)
    by_precision: dict[str, int] = defaultdict(int)
    by_scope: dict[str, int] = defaultdict(int)
    unknown: dict[str, int] = defaultdict(int)
    uncounted: dict[str, int] = defaultdict(int)
    activations = 0
    dequantized = frozenset(o for n in graph.node if n.op_type == "DequantizeLinear"
                            for o in n.output)
    for node in graph.node:
        try:
            n = _node_flops(node, shape)
        except KeyError:
            (uncounted if node.op_type in _CHEAP else unknown)[node.op_type] += 1
            n = 0
        if n is None:  # a multiply-add node whose shapes inference could not give
            unknown[f"{node.op_type} (shape unknown)"] += 1
            n = 0
        flops += n
        if n:
            by_op[node.op_type] += n
            by_precision[_precision(node, shapes, dequantized)] += n
            by_scope[_scope(node.name)] += n
        for out in node.output:
            dims, elem = shapes.get(out, (None, 0))
            if dims is not None and node.op_type not in ("Constant", "Shape"):
                activations += math.prod(dims) * _DTYPES.get(elem, ("", 4))[1]
    params: dict[str, int] = defaultdict(int)
    params_by_scope: dict[str, int] = defaultdict(int)
    for init in graph.initializer:
        label = _DTYPES.get(init.data_type, ("other", 0))[0]
        if label in _WEIGHT_TYPES and len(init.dims) >= 1:
            params[label] += math.prod(init.dims)
            params_by_scope[init.name.split(".")[0] if "." in init.name else ""] += math.prod(
                init.dims)
    return {"flops": flops, "by_op": dict(by_op), "by_precision": dict(by_precision),
            "by_scope": dict(by_scope), "unknown": dict(unknown), "uncounted": dict(uncounted),
            "activations": activations, "params": dict(params),
            "params_by_scope": dict(params_by_scope)}


def _graph_files(path: Path) -> tuple[dict[str, Path], int]:
    """The ONNX graphs of a file or a frugalnn export directory, and their size in bytes."""
    if path.is_dir():
        from frugalnn.runtime.package import read_manifest

        manifest = read_manifest(path)
        if manifest.get("format") != "onnx":
            raise UserError(f"{path} is a {manifest.get('format')} export; counting its cost "
                            "needs an ONNX export (frugalnn export --format onnx)")
        files = {name: path / file for name, file in manifest["graphs"].items()}
    elif path.suffix == ".onnx" and path.is_file():
        files = {"": path}
    else:
        raise UserError(f"{path} is neither an .onnx file nor a frugalnn export directory")
    return files, sum(os.path.getsize(f) for f in files.values())


def is_graph_path(text: str | os.PathLike) -> bool:
    """Whether ``text`` names an ``.onnx`` file or a frugalnn export directory."""
    path = Path(text)
    return (path.suffix == ".onnx" and path.is_file()) or (path / "manifest.json").is_file()


def _raw_inputs(path: str | os.PathLike) -> list[tuple[str, list[int | str], str]]:
    """Name, dims (a size, or the name of a symbolic dimension, ``""`` if unnamed) and
    dtype of every input of an ONNX file or of an export directory's first graph."""
    onnx = require("onnx", "reading an ONNX graph")
    files, _ = _graph_files(Path(path))
    graph = onnx.load(str(next(iter(files.values())))).graph
    initializers = {i.name for i in graph.initializer}
    out = []
    for info in graph.input:
        if info.name in initializers:
            continue
        t = info.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in t.shape.dim]
        out.append((info.name, dims, "long" if t.elem_type in (6, 7) else "float"))
    return out


def graph_inputs(path: str | os.PathLike) -> list[tuple[str, list[int | None], str]]:
    """Name, shape and dtype (``"float"`` or ``"long"``) of every input of an ONNX file or
    of an export directory's first graph. A symbolic dimension is ``None``, except in an
    export directory, whose manifest records the size of the example it was exported on.
    """
    recorded = _recorded_shapes(Path(path))
    out = []
    for name, raw, dtype in _raw_inputs(path):
        dims = [d if isinstance(d, int) else None for d in raw]
        example = recorded.get(name)
        if example is not None and len(example) + 1 == len(dims):
            dims = [dims[0], *(d if d is not None else int(e)
                               for d, e in zip(dims[1:], example))]
        out.append((name, dims, dtype))
    return out


def _recorded_shapes(path: Path) -> dict[str, list[int]]:
    """Per graph input, the example shape an export directory's manifest records."""
    if not path.is_dir():
        return {}
    from frugalnn.runtime.package import read_manifest

    return {str(i["name"]): list(i["example_shape"])
            for i in read_manifest(path).get("inputs") or [] if "example_shape" in i}


def first_input(path: str | os.PathLike) -> tuple[str, list[int | None], str]:
    """Name, shape (``None`` for a symbolic dimension) and dtype (``"float"`` or ``"long"``)
    of the first input of an ONNX file or export directory's first graph."""
    return graph_inputs(path)[0]


def example_feeds(path: str | os.PathLike, batch_size: int,
                  input_shapes: Mapping[str, Sequence[int]] | None = None,
                  device: str = "cpu") -> Any:
    """A batch for every input of a graph (:func:`frugalnn.cost.profile.example_input`
    values): a tensor for a graph of one input, else a dict fed by input name. Shapes:
    ``input_shapes`` (one example's, by name); a named symbolic dimension (``sequence``)
    takes the size a given input sets for it, else the size an export directory's
    manifest records."""
    from frugalnn.cost.profile import example_input

    given = dict(input_shapes or {})
    raw = _raw_inputs(path)
    named: dict[str, int] = {}
    for name, dims, _ in raw:
        for d, value in zip(dims[1:], given.get(name, ())):
            if isinstance(d, str) and d:
                named.setdefault(d, int(value))
    recorded = {name: dims for name, dims, _ in graph_inputs(path)}
    feeds = {}
    for name, dims, dtype in raw:
        shape = given.get(name)
        if shape is None:
            shape = [d if isinstance(d, int) else named.get(d, recorded[name][i + 1])
                     for i, d in enumerate(dims[1:])]
            if any(d is None for d in shape):
                raise UserError(f"input {name} of {path} has symbolic dimensions; give one "
                                "example's shape with --input-shape")
        feeds[name] = example_input(tuple(int(d) for d in shape), batch_size, dtype, device)
    return next(iter(feeds.values())) if len(feeds) == 1 else feeds


def measure_onnx(path: str | os.PathLike, batch_size: int = 1, *,
                 input_shapes: Mapping[str, Sequence[int]] | None = None) -> CostReport:
    """Parameters, FLOPs and activation bytes of an ONNX graph for one ``batch_size`` batch.

    ``path`` is an ``.onnx`` file or a frugalnn export directory (``manifest.json``;
    an input-dependent export's graphs are each counted once, so the total is the
    cost of running every segment, head and expert once: the full-budget path).
    ``input_shapes`` maps input names to one example's shape (without the batch) for
    inputs with symbolic dimensions beyond the batch. Rows: per graph of an export
    directory, else per top-level module scope recorded in the node names.
    """
    onnx = require("onnx", "counting the cost of an ONNX graph")
    if batch_size < 1:
        raise UserError(f"batch size must be positive, got {batch_size}")
    files, size = _graph_files(Path(path))
    total: dict[str, Any] = defaultdict(int)
    merged: dict[str, dict[str, int]] = {k: defaultdict(int) for k in (
        "by_op", "by_precision", "unknown", "uncounted", "params")}
    rows: list[ModuleCost] = []
    first_shape: list[int] = []
    for name, file in files.items():
        try:
            model = onnx.load(str(file))
        except Exception as exc:  # noqa: BLE001 - protobuf raises several types
            raise UserError(f"{file} is not a readable ONNX model ({exc})") from None
        _fix_inputs(model, batch_size, input_shapes or {})
        if not first_shape and model.graph.input:
            dims = model.graph.input[0].type.tensor_type.shape.dim
            first_shape = [d.dim_value for d in dims]
        cost = _graph_cost(model)
        total["flops"] += cost["flops"]
        total["activations"] += cost["activations"]
        for key in merged:
            for k, v in cost[key].items():
                merged[key][k] += v
        if len(files) > 1:
            rows.append(ModuleCost(name, "onnx graph", 1, sum(cost["params"].values()),
                                   cost["flops"], cost["activations"]))
        else:
            scopes = sorted(set(cost["by_scope"]) | set(cost["params_by_scope"]))
            rows += [ModuleCost(s, "onnx scope", 1, cost["params_by_scope"].get(s, 0),
                                cost["by_scope"].get(s, 0), 0) for s in scopes if s]
    params = sum(merged["params"].values())
    root = ModuleCost("", "onnx graph", 0, params, total["flops"], total["activations"])
    unknown = dict(sorted(merged["unknown"].items()))
    warn_unknown_ops(unknown)
    return CostReport(
        params=params, trainable_params=0, flops=int(total["flops"]),
        activation_bytes=int(total["activations"]), batch_size=batch_size,
        input_shape=first_shape, per_module=[root, *rows],
        uncounted=dict(sorted(merged["uncounted"].items())),
        flops_by_op=dict(merged["by_op"]),
        flops_by_precision={k: v for k, v in sorted(merged["by_precision"].items()) if v},
        params_by_precision=dict(sorted(merged["params"].items())),
        model_bytes=size, unknown_ops=unknown,
    )
