"""int8 conversions of a float model, executed by PyTorch's quantised CPU kernels.

Three modes (``mode`` of :class:`~frugalnn.methods.quant.recipe.QuantConfig`):

* ``dynamic``: every ``nn.Linear`` (attention projections included) holds int8
  weights; activations are quantised on the fly, per batch
  (``quantized::linear_dynamic``).
* ``static``: FX graph-mode post-training quantisation with per-channel
  weights and activation observers chosen by ``observer``; conv + BN (+ ReLU)
  are fused, activations stay int8 between layers (``quantized::conv2d``,
  ``quantized::add_relu``). The largest subtrees that FX can trace are
  quantised, so a model with data-dependent control flow (early exits, a
  mixture of experts) keeps its Python control flow and budget knob while its
  blocks, heads and experts run in int8.
* ``weight_only``: ``nn.Linear`` weights stored as int8 with one scale per
  output channel, dequantised per call (float arithmetic: smaller, not faster).

``backend`` picks the quantised engine (``x86`` = fbgemm + oneDNN,
``fbgemm``, ``onednn``, ``qnnpack``); an engine this build lacks is refused
with one line. Each conversion records itself (the ``int8`` transformation),
so :func:`frugalnn.train.checkpoint.load_model` re-applies it structurally
(with placeholder scales) and then loads the saved int8 weights and scales.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from frugalnn.errors import UserError
from frugalnn.methods.quant.codec import install_codec
from frugalnn.transforms import record_transform, register_transform

__all__ = [
    "BACKENDS",
    "MODES",
    "OBSERVERS",
    "Int8WeightOnlyLinear",
    "apply_int8",
    "available_engines",
    "check_backend",
    "convert_static",
    "finish_int8",
    "has_vnni",
    "prepare_static",
    "quantize_dynamic",
    "quantize_embeddings",
    "quantize_weight_only",
    "resolve_reduce_range",
    "static_targets",
]

MODES = ("dynamic", "static", "weight_only")
BACKENDS = ("x86", "fbgemm", "onednn", "qnnpack")
OBSERVERS = ("histogram", "minmax", "moving_average")


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence torch.ao's deprecation notices (they point at torchao, not installed here)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def available_engines() -> list[str]:
    """The quantised engines this PyTorch build supports on this machine."""
    return [e for e in torch.backends.quantized.supported_engines if e != "none"]


def check_backend(backend: str) -> None:
    """Select the quantised engine ``backend``; one clear line if this machine lacks it."""
    if backend not in BACKENDS:
        raise UserError(f"unknown int8 backend {backend!r}; use one of {', '.join(BACKENDS)}")
    engines = available_engines()
    if backend not in engines:
        have = ", ".join(engines) or "none"
        raise UserError(f"int8 backend {backend!r} is not available in this PyTorch build "
                        f"on this machine (available: {have})")
    torch.backends.quantized.engine = backend


def _has(model: nn.Module, kinds: tuple[type, ...]) -> bool:
    return any(isinstance(m, kinds) for m in model.modules())


def _no_layers(mode: str, kinds: str) -> UserError:
    return UserError(f"the model has no layers {mode} int8 quantisation supports ({kinds})")


# -- dynamic -------------------------------------------------------------------------------


def has_vnni() -> bool:
    """Whether this CPU multiplies int8 with 32-bit accumulation (AVX-512 VNNI / AVX-VNNI).

    Without it, x86 int8 kernels multiply u8 x s8 pairs into saturating 16-bit sums,
    which is why PyTorch quantises activations to 7 bits there (``reduce_range``)."""
    try:
        with open("/proc/cpuinfo") as fh:
            flags = fh.read()
    except OSError:
        return False
    return "avx512_vnni" in flags or "avx_vnni" in flags


def resolve_reduce_range(reduce_range: bool | None, backend: str) -> bool:
    """7-bit activations (``True``) or 8-bit; ``None``: 7 bits only on an x86/fbgemm
    engine of a CPU without VNNI."""
    if reduce_range is not None:
        return reduce_range
    return backend in ("x86", "fbgemm") and not has_vnni()


def quantize_dynamic(model: nn.Module, reduce_range: bool = True) -> nn.Module:
    """``model`` with every ``nn.Linear`` replaced by a dynamic int8 Linear (in place);
    ``reduce_range=False`` quantises activations to the full 8 bits."""
    from torch.ao.quantization import per_channel_dynamic_qconfig
    from torch.ao.quantization import quantize_dynamic as ao_dynamic

    if not _has(model, (nn.Linear,)):
        raise _no_layers("dynamic", "nn.Linear")
    with _quiet():  # one weight scale per output channel
        model = ao_dynamic(model, {nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8,
                           inplace=True)
    # PyTorch's dynamic Linear picks 7-bit activations from its state-dict version (4);
    # version 3 runs the same kernel with 8-bit activations.
    version = 4 if reduce_range else 3
    for module in model.modules():
        if hasattr(module, "_packed_params") and hasattr(module, "version"):
            module.version = module._frugalnn_version = version
    return model


# -- weight-only ---------------------------------------------------------------------------


class Int8WeightOnlyLinear(nn.Module):
    """A Linear whose weight is int8 with one float scale per output channel.

    ``weight_int8`` (``out x in``, symmetric, range -127..127) and
    ``weight_scale`` (``out``) are plain buffers; the weight is dequantised for
    each call and the product runs in float: the saving is storage, not time.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("weight_int8", torch.zeros(out_features, in_features,
                                                        dtype=torch.int8))
        self.register_buffer("weight_scale", torch.ones(out_features))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    @classmethod
    def from_float(cls, linear: nn.Linear) -> Int8WeightOnlyLinear:
        q = cls(linear.in_features, linear.out_features, linear.bias is not None)
        w = linear.weight.detach().float()
        scale = w.abs().amax(dim=1).clamp_min(1e-12) / 127.0
        q.weight_int8.copy_(torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8))
        q.weight_scale.copy_(scale)
        if linear.bias is not None:
            q.bias.data.copy_(linear.bias.detach())
        return q.to(linear.weight.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Dequantised per call: on the x86 CPUs measured here this ran faster than
        # aten._weight_int8pack_mm (benchmarks/results/quant_minilm.md).
        weight = self.weight_int8.to(x.dtype) * self.weight_scale.to(x.dtype)[:, None]
        return F.linear(x, weight, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 weights"


def _swap_linears(module: nn.Module, make: Callable[[nn.Linear], nn.Module]) -> None:
    for name, child in module.named_children():
        if type(child) is nn.Linear:
            setattr(module, name, make(child))
        else:
            _swap_linears(child, make)


def quantize_weight_only(model: nn.Module) -> nn.Module:
    """``model`` with every ``nn.Linear`` storing int8 weights (in place)."""
    if not any(type(m) is nn.Linear for m in model.modules()):
        raise _no_layers("weight-only", "nn.Linear")
    _swap_linears(model, Int8WeightOnlyLinear.from_float)
    return model


def quantize_embeddings(model: nn.Module) -> nn.Module:
    """``model`` with every ``nn.Embedding`` stored in 8 bits per value (in place): uint8
    rows with a float16 scale and offset each (:class:`frugalnn.models.embedding8.Embedding8`),
    dequantised on lookup."""
    from frugalnn.models.embedding8 import Embedding8

    if not any(type(m) is nn.Embedding for m in model.modules()):
        raise UserError("embeddings='uint8' needs nn.Embedding tables; the model has none")

    def swap(module: nn.Module) -> None:
        for name, child in module.named_children():
            if type(child) is nn.Embedding:
                setattr(module, name, Embedding8.from_float(child).to(child.weight.device))
            else:
                swap(child)

    swap(model)
    return model


# -- static --------------------------------------------------------------------------------

_STATIC_KINDS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def _traceable(module: nn.Module) -> bool:
    from torch.fx import symbolic_trace

    try:
        with _quiet():
            symbolic_trace(module)
    except Exception:  # any tracing failure: data-dependent control flow, dict inputs, ...
        return False
    return True


def static_targets(model: nn.Module) -> list[str]:
    """Paths of the largest FX-traceable subtrees holding a conv or Linear ("" = whole model).

    A :class:`~frugalnn.models.base.StagedModel` inside the model (the backbone of
    an early-exit model) is never replaced as a whole, since its owner calls its
    stages (``embed``, ``blocks``, ``classify``); its parts are quantised instead.
    """
    from frugalnn.models.base import StagedModel

    found: list[str] = []

    def visit(prefix: str, module: nn.Module) -> None:
        if not _has(module, _STATIC_KINDS):
            return
        if not (prefix and isinstance(module, StagedModel)) and _traceable(module):
            found.append(prefix)
            return
        for name, child in module.named_children():
            visit(f"{prefix}.{name}" if prefix else name, child)

    visit("", model)
    return found


def _qconfig_mapping(backend: str, observer: str, per_channel: bool, qat: bool,
                     reduce: bool) -> Any:
    from torch.ao.quantization import QConfig, QConfigMapping, get_default_qat_qconfig_mapping
    from torch.ao.quantization import observer as obs

    if qat:
        return get_default_qat_qconfig_mapping(backend)
    act = {"histogram": obs.HistogramObserver, "minmax": obs.MinMaxObserver,
           "moving_average": obs.MovingAverageMinMaxObserver}[observer]
    weight = (obs.PerChannelMinMaxObserver.with_args(dtype=torch.qint8,
                                                     qscheme=torch.per_channel_symmetric)
              if per_channel else
              obs.MinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_tensor_symmetric))
    qconfig = QConfig(activation=act.with_args(reduce_range=reduce), weight=weight)
    mapping = QConfigMapping().set_global(qconfig)
    # Ops whose output scale is fixed (sigmoid, tanh, ...) keep the backend's own qconfigs.
    from torch.ao.quantization import get_default_qconfig_mapping

    for pattern, fixed in get_default_qconfig_mapping(backend).object_type_qconfigs.items():
        if fixed is not None and fixed.activation is not None and "FixedQParams" in repr(
                fixed.activation):
            mapping.set_object_type(pattern, fixed)
    return mapping


class _Leaf(nn.Module):
    """One convolution or Linear as the root of an FX graph."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


def _get(model: nn.Module, path: str) -> nn.Module:
    return model.get_submodule(path) if path else model


def _set(model: nn.Module, path: str, module: nn.Module) -> nn.Module:
    if not path:
        return module
    parent, _, name = path.rpartition(".")
    setattr(_get(model, parent), name, module)
    return model


def _carry(src: nn.Module, dst: nn.Module) -> nn.Module:
    """Keep the registry spec and the transformation history on a rebuilt root."""
    for attr in ("frugalnn_spec", "frugalnn_transforms"):
        if hasattr(src, attr):
            setattr(dst, attr, copy.deepcopy(getattr(src, attr)))
    return dst


def prepare_static(model: nn.Module, *, backend: str = "x86", observer: str = "histogram",
                   per_channel: bool = True, qat: bool = False, reduce_range: bool = True,
                   targets: Iterable[str] | None = None) -> tuple[nn.Module, list[str]]:
    """Insert observers (or fake-quant modules with ``qat``) into ``model``'s traceable
    subtrees; run data through the result to calibrate, then :func:`convert_static`.
    ``reduce_range``: 7-bit activations (see :func:`resolve_reduce_range`)."""
    from torch.ao.quantization.quantize_fx import prepare_fx, prepare_qat_fx

    if not _has(model, _STATIC_KINDS):
        raise _no_layers("static", "convolutions or nn.Linear")
    check_backend(backend)
    paths = list(targets) if targets is not None else static_targets(model)
    if not paths:
        raise UserError("no part of the model holding a convolution or Linear can be traced "
                        "by torch.fx; use mode='dynamic' or 'weight_only'")
    mapping = _qconfig_mapping(backend, observer, per_channel, qat, reduce_range)
    root = model
    for path in paths:
        sub = original = _get(root, path)
        if isinstance(sub, _STATIC_KINDS):
            # FX would turn a lone layer into a functional call on packed weights, which a
            # state dict cannot hold; wrapped, it becomes an int8 module like any other.
            sub = _Leaf(sub)
        with _quiet():
            if qat:
                prepared = prepare_qat_fx(sub.train(), mapping, example_inputs=())
            else:
                prepared = prepare_fx(sub.eval(), mapping, example_inputs=())
        root = _set(root, path, _carry(original, prepared) if not path else prepared)
    root._frugalnn_static_paths = paths
    return root, paths


def convert_static(model: nn.Module) -> nn.Module:
    """Replace the observed subtrees of a :func:`prepare_static` model by int8 kernels."""
    from torch.ao.quantization.quantize_fx import convert_fx

    paths = getattr(model, "_frugalnn_static_paths", None)
    if paths is None:
        raise UserError("convert_static needs a model returned by prepare_static")
    root = model
    for path in paths:
        sub = _get(root, path)
        with _quiet():
            converted = convert_fx(sub.eval())
        root = _set(root, path, _carry(sub, converted) if not path else converted)
    return root.eval()


# -- the recorded transformation -----------------------------------------------------------


@register_transform("int8")
def apply_int8(model: nn.Module, mode: str = "dynamic", backend: str = "x86",
               observer: str = "histogram", per_channel: bool = True,
               targets: list[str] | None = None, reduce_range: bool = True,
               embeddings: str | None = None) -> nn.Module:
    """Rebuild the int8 structure of ``model`` (weights and scales are placeholders until a
    checkpoint's are loaded). ``targets`` are the static mode's subtree paths;
    ``embeddings="uint8"`` stores embedding tables in 8 bits too."""
    check_backend(backend)
    history = list(getattr(model, "frugalnn_transforms", []))
    if embeddings == "uint8":
        model = quantize_embeddings(model)
    if mode == "dynamic":
        model = quantize_dynamic(model, reduce_range)
    elif mode == "weight_only":
        model = quantize_weight_only(model)
    elif mode == "static":
        model, targets = prepare_static(model.eval(), backend=backend, observer=observer,
                                        per_channel=per_channel, targets=targets,
                                        reduce_range=reduce_range)
        with _quiet():
            model = convert_static(model)
    else:
        raise UserError(f"unknown quantisation mode {mode!r}; use one of {', '.join(MODES)}")
    return finish_int8(model, history, mode=mode, backend=backend, observer=observer,
                       per_channel=per_channel, targets=targets, reduce_range=reduce_range,
                       embeddings=embeddings)


def finish_int8(model: nn.Module, history: list[dict[str, Any]], *, mode: str, backend: str,
                observer: str, per_channel: bool, targets: list[str] | None,
                reduce_range: bool = True, embeddings: str | None = None) -> nn.Module:
    """Record the ``int8`` transformation after ``history`` on a converted ``model`` and
    install the state-dict codec, so that its checkpoint saves and loads."""
    model.frugalnn_transforms = list(history)
    args: dict[str, Any] = {"mode": mode, "backend": backend, "observer": observer,
                            "per_channel": per_channel, "reduce_range": reduce_range}
    if mode == "static":
        args["targets"] = list(targets or [])
    if embeddings is not None:
        args["embeddings"] = embeddings
    record_transform(model, "int8", args)
    model.frugalnn_int8 = args
    return install_codec(model.eval())
