"""Costs labelled by precision: parameters, bytes and FLOPs of fp32, int8 and binary work.

A quantised model hides its weights from ``model.parameters()`` (PyTorch's
int8 modules keep them packed) and runs ops that
:class:`~torch.utils.flop_counter.FlopCounterMode` does not know
(``quantized::conv2d``, ``quantized::linear_dynamic``, ...). This module
supplies what :func:`frugalnn.cost.count.measure` needs to count them:

* :func:`params_by_precision`: parameters per storage precision; int8 weights
  of quantised modules included (``weight()`` of ``torch.ao.nn.quantized``
  modules, the packed weights of dynamic int8 ``LSTM`` / ``GRU`` / cells,
  ``int8`` / ``uint8`` buffers such as 8-bit embedding rows), their float
  biases as ``fp32``;
* :func:`model_bytes`: bytes of every tensor of the state dict (what a
  checkpoint stores): 1 byte per int8 weight plus its scales and zero points;
* :func:`op_flops`: FLOPs of one dispatched op that the FLOP counter misses
  (quantised linear/conv, ``quantized_lstm`` / ``quantized_gru`` and the
  dynamic cells, weight-only ``_weight_int8pack_mm``), with its precision label.

Precision labels: ``fp32`` / ``fp16`` / ``bf16`` (float arithmetic),
``int8`` (int8 x int8 products: dynamic and static quantisation), ``w8a32``
(int8 weights times float activations: weight-only quantisation), ``binary``
(XNOR/popcount products). A method package adds its own ops with
:func:`register_precision_op`, and a module that stores weights in a format
of its own reports them through a ``precision_params()`` method returning
``{label: count}``.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

__all__ = [
    "INT_DTYPES",
    "model_bytes",
    "op_flops",
    "params_by_precision",
    "precision_of",
    "register_precision_op",
]

INT_DTYPES = (torch.int8, torch.uint8, torch.qint8, torch.quint8)
_FLOAT_LABELS = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16",
                 torch.float64: "fp64"}

#: op name (``str(func.overloadpacket)``) -> (flops(args, out), precision label).
FlopFn = Callable[[tuple[Any, ...], Any], int]
_OPS: dict[str, tuple[FlopFn, str]] = {}


def register_precision_op(name: str, flops: FlopFn, precision: str) -> None:
    """Count op ``name`` (e.g. ``"quantized.linear_dynamic"``) as ``flops(args, out)`` FLOPs
    of ``precision``; ``flops`` sees the op's positional arguments and its output."""
    _OPS[name] = (flops, precision)


def precision_of(dtype: torch.dtype) -> str:
    """The label of a tensor dtype (``fp32``, ``int8``, ...)."""
    if dtype in INT_DTYPES:
        return "int8"
    if dtype == torch.qint32 or dtype == torch.int32:
        return "int32"
    return _FLOAT_LABELS.get(dtype, str(dtype).removeprefix("torch."))


def _unpack(packed: Any) -> torch.Tensor:
    return packed.unpack()[0]


def _linear_flops(args: tuple[Any, ...], out: Any) -> int:
    x, w = args[0], _unpack(args[1])
    return 2 * (x.numel() // x.shape[-1]) * w.shape[0] * w.shape[1]


def _conv_flops(args: tuple[Any, ...], out: Any) -> int:
    w = _unpack(args[1])
    return 2 * out.numel() * w.shape[1] * math.prod(w.shape[2:])


def _int8pack_flops(args: tuple[Any, ...], out: Any) -> int:
    x, w = args[0], args[1]
    return 2 * (x.numel() // x.shape[-1]) * w.shape[0] * w.shape[1]


for _name in ("linear", "linear_relu", "linear_dynamic", "linear_relu_dynamic",
              "linear_dynamic_fp16"):
    register_precision_op(f"quantized.{_name}", _linear_flops,
                          "fp16" if _name.endswith("fp16") else "int8")
for _name in ("conv1d", "conv2d", "conv3d", "conv1d_relu", "conv2d_relu", "conv3d_relu",
              "conv2d_add", "conv2d_add_relu", "conv_transpose1d", "conv_transpose2d"):
    register_precision_op(f"quantized.{_name}", _conv_flops, "int8")
register_precision_op("aten._weight_int8pack_mm", _int8pack_flops, "w8a32")


def _quantized_rnn_flops(gates: int) -> FlopFn:
    """Dynamic int8 LSTM (4 gates) / GRU (3 gates): both gate products of every layer and
    direction at every step, from the shapes (the packed weights are opaque)."""

    def flops(args: tuple[Any, ...], out: Any) -> int:
        x = args[0]
        packed = isinstance(args[1], torch.Tensor) and args[1].dim() == 1  # .data overload
        hx = args[2] if packed else args[1]
        num_layers, bidirectional = (args[5], args[8]) if packed else (args[4], args[7])
        hidden = (hx[0] if isinstance(hx, (list, tuple)) else hx).shape[-1]
        directions = 2 if bidirectional else 1
        steps = x.numel() // x.shape[-1]
        inputs = x.shape[-1] + (num_layers - 1) * directions * hidden
        return 2 * steps * directions * gates * hidden * (inputs + num_layers * hidden)

    return flops


def _quantized_cell_flops(args: tuple[Any, ...], out: Any) -> int:
    x, w_ih, w_hh = args[0], _unpack(args[2]), _unpack(args[3])
    return 2 * (x.numel() // x.shape[-1]) * (w_ih.numel() + w_hh.numel())


register_precision_op("aten.quantized_lstm", _quantized_rnn_flops(4), "int8")
register_precision_op("aten.quantized_gru", _quantized_rnn_flops(3), "int8")
for _name in ("quantized_lstm_cell_dynamic", "quantized_gru_cell_dynamic",
              "quantized_rnn_tanh_cell_dynamic", "quantized_rnn_relu_cell_dynamic"):
    register_precision_op(f"quantized.{_name}", _quantized_cell_flops, "int8")


def op_flops(func: Any, args: tuple[Any, ...], out: Any,
             kwargs: dict[str, Any] | None = None) -> tuple[int, str] | None:
    """``(flops, precision)`` of a dispatched op this module counts, else ``None``
    (an op run with ``dtype=torch.float16``, as fp16 dynamic RNNs are, is labelled fp16)."""
    entry = _OPS.get(str(func.overloadpacket))
    if entry is None:
        return None
    flops, precision = entry
    if (kwargs or {}).get("dtype") == torch.float16:
        precision = "fp16"
    return int(flops(args, out)), precision


def float_precision(args: tuple[Any, ...]) -> str:
    """The label of the first tensor argument of a float op (``fp32`` if none)."""
    for a in args:
        if isinstance(a, torch.Tensor):
            return precision_of(a.dtype)
    return "fp32"


def _is_quantized_module(module: nn.Module) -> bool:
    path = type(module).__module__
    return path.startswith("torch.ao.nn.") and ".quantized" in path and callable(
        getattr(module, "weight", None))


def _is_quantized_rnn(module: nn.Module) -> bool:
    path = type(module).__module__
    return (path.startswith("torch.ao.nn.quantized.dynamic") and path.endswith(".rnn")
            and callable(getattr(module, "_weight_bias", None)))


def params_by_precision(model: nn.Module) -> dict[str, int]:
    """Parameter counts per storage precision, quantised weights included; a tensor
    shared by several modules (tied input and output embeddings) counts once."""
    counts: dict[str, int] = defaultdict(int)
    seen: set[int] = set()
    for module in model.modules():
        own = getattr(module, "precision_params", None)
        if callable(own):
            for label, n in own().items():
                counts[label] += int(n)
            continue
        for p in module.parameters(recurse=False):
            if id(p) not in seen:
                seen.add(id(p))
                counts[precision_of(p.dtype)] += p.numel()
        for b in module.buffers(recurse=False):  # int8 values stored as buffers are weights
            if b.dtype in INT_DTYPES and id(b) not in seen:
                seen.add(id(b))
                counts["int8"] += b.numel()
        if _is_quantized_rnn(module):  # dynamic int8 LSTM/GRU/cells: packed weights
            own = {id(p) for p in module.parameters(recurse=False)}
            for group in module._weight_bias().values():
                for t in group.values():
                    if isinstance(t, torch.Tensor) and id(t) not in own:
                        counts[precision_of(t.dtype)] += t.numel()
        elif _is_quantized_module(module):
            w = module.weight()
            counts[precision_of(w.dtype)] += w.numel()
            b = module.bias() if callable(getattr(module, "bias", None)) else None
            if isinstance(b, torch.Tensor):
                counts[precision_of(b.dtype)] += b.numel()
    return dict(counts)


def _tensor_bytes(t: torch.Tensor) -> int:
    n = t.numel() * t.element_size()
    if t.is_quantized:
        if t.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric,
                           torch.per_channel_affine_float_qparams):
            n += t.q_per_channel_scales().numel() * 16  # float64 scale + int64 zero point
        else:
            n += 16
    return n


def _value_bytes(value: Any) -> int:
    if isinstance(value, torch.Tensor):
        return _tensor_bytes(value)
    if isinstance(value, (tuple, list)):
        return sum(_value_bytes(v) for v in value)
    return 0


def model_bytes(model: nn.Module) -> int:
    """Bytes of every tensor in ``model.state_dict()`` (the weights a checkpoint stores):
    parameters and buffers at their storage width, quantised weights at one byte per
    value plus their scales and zero points. A tensor stored under several names (tied
    weights) counts once."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for value in model.state_dict().values():
        if isinstance(value, torch.Tensor) and not value.is_quantized and value.numel():
            key = (value.untyped_storage().data_ptr(), value.storage_offset())
            if key in seen:
                continue
            seen.add(key)
        total += _value_bytes(value)
    return total
