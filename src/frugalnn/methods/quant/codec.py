"""Quantised state dicts as plain tensors, so that safetensors can store them.

PyTorch's int8 modules keep their weights as *quantised tensors* (``qint8``
with per-channel scales) or as packed ``(weight, bias)`` tuples, and write a
``torch.dtype`` beside them; safetensors stores plain tensors only. The two
hooks here, registered on the root of a quantised model by
:func:`install_codec`, translate in both directions:

* a quantised tensor ``k`` becomes ``k.__qint`` (its integer values, ``int8``
  / ``uint8`` / ``int32``), ``k.__qscale``, ``k.__qzero`` (per tensor or per
  channel), ``k.__qaxis`` (``-1`` per tensor) and ``k.__qdtype`` (a code);
* a tuple ``k`` becomes ``k.__tuple`` (its length) and ``k.__item<i>`` per item
  (``None`` items are simply absent);
* a ``torch.dtype`` ``k`` becomes ``k.__dtype`` (a code), ``None`` (a missing
  bias) ``k.__none``.

Loading reverses it before the modules read their keys, so a checkpoint of a
quantised model saves and loads through :mod:`frugalnn.train.checkpoint` like
any other and reproduces its outputs exactly.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["decode_state", "encode_state", "install_codec"]

_QDTYPES = (torch.qint8, torch.quint8, torch.qint32)
_DTYPES = (torch.qint8, torch.quint8, torch.qint32, torch.float16, torch.float32, torch.int8,
           torch.uint8, torch.bfloat16)
_INT_OF = {torch.qint8: torch.int8, torch.quint8: torch.uint8, torch.qint32: torch.int32}
_MARK = ".__"


def _encode_tensor(key: str, t: torch.Tensor, out: dict[str, Any]) -> None:
    if not t.is_quantized:
        out[key] = t
        return
    out[f"{key}.__qint"] = t.int_repr().contiguous()
    if t.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric,
                       torch.per_channel_affine_float_qparams):
        out[f"{key}.__qscale"] = t.q_per_channel_scales().contiguous()
        out[f"{key}.__qzero"] = t.q_per_channel_zero_points().contiguous()
        out[f"{key}.__qaxis"] = torch.tensor(t.q_per_channel_axis())
    else:
        out[f"{key}.__qscale"] = torch.tensor(t.q_scale(), dtype=torch.float64)
        out[f"{key}.__qzero"] = torch.tensor(t.q_zero_point())
        out[f"{key}.__qaxis"] = torch.tensor(-1)
    out[f"{key}.__qdtype"] = torch.tensor(_QDTYPES.index(t.dtype))


def _decode_tensor(key: str, state: dict[str, Any]) -> torch.Tensor:
    values = state.pop(f"{key}.__qint")
    scale = state.pop(f"{key}.__qscale")
    zero = state.pop(f"{key}.__qzero")
    axis = int(state.pop(f"{key}.__qaxis"))
    dtype = _QDTYPES[int(state.pop(f"{key}.__qdtype"))]
    values = values.to(_INT_OF[dtype])
    if axis < 0:
        return torch._make_per_tensor_quantized_tensor(values, float(scale), int(zero))
    return torch._make_per_channel_quantized_tensor(values, scale.double(), zero.long(), axis)


def encode_state(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    """``state`` with quantised tensors, tuples and dtypes spelled as plain tensors."""
    out: dict[str, Any] = {}
    for key, value in state.items():
        if isinstance(value, torch.Tensor):
            _encode_tensor(key, value, out)
        elif isinstance(value, tuple):
            out[f"{key}.__tuple"] = torch.tensor(len(value))
            for i, item in enumerate(value):
                if item is not None:
                    _encode_tensor(f"{key}.__item{i}", item, out)
        elif isinstance(value, torch.dtype):
            out[f"{key}.__dtype"] = torch.tensor(_DTYPES.index(value))
        elif value is None:  # a quantised conv without bias
            out[f"{key}.__none"] = torch.tensor(0)
        else:
            out[key] = value
    return out


def _decode_one(key: str, state: dict[str, Any]) -> Any:
    if f"{key}.__qint" in state:
        return _decode_tensor(key, state)
    return state.pop(key, None)


_PACKED = "._packed_params._packed_params"


def _unversioned_layout(state: dict[str, Any]) -> None:
    """Packed Linear weights in the layout PyTorch's int8 Linear reads when the state dict
    carries no version metadata (as one read from a safetensors file): ``P.weight`` and
    ``P.bias`` beside the module, the dtype implied (qint8)."""
    for key in [k for k in state if k.endswith(_PACKED) and isinstance(state[k], tuple)]:
        base = key.removesuffix(_PACKED)
        weight, bias = state.pop(key)
        state.pop(f"{base}._packed_params.dtype", None)
        state[f"{base}.weight"] = weight
        state[f"{base}.bias"] = bias


def decode_state(state: dict[str, Any]) -> None:
    """Reverse :func:`encode_state` in place (keys without the markers are left alone).

    Without ``state._metadata`` (module versions), packed Linear weights are put in
    the layout that unversioned loading expects."""
    for key in [k for k in state if _MARK in k]:
        if key not in state:
            continue
        if key.endswith(".__tuple"):
            base = key.removesuffix(".__tuple")
            n = int(state.pop(key))
            state[base] = tuple(_decode_one(f"{base}.__item{i}", state) for i in range(n))
        elif key.endswith(".__none"):
            state.pop(key)
            state[key.removesuffix(".__none")] = None
        elif key.endswith(".__dtype"):
            state[key.removesuffix(".__dtype")] = _DTYPES[int(state.pop(key))]
        elif key.endswith(".__qint") and ".__item" not in key:
            base = key.removesuffix(".__qint")
            state[base] = _decode_tensor(base, state)
    if getattr(state, "_metadata", None) is None:
        _unversioned_layout(state)


def _post_hook(module: nn.Module, state: dict[str, Any], prefix: str, local: Any) -> Any:
    encoded = encode_state(dict(state))
    state.clear()
    state.update(encoded)
    return state


def _pre_hook(module: nn.Module, state: dict[str, Any], prefix: str, *args: Any) -> None:
    decode_state(state)


def _post_load(module: nn.Module, incompatible: Any) -> None:
    # A dynamic int8 Linear takes its activation range (7 or 8 bits) from its version,
    # which a state dict without version metadata resets: restore the one it was built with.
    for sub in module.modules():
        if hasattr(sub, "version") and hasattr(type(sub), "_version") and hasattr(
                sub, "_packed_params"):
            sub.version = getattr(sub, "_frugalnn_version", type(sub)._version)


def install_codec(model: nn.Module) -> nn.Module:
    """Make ``model.state_dict()`` plain tensors and ``load_state_dict`` accept them."""
    if getattr(model, "_frugalnn_quant_codec", False):
        return model
    model._register_state_dict_hook(_post_hook)
    model._register_load_state_dict_pre_hook(_pre_hook, with_module=True)
    model.register_load_state_dict_post_hook(_post_load)
    model._frugalnn_quant_codec = True
    return model
