"""Static cost of one forward pass, measured from the operations it dispatches.

Why measured rather than derived from layer shapes: a model's ``forward`` may
call functional ops, ``@``, attention kernels or skip layers entirely, and only
the dispatched operations tell what really ran. We build on
:class:`torch.utils.flop_counter.FlopCounterMode` (matrix products and
convolutions, ``flops = 2 * macs``, biases not counted) and add the
multiply-add kernels it leaves at 0: the CPU attention kernels, the fused
fast paths of ``nn.TransformerEncoderLayer`` and ``nn.MultiheadAttention``,
oneDNN's LSTM, ``nn.Bilinear``, ``mv``/``dot``/``addbmm`` and backend
convolution kernels. The table of op -> formula is :mod:`frugalnn.cost.ops`.

Quantised ops (``quantized::conv2d``, ``quantized::linear_dynamic``, the
weight-only ``_weight_int8pack_mm``, ...) are counted with the same
conventions by :mod:`frugalnn.cost.bits`, and every FLOP is labelled by the
precision it runs in (:attr:`CostReport.flops_by_precision`: ``fp32``,
``int8``, ``w8a32``, ``binary``); parameters are counted per storage precision
(int8 weights packed inside quantised modules included) and
:attr:`CostReport.model_bytes` is the size of the weights a checkpoint stores.

What is **not** counted (listed per run in :attr:`CostReport.uncounted`):
elementwise ops (activations, residual adds, scaling), normalisations,
softmax, pooling, interpolation, reductions: not multiply-adds, a few percent
of the total for the CNNs and transformers here. Any other op with arithmetic
is one the table does not know: it counts 0, is named in
:attr:`CostReport.unknown_ops`, and every counting function warns with an
:class:`UncountedOpWarning`.

Activation memory (:attr:`CostReport.activation_bytes`) is the sum of the
bytes of every tensor *newly allocated* by an operation during the forward
pass: outputs that alias an input (views, in-place ops) are skipped, the input
batch and the parameters are not included. It is the memory a forward would
need if nothing were freed (what training keeps for backward, roughly), not the
peak of live memory at inference; for that see :mod:`frugalnn.cost.memory`.
"""

from __future__ import annotations

import os
import warnings
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import FlopCounterMode, flop_registry

from frugalnn.cost.bits import float_precision, model_bytes, op_flops, params_by_precision
from frugalnn.cost.ledger import DynamicModule
from frugalnn.cost.ops import extra_flop_mapping, is_cheap, is_free, op_name
from frugalnn.errors import UserError
from frugalnn.utils.batch import call_model

__all__ = [
    "CostReport",
    "ModuleCost",
    "UncountedOpWarning",
    "warn_unknown_ops",
    "count_flops",
    "flops_per_example",
    "measure",
    "static_flops_excluding_dynamic",
    "format_count",
]

aten = torch.ops.aten


EXTRA_FLOP_MAPPING = extra_flop_mapping()
COUNTED_OPS = frozenset(flop_registry) | frozenset(EXTRA_FLOP_MAPPING)


class UncountedOpWarning(UserWarning):
    """A model ran an op with arithmetic the FLOP counter does not know (counted as 0)."""


def warn_unknown_ops(unknown: Mapping[str, int], stacklevel: int = 2) -> None:
    """Warn (:class:`UncountedOpWarning`) that ops with uncountable arithmetic ran."""
    if unknown:
        warnings.warn(f"FLOPs undercounted: {_unknown_line(unknown)}", UncountedOpWarning,
                      stacklevel=stacklevel + 1)


def _unknown_line(unknown: Mapping[str, int]) -> str:
    names = ", ".join(f"{name} (x{n})" for name, n in sorted(unknown.items()))
    return f"ops whose arithmetic frugalnn cannot count ran, counted as 0 FLOPs: {names}"


def format_count(value: float, unit: str = "") -> str:
    """``123456789 -> '123.46 M'``: human-readable with an SI suffix."""
    value = float(value)
    for suffix, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.2f} {suffix}{unit}"
    return f"{value:.0f} {unit}".rstrip() if value == int(value) else f"{value:.2f} {unit}"


def format_bytes(n: float) -> str:
    """Bytes in binary units (KiB, MiB, GiB)."""
    for suffix, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.2f} {suffix}"
    return f"{int(n)} B"


class _ActivationMode(TorchDispatchMode):
    """Sums bytes of newly allocated op outputs, counts the quantised ops the FLOP counter
    misses, labels every counted FLOP by precision and notes uncounted arithmetic ops."""

    def __init__(self, counter: FlopCounterMode) -> None:
        super().__init__()
        self.counter = counter
        self.total_bytes = 0
        self.module_bytes: dict[str, int] = defaultdict(int)
        self.uncounted: dict[str, int] = defaultdict(int)  # cheap arithmetic, by design
        self.unknown: dict[str, int] = defaultdict(int)  # arithmetic we cannot count
        self.extra_flops = 0  # quantised ops, not seen by the FLOP counter
        self.module_extra: dict[str, int] = defaultdict(int)
        self.extra_by_op: dict[str, int] = defaultdict(int)
        self.by_precision: dict[str, int] = defaultdict(int)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        packet = func.overloadpacket
        counted = packet in COUNTED_OPS
        if not counted and not is_free(func) and not is_cheap(func):
            # Composite ops (``linear``, ``conv2d``, ``batch_norm``) reach a dispatch mode
            # undecomposed under ``torch.inference_mode()``: decompose them here, as
            # FlopCounterMode does, so both modes see the same aten ops.
            with self:
                decomposed = func.decompose(*args, **(kwargs or {}))
            if decomposed is not NotImplemented:
                return decomposed
        before = self.counter.get_total_flops() if counted else 0
        out = func(*args, **(kwargs or {}))
        name = op_name(func)
        if counted:
            self.by_precision[float_precision(args)] += self.counter.get_total_flops() - before
        extra = None if counted else op_flops(func, args, out, kwargs)
        if extra is not None:
            flops, precision = extra
            self.extra_flops += flops
            self.by_precision[precision] += flops
            self.extra_by_op[name] += flops
            for parent in set(self.counter.mod_tracker.parents):
                self.module_extra[parent] += flops
        elif not counted and not is_free(func):
            (self.uncounted if is_cheap(func) else self.unknown)[name] += 1
        aliased = any(r.alias_info is not None for r in func._schema.returns)
        if not aliased:
            nbytes = sum(
                t.numel() * t.element_size()
                for t in tree_flatten(out)[0]
                if isinstance(t, torch.Tensor)
            )
            if nbytes:
                self.total_bytes += nbytes
                for parent in set(self.counter.mod_tracker.parents):
                    self.module_bytes[parent] += nbytes
        return out


@dataclass
class ModuleCost:
    """Cost of one module's subtree (all its calls in the forward pass)."""

    name: str  # dotted path from the root ("" is the root)
    type: str
    depth: int
    params: int
    flops: int
    activation_bytes: int

    @property
    def macs(self) -> float:
        return self.flops / 2


@dataclass
class CostReport:
    """Static cost of one forward pass over ``batch_size`` examples.

    ``flops`` are real floating-point operations (``macs = flops / 2``) for the
    whole batch; ``per_module`` rows are subtrees in module order;
    ``uncounted`` names the cheap arithmetic ops (elementwise, norms, softmax,
    pooling) seen and deliberately not counted, with calls; ``unknown_ops`` names
    ops with arithmetic the counter does not know (counted as 0: ``flops`` is an
    undercount when it is not empty, and :func:`measure` warns).
    ``params`` counts every weight, int8 weights packed in quantised modules
    included; ``params_by_precision`` and ``flops_by_precision`` split them by
    precision (``fp32``, ``int8``, ``w8a32``, ``binary``; see
    :mod:`frugalnn.cost.bits`); ``model_bytes`` is the size of the state dict.
    """

    params: int
    trainable_params: int
    flops: int
    activation_bytes: int
    batch_size: int
    input_shape: list[int]
    per_module: list[ModuleCost] = field(default_factory=list)
    uncounted: dict[str, int] = field(default_factory=dict)
    flops_by_op: dict[str, int] = field(default_factory=dict)
    flops_by_precision: dict[str, int] = field(default_factory=dict)
    params_by_precision: dict[str, int] = field(default_factory=dict)
    model_bytes: int = 0
    unknown_ops: dict[str, int] = field(default_factory=dict)

    @property
    def macs(self) -> float:
        return self.flops / 2

    @property
    def flops_per_example(self) -> float:
        return self.flops / self.batch_size

    def table(self, depth: int | None = None) -> str:
        """A fixed-width table: params, MACs, FLOPs, share and activations per module."""
        rows = [m for m in self.per_module if depth is None or m.depth <= depth]
        header = ("Module", "Type", "Params", "MACs", "FLOPs", "% FLOPs", "Activations")
        lines = [header]
        for m in rows:
            label = ("  " * m.depth) + (m.name.rsplit(".", 1)[-1] if m.name else "(model)")
            share = 100.0 * m.flops / self.flops if self.flops else 0.0
            lines.append(
                (
                    label,
                    m.type,
                    format_count(m.params),
                    format_count(m.macs),
                    format_count(m.flops),
                    f"{share:.1f}",
                    format_bytes(m.activation_bytes),
                )
            )
        widths = [max(len(r[i]) for r in lines) for i in range(len(header))]
        out = []
        for i, r in enumerate(lines):
            cells = [r[0].ljust(widths[0]), r[1].ljust(widths[1])]
            cells += [c.rjust(w) for c, w in zip(r[2:], widths[2:])]
            out.append("  ".join(cells).rstrip())
            if i == 0:
                out.append("-" * len(out[0]))
        return "\n".join(out)

    def summary(self) -> str:
        """Headline numbers, units spelled out."""
        b = self.batch_size
        lines = [
            f"parameters:        {self.params:,} ({format_count(self.params)})",
            f"MACs per example:  {format_count(self.macs / b)}",
            f"FLOPs per example: {format_count(self.flops / b)}  (FLOPs = 2 x MACs)",
            f"activations per example: {format_bytes(self.activation_bytes / b)} "
            f"(sum of all newly allocated forward outputs)",
        ]
        if set(self.flops_by_precision) - {"fp32"} or set(self.params_by_precision) - {"fp32"}:
            lines.append("FLOPs by precision: " + ", ".join(
                f"{k} {format_count(v / b)}" for k, v in sorted(self.flops_by_precision.items())
                if v))
            lines.append("parameters by precision: " + ", ".join(
                f"{k} {format_count(v)}" for k, v in sorted(self.params_by_precision.items())))
        if self.model_bytes:
            lines.append(f"model size:        {format_bytes(self.model_bytes)} (weights as stored)")
        if self.uncounted:
            lines.append("not counted (not multiply-adds): " + ", ".join(sorted(self.uncounted)))
        if self.unknown_ops:
            lines.append(f"WARNING: FLOPs undercounted: {_unknown_line(self.unknown_ops)}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["macs"] = self.macs
        d["flops_per_example"] = self.flops_per_example
        for row in d["per_module"]:
            row["macs"] = row["flops"] / 2
        return d


def _call(model: nn.Module, example_input: Any) -> Any:
    if isinstance(example_input, Mapping):  # keywords, or one dict input of a wrapping model
        return call_model(model, dict(example_input))
    if isinstance(example_input, (tuple, list)):
        return model(*example_input)
    return model(example_input)


def _batch_size(example_input: Any) -> tuple[int, list[int]]:
    leaves = [t for t in tree_flatten(example_input)[0] if isinstance(t, torch.Tensor)]
    if not leaves or leaves[0].dim() == 0:
        raise ValueError("example_input must contain a tensor with a batch dimension")
    return int(leaves[0].shape[0]), list(leaves[0].shape)


def _tracker_name_to_path(key: str) -> str:
    """FlopCounterMode names modules ``RootClass.a.b``; we use ``a.b`` ("" = root)."""
    return key.split(".", 1)[1] if "." in key else ""


def _run_counted(model: nn.Module, example_input: Any):
    counter = FlopCounterMode(display=False, custom_mapping=EXTRA_FLOP_MAPPING)
    acts = _ActivationMode(counter)
    with torch.no_grad(), counter, acts:
        _call(model, example_input)
    warn_unknown_ops(acts.unknown, stacklevel=3)
    return counter, acts


def _canonical_paths(model: nn.Module) -> dict[str, str]:
    """Every path a module is reachable by -> the path ``named_modules`` gives it.

    A module shared by two parents (or stored under two attribute names) is
    named by the module tracker after the parent that called it last; its row
    is its first name, and holds all its calls.
    """
    first: dict[int, str] = {}
    out: dict[str, str] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        out[name] = first.setdefault(id(module), name)
    return out


def _by_path(model: nn.Module, values: Mapping[str, int]) -> dict[str, int]:
    """Tracker keys -> module paths (aliases folded into the canonical name)."""
    canonical = _canonical_paths(model)
    out: dict[str, int] = defaultdict(int)
    for key, value in values.items():
        if key != "Global":
            path = _tracker_name_to_path(key)
            out[canonical.get(path, path)] += value
    return dict(out)


def _module_flops(model: nn.Module, counter: FlopCounterMode,
                  acts: _ActivationMode) -> dict[str, int]:
    """Total FLOPs per module path (quantised ops included); the root's entry under ''."""
    per_key: dict[str, int] = defaultdict(int)
    for key, ops in counter.get_flop_counts().items():
        per_key[key] += sum(ops.values())
    for key, flops in acts.module_extra.items():
        per_key[key] += flops
    return _by_path(model, per_key)


def _total_flops(counter: FlopCounterMode, acts: _ActivationMode) -> int:
    return int(counter.get_total_flops()) + acts.extra_flops


def _fill_uncalled(model: nn.Module, values: dict[str, int]) -> dict[str, int]:
    """Give never-called containers (``ModuleList``, ``ModuleDict``) their children's sum.

    Forward hooks only see modules that are called; a ``ModuleList`` is iterated,
    not called, yet its row should show what its blocks cost.
    """
    out = dict(values)

    def visit(prefix: str, module: nn.Module) -> int:
        total = 0
        for child_name, child in module.named_children():
            total += visit(f"{prefix}.{child_name}" if prefix else child_name, child)
        if prefix in out or prefix == "":
            return out.get(prefix, 0)
        if total:
            out[prefix] = total
        return total

    visit("", model)
    return out


def measure(model: nn.Module, example_input: Any, depth: int = 2) -> CostReport:
    """Count parameters, FLOPs and activation bytes of ``model(example_input)``.

    ``example_input`` is a batch (tensor), a tuple of positional inputs or a
    dict of keyword inputs. FLOPs are for the whole batch. The model is run
    once under ``torch.no_grad()`` in whatever train/eval mode it is in.
    ``depth`` bounds the per-module rows (0 = only the whole model).
    """
    if isinstance(model, (str, os.PathLike)):
        raise UserError(f"{model} is a path, not a module; count an exported graph with "
                        "frugalnn.runtime.onnx_cost.measure_onnx or `frugalnn profile PATH`")
    batch, shape = _batch_size(example_input)
    counter, acts = _run_counted(model, example_input)
    mod_flops = _fill_uncalled(model, _module_flops(model, counter, acts))
    mod_bytes = _fill_uncalled(model, _by_path(model, acts.module_bytes))
    rows = []
    for name, module in model.named_modules():
        level = 0 if not name else name.count(".") + 1
        if level > depth:
            continue
        rows.append(
            ModuleCost(
                name=name,
                type=type(module).__name__,
                depth=level,
                params=sum(params_by_precision(module).values()),
                flops=mod_flops.get(name, 0),
                activation_bytes=mod_bytes.get(name, 0),
            )
        )
    by_op: dict[str, int] = defaultdict(int)
    for op, n in counter.get_flop_counts().get("Global", {}).items():
        by_op[str(op).removeprefix("aten.")] += n
    for op, n in acts.extra_by_op.items():
        by_op[op] += n
    by_precision = params_by_precision(model)
    return CostReport(
        params=sum(by_precision.values()),
        trainable_params=sum(p.numel() for p in model.parameters() if p.requires_grad),
        flops=_total_flops(counter, acts),
        activation_bytes=int(acts.total_bytes),
        batch_size=batch,
        input_shape=shape,
        per_module=rows,
        uncounted=dict(sorted(acts.uncounted.items())),
        flops_by_op=dict(by_op),
        flops_by_precision={k: v for k, v in sorted(acts.by_precision.items()) if v},
        params_by_precision=dict(sorted(by_precision.items())),
        model_bytes=model_bytes(model),
        unknown_ops=dict(sorted(acts.unknown.items())),
    )


def count_flops(module: nn.Module, *inputs: Any) -> int:
    """FLOPs of one forward ``module(*inputs)`` (matmuls, convolutions, SDPA, quantised ops)."""
    counter, acts = _run_counted(module, tuple(inputs))
    return _total_flops(counter, acts)


def flops_per_example(module: nn.Module, example_batch: Any) -> float:
    """FLOPs of one forward divided by the batch size of ``example_batch``."""
    batch, _ = _batch_size(example_batch)
    counter, acts = _run_counted(module, example_batch)
    return _total_flops(counter, acts) / batch


def _topmost_dynamic(model: nn.Module) -> list[str]:
    names: list[str] = []
    for name, module in model.named_modules():
        if isinstance(module, DynamicModule) and not any(
            name == n or name.startswith(n + ".") for n in names
        ):
            names.append(name)
    return names


def static_flops_excluding_dynamic(model: nn.Module, example_batch: Any) -> float:
    """Per-example FLOPs of everything outside ``DynamicModule`` subtrees.

    Dynamic modules charge the ledger themselves for what they ran; adding this
    figure per example completes the account without counting anything twice.
    """
    batch, _ = _batch_size(example_batch)
    counter, acts = _run_counted(model, example_batch)
    total = _total_flops(counter, acts)
    dynamic = _topmost_dynamic(model)
    if "" in dynamic:  # the whole model is dynamic: nothing static outside it
        return 0.0
    per_module = _module_flops(model, counter, acts)
    excluded = sum(per_module.get(name, 0) for name in dynamic)
    return (total - excluded) / batch
