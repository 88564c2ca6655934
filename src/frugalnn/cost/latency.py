"""Wall-clock latency of a callable, measured the same way everywhere.

Why a shared harness: speed-ups are ratios of two timings, and they only mean
something when both sides were measured alike: same warm-up, same number of
repeats, same thread count, same statistic (the median, which a loaded machine
disturbs least), under ``torch.inference_mode()``. On CUDA, kernels run
asynchronously, so each repeat is timed with CUDA events and a synchronise;
on CPU with ``time.perf_counter``. The 1-minute load average before and after
is kept with the numbers, so that a timing taken on a busy machine says so.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils._pytree import tree_flatten

from frugalnn.errors import UserError
from frugalnn.utils.io import write_json_atomic

__all__ = ["LatencyRecord", "measure_latency"]


@dataclass
class LatencyRecord:
    """Timings of ``repeats`` calls (milliseconds) and the conditions they ran under."""

    median_ms: float
    p10_ms: float
    p90_ms: float
    mean_ms: float
    std_ms: float
    min_ms: float
    repeats: int
    warmup: int
    threads: int
    batch_size: int | None
    device: str
    loadavg_before: float | None = None
    loadavg_after: float | None = None
    times_ms: list[float] = field(default_factory=list)

    @property
    def per_example_ms(self) -> float | None:
        """Median time divided by the batch size (``None`` when it is unknown)."""
        return self.median_ms / self.batch_size if self.batch_size else None

    def to_dict(self, with_times: bool = True) -> dict[str, Any]:
        d = asdict(self)
        d["per_example_ms"] = self.per_example_ms
        if not with_times:
            d.pop("times_ms")
        return d

    def save(self, path: str | os.PathLike) -> Path:
        """Write the record as JSON (atomically)."""
        return write_json_atomic(path, self.to_dict())

    def __str__(self) -> str:
        batch = f"batch {self.batch_size}, " if self.batch_size else ""
        return (
            f"{self.median_ms:.3f} ms median (p10 {self.p10_ms:.3f}, p90 {self.p90_ms:.3f}; "
            f"{batch}{self.threads} threads, {self.device}, {self.repeats} repeats)"
        )


def _loadavg() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):  # not available on every platform
        return None


def _infer_device(inputs: tuple[Any, ...]) -> torch.device:
    for t in tree_flatten(inputs)[0]:
        if isinstance(t, torch.Tensor):
            return t.device
    return torch.device("cpu")


def _infer_batch(inputs: tuple[Any, ...]) -> int | None:
    for t in tree_flatten(inputs)[0]:
        if isinstance(t, torch.Tensor) and t.dim() > 0:
            return int(t.shape[0])
    return None


def measure_latency(
    fn: Callable[..., Any],
    *inputs: Any,
    warmup: int = 5,
    repeats: int = 20,
    threads: int | None = None,
    device: str | torch.device | None = None,
    batch_size: int | None = None,
) -> LatencyRecord:
    """Time ``fn(*inputs)``: ``warmup`` untimed calls, then ``repeats`` timed ones.

    ``threads`` sets ``torch.set_num_threads`` for the measurement and restores
    the previous value afterwards (``None`` keeps the current setting).
    ``device`` defaults to the device of the first tensor input; on CUDA each
    call is bracketed by CUDA events and synchronised. ``batch_size`` defaults
    to the leading dimension of the first tensor input.
    """
    if repeats < 1 or warmup < 0:
        raise UserError(f"need repeats >= 1 and warmup >= 0, got {repeats} and {warmup}")
    if threads is not None and threads < 1:
        raise UserError(f"threads must be a positive integer, got {threads}")
    dev = torch.device(device) if device is not None else _infer_device(inputs)
    batch = batch_size if batch_size is not None else _infer_batch(inputs)
    cuda = dev.type == "cuda"
    old_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    times: list[float] = []
    load_before = _loadavg()
    try:
        with torch.inference_mode():
            for _ in range(warmup):
                fn(*inputs)
            if cuda:
                torch.cuda.synchronize(dev)
            for _ in range(repeats):
                if cuda:
                    start = torch.cuda.Event(enable_timing=True)
                    end = torch.cuda.Event(enable_timing=True)
                    start.record()
                    fn(*inputs)
                    end.record()
                    torch.cuda.synchronize(dev)
                    times.append(float(start.elapsed_time(end)))
                else:
                    t0 = time.perf_counter()
                    fn(*inputs)
                    times.append((time.perf_counter() - t0) * 1e3)
        used_threads = torch.get_num_threads()
    finally:
        torch.set_num_threads(old_threads)
    arr = np.asarray(times)
    return LatencyRecord(
        median_ms=float(np.median(arr)),
        p10_ms=float(np.percentile(arr, 10)),
        p90_ms=float(np.percentile(arr, 90)),
        mean_ms=float(arr.mean()),
        std_ms=float(statistics.stdev(times)) if len(times) > 1 else 0.0,
        min_ms=float(arr.min()),
        repeats=repeats,
        warmup=warmup,
        threads=used_threads,
        batch_size=batch,
        device=str(dev),
        loadavg_before=load_before,
        loadavg_after=_loadavg(),
        times_ms=[round(t, 6) for t in times],
    )
