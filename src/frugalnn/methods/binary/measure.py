"""What binarising saved: bytes, binary operations, and the packed kernel's measured time.

The evaluation records count float FLOPs as dispatched to torch; a packed
binary layer runs its XNOR-popcount kernel outside torch, so its work is not
in them. :func:`layer_table` counts it here instead, per layer: ``bops`` (binary
multiply-accumulates per example, one per sign pair), the 64-bit words those
take (``bops / 64``) and the ``float_flops`` the float layer would have spent,
with the weight bytes before and after packing and, when timed, the float
layer's and the packed layer's median time on the same input.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from frugalnn.methods.binary.convert import binary_layers
from frugalnn.methods.binary.layers import BinaryConv2d, BinaryLayer
from frugalnn.utils.batch import call_model

__all__ = ["layer_table", "model_bytes", "time_call", "write_extras"]


def model_bytes(model: nn.Module) -> int:
    """Bytes of every parameter and buffer of ``model``, as stored."""
    tensors = list(model.parameters()) + list(model.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)


def time_call(fn: Any, repeats: int, warmup: int = 3) -> tuple[float, float]:
    """Median and spread (max - min) of ``fn()`` in seconds over ``repeats`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), max(times) - min(times)


def _capture_inputs(model: nn.Module, names: list[str], x: Any) -> dict[str, Any]:
    seen: dict[str, torch.Tensor] = {}
    modules = dict(model.named_modules())
    handles = [modules[n].register_forward_pre_hook(
        lambda _m, inputs, n=n: seen.__setitem__(n, inputs[0].detach())) for n in names]
    try:
        with torch.no_grad():
            call_model(model, x)
    finally:
        for h in handles:
            h.remove()
    return seen


def _out_positions(layer: BinaryLayer, x: torch.Tensor) -> int:
    if isinstance(layer, BinaryConv2d):
        with torch.no_grad():
            return int(layer(x[:1]).shape[-2:].numel())
    return max(1, x[:1].numel() // layer.width)


def layer_table(original: nn.Module, binary: nn.Module, x: Any, *,
                repeats: int = 0, threads: int | None = 1) -> list[dict[str, Any]]:
    """One row per binary layer of ``binary`` (``original``: the float model it came from).

    With ``repeats > 0`` each layer is timed on its real input from ``x``
    (a batch) under ``threads`` torch threads, the float layer of ``original``
    against the binary layer as it runs (packed: the XNOR kernel).
    """
    layers = binary_layers(binary)
    inputs = _capture_inputs(binary, list(layers), x)
    floats = dict(original.named_modules())
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    rows = []
    try:
        for name, layer in layers.items():
            inp = inputs[name]
            positions = _out_positions(layer, inp)
            macs = layer.out_channels * layer.width * positions
            row: dict[str, Any] = {
                "layer": name, "kind": "conv" if isinstance(layer, BinaryConv2d) else "linear",
                "width": layer.width, "out": layer.out_channels,
                "activations": "binary" if layer.activations else "float",
                "float_flops": 2 * macs, "bops": macs, "words64": macs // 64,
                "float_bytes": layer.weight_bytes(packed=False),
                "packed_bytes": layer.weight_bytes(packed=True),
            }
            if repeats > 0:
                with torch.no_grad():
                    ref = floats[name]
                    row["float_s"], _ = time_call(lambda ref=ref, inp=inp: ref(inp), repeats)
                    row["binary_s"], _ = time_call(lambda lay=layer, inp=inp: lay(inp), repeats)
                row["speedup"] = row["float_s"] / row["binary_s"]
            rows.append(row)
    finally:
        torch.set_num_threads(before)
    return rows


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:.3f}"


def write_extras(out: str | Path, rows: list[dict[str, Any]], totals: dict[str, Any],
                 label: str) -> Path:
    """``extras/binary_model.md``: the whole model before/after and the per-layer table."""
    from frugalnn.utils.io import write_text_atomic

    lines = [f"# {label}", ""]
    lines += ["| | float model | binary model |", "|---|---:|---:|"]
    lines.append(f"| bytes (all parameters and buffers) | {totals['float_bytes']:,} | "
                 f"{totals['binary_bytes']:,} |")
    lines.append(f"| float FLOPs / example | {totals['float_flops']:,.0f} | "
                 f"{totals['binary_float_flops']:,.0f} |")
    lines.append(f"| binary MACs (BOPs) / example | 0 | {totals['bops']:,} |")
    lines.append(f"| test accuracy | {totals['float_accuracy']:.4f} | "
                 f"{totals['binary_accuracy']:.4f} |")
    lines += ["", f"Kernel: {totals['kernel']}; layer times: median of {totals['repeats']} "
              f"calls, {totals['threads']} thread(s), batch {totals['batch']}.", ""]
    lines += ["| layer | kind | width | out | activations | float FLOPs | BOPs | float bytes "
              "| packed bytes | float ms | binary ms | speed-up |",
              "|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        speed = f"{r['speedup']:.2f}x" if "speedup" in r else "-"
        lines.append(f"| {r['layer']} | {r['kind']} | {r['width']} | {r['out']} | "
                     f"{r['activations']} | {r['float_flops']:,} | {r['bops']:,} | "
                     f"{r['float_bytes']:,} | {r['packed_bytes']:,} | "
                     f"{_ms(r.get('float_s'))} | {_ms(r.get('binary_s'))} | {speed} |")
    path = Path(out) / "extras" / "binary_model.md"
    write_text_atomic(path, "\n".join(lines) + "\n")
    return path
