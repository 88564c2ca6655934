"""One model's full cost profile: static counts plus measured latency and memory.

Shared by ``frugalnn profile`` and ``benchmarks/reference_models.py`` so that
the command line and the published table are produced by the same code.
Static counts (parameters, FLOPs, activations) are taken on a one-example
batch, i.e. per example; latency is measured at batch 1 and at a larger batch
because per-example time depends strongly on batching.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from frugalnn.cost.count import CostReport, measure
from frugalnn.cost.latency import LatencyRecord, measure_latency
from frugalnn.cost.machine import describe_machine
from frugalnn.cost.memory import MemoryRecord, peak_memory
from frugalnn.errors import UserError

__all__ = [
    "ModelProfile",
    "example_input",
    "parse_shape",
    "profile_model",
]


def parse_shape(text: str) -> tuple[int, ...]:
    """``"3,32,32" -> (3, 32, 32)``; one example's shape, without the batch."""
    parts = [p.strip() for p in text.replace("x", ",").split(",") if p.strip()]
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        shape = ()
    if not shape or any(s <= 0 for s in shape):
        raise UserError(
            f"bad input shape {text!r}; give positive integers separated by commas, e.g. 3,32,32"
        )
    return shape


def example_input(
    shape: tuple[int, ...], batch_size: int, dtype: str = "float", device: Any = "cpu"
) -> torch.Tensor:
    """A batch to measure with: normal noise for images, token id 1 for token models.

    Token inputs are all ones (id 1, and mask 1 for the BERT adapter's
    ids+mask layout): the cost of the models here does not depend on the values,
    and ones are valid for every vocabulary and as an attention mask.
    """
    if batch_size < 1:
        raise UserError(f"batch size must be positive, got {batch_size}")
    gen = torch.Generator().manual_seed(0)
    if dtype == "long":
        return torch.ones((batch_size, *shape), dtype=torch.long, device=device)
    return torch.randn((batch_size, *shape), generator=gen).to(device)


@dataclass
class ModelProfile:
    """Everything ``frugalnn profile`` reports about one model."""

    name: str
    input_shape: tuple[int, ...]
    cost: CostReport  # measured on one example
    latency: dict[int, LatencyRecord] = field(default_factory=dict)  # by batch size
    memory: dict[int, MemoryRecord] = field(default_factory=dict)
    machine: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "input_shape": list(self.input_shape),
            "params": self.cost.params,
            "macs_per_example": self.cost.macs,
            "flops_per_example": self.cost.flops,
            "activation_bytes_per_example": self.cost.activation_bytes,
            "cost": self.cost.to_dict(),
            "latency": {str(b): r.to_dict() for b, r in self.latency.items()},
            "peak_memory": {str(b): r.to_dict() for b, r in self.memory.items()},
            "machine": self.machine,
        }


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def profile_model(
    model: nn.Module,
    input_shape: tuple[int, ...],
    *,
    name: str = "",
    input_dtype: str = "float",
    batch_sizes: tuple[int, ...] = (1, 64),
    depth: int = 2,
    threads: int | None = None,
    warmup: int = 5,
    repeats: int = 20,
    device: str | torch.device = "cpu",
    timing: bool = True,
) -> ModelProfile:
    """Count per-example cost, then time and measure memory at each batch size."""
    device = torch.device(device)
    model = model.to(device).eval()
    x1 = example_input(input_shape, 1, input_dtype, device)
    try:
        cost = measure(model, x1, depth=depth)
    except UserError:
        raise
    except (RuntimeError, ValueError, IndexError, TypeError) as exc:
        raise UserError(
            f"model {name or type(model).__name__} fails on input shape {tuple(input_shape)} "
            f"({_first_line(exc)}); pass a fitting --input-shape"
        ) from None
    prof = ModelProfile(name, tuple(input_shape), cost, machine=describe_machine(device))
    if timing:
        for bs in batch_sizes:
            x = example_input(input_shape, bs, input_dtype, device)
            prof.latency[bs] = measure_latency(
                model, x, warmup=warmup, repeats=repeats, threads=threads, device=device
            )
            prof.memory[bs] = peak_memory(model, x, device=device)
        prof.machine["torch_threads"] = next(iter(prof.latency.values())).threads
    return prof
