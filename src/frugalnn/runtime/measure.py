"""Latency and peak memory of a model on a chosen runtime.

Runtimes: ``eager`` (the PyTorch module), ``compile`` (``torch.compile``, where
it works: input-dependent models break its graphs), ``onnxruntime`` (the model
exported to ONNX in memory, or an export directory's runner) and
``torchscript``. Latency goes through the one harness,
:func:`frugalnn.cost.latency.measure_latency`, so timings on every runtime
are taken alike.

Peak memory, measured, with the method named in each record:

- torch runtimes on CPU: :func:`frugalnn.cost.memory.peak_memory` (live tensor
  storage allocated by the call, ``tensor_storage_tracking``);
- ONNX Runtime on CPU: every session is recreated (an empty arena), the
  process's resident-set high-water mark (``VmHWM``) is reset through
  ``/proc/self/clear_refs``, one call runs, and the growth of the mark is the
  memory that call needed (``rss_high_water_fresh_session``; weights, loaded
  with the session, are not counted);
- CUDA: the torch allocator's peak; none for ONNX Runtime's CUDA provider.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from frugalnn.errors import UserError

__all__ = ["RUNTIMES", "RuntimeMeasurement", "export_platform", "measure_on_runtime", "on_runtime",
           "rss_peak", "time_budgets_on_runtimes"]

RUNTIMES = ("eager", "compile", "onnxruntime", "torchscript")


@dataclass
class RuntimeMeasurement:
    runtime: str
    latency: Any  # frugalnn.cost.latency.LatencyRecord
    peak_bytes: int | None
    memory_method: str

    def to_dict(self) -> dict[str, Any]:
        return {"runtime": self.runtime, "latency": self.latency.to_dict(with_times=False),
                "peak_bytes": self.peak_bytes, "memory_method": self.memory_method}


def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def rss_peak(fn: Callable[..., Any], *inputs: Any) -> int | None:
    """Bytes by which one call of ``fn`` raised the resident-set high-water mark (Linux)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    except OSError:
        return None
    before = _status_kib("VmRSS")
    fn(*inputs)
    peak = _status_kib("VmHWM")
    if before is None or peak is None:
        return None
    return max(0, peak - before) * 1024


def on_runtime(model: Any, runtime: str, example: Any, *, device: str = "cpu",
               threads: int | None = None, check_data: Any = None) -> Callable[..., Any]:
    """``model`` as a callable on ``runtime``.

    ``model`` is a module or a path to an export directory (then ``runtime`` must
    be one its format runs on). For ``onnxruntime`` and ``torchscript`` a module is
    exported to a temporary directory first, checked on ``check_data`` (default:
    ``example``) like any export.
    """
    import torch

    if runtime not in RUNTIMES:
        raise UserError(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")
    from frugalnn.runtime.package import load_exported
    from frugalnn.utils.batch import call_model

    if isinstance(model, (str, Path)):
        return load_exported(model, runtime=runtime, device=device, threads=threads)
    if runtime == "eager":
        return model
    if runtime == "compile":
        compiled = torch.compile(model, dynamic=True)
        try:  # compilation happens on the first call: fail here, in one line, not mid-timing
            with torch.inference_mode():
                call_model(compiled, example)
        except Exception as exc:  # noqa: BLE001 - one line for the user
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise UserError(f"torch.compile fails on this model ({first}); time it on "
                            "eager or onnxruntime") from None
        return compiled
    from frugalnn.runtime.export import ExportConfig, export

    fmt = "onnx" if runtime == "onnxruntime" else "torchscript"
    with tempfile.TemporaryDirectory(prefix="frugalnn-runtime-") as tmp:
        export(model, Path(tmp) / "export", ExportConfig(format=fmt, threads=threads),
               check_data=check_data if check_data is not None else example)
        return load_exported(Path(tmp) / "export", runtime=runtime, device=device,
                             threads=threads)


def measure_on_runtime(fn: Callable[..., Any], runtime: str, x: Any, *, warmup: int = 5,
                       repeats: int = 20, threads: int | None = None,
                       device: str = "cpu") -> RuntimeMeasurement:
    """Time ``fn(x)`` (a callable from :func:`on_runtime`) and measure its peak memory.

    ``x`` is a tensor or a dict of tensors; a dict reaches a Hugging Face model as keyword
    arguments and an exported model's graphs by input name."""
    import torch

    from frugalnn.cost.latency import measure_latency
    from frugalnn.utils.batch import batch_len, call_model

    if isinstance(x, dict):
        model = fn

        def by_name(inputs: Any) -> Any:
            return call_model(model, inputs)

        by_name.__dict__["runner"] = model  # its ONNX Runtime graphs stay findable
        fn = by_name
    latency = measure_latency(fn, x, warmup=warmup, repeats=repeats, threads=threads,
                              device=device, batch_size=batch_len(x))
    if str(device).startswith("cuda"):
        if runtime == "onnxruntime":
            return RuntimeMeasurement(runtime, latency, None, "not measured")
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        with torch.inference_mode():
            fn(x)
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - base
        return RuntimeMeasurement(runtime, latency, int(peak), "cuda_allocator")
    if runtime == "onnxruntime":
        import gc

        for graph in _ort_graphs(fn):
            graph.reset()
        gc.collect()
        with torch.inference_mode():
            peak = rss_peak(fn, x)
        return RuntimeMeasurement(runtime, latency, peak, "rss_high_water_fresh_session")
    from frugalnn.cost.memory import peak_memory

    record = peak_memory(fn, x, device=device)
    return RuntimeMeasurement(runtime, latency, record.peak_bytes, record.method)


def _ort_graphs(fn: Any, depth: int = 2) -> list[Any]:
    """The ONNX Runtime graphs of a runner (or the graph itself), looking ``depth`` levels
    into the ``runner`` a wrapper holds."""
    from frugalnn.runtime.graphs import OrtGraph

    if isinstance(fn, OrtGraph):
        return [fn]
    found = []
    for name, value in getattr(fn, "__dict__", {}).items():
        if isinstance(value, OrtGraph):
            found.append(value)
        elif isinstance(value, dict):
            found += [g for g in value.values() if isinstance(g, OrtGraph)]
        elif name == "runner" and depth > 0:
            found += _ort_graphs(value, depth - 1)
    return found


def export_platform(runtime: str) -> str:
    """The platform an export timed on ``runtime`` is reported as: the runtime, except an
    exported program run eagerly (``exported-program``), which is not the PyTorch model."""
    return "exported-program" if runtime == "eager" else runtime


def time_budgets_on_runtimes(model: Any, runner: Any, runtime: str, x: Any,
                             budgets: list[float | None], *, warmup: int = 3,
                             repeats: int = 10, threads: int | None = 1) -> list[dict[str, Any]]:
    """Per budget, the eager model and its export timed alike on the same batch ``x``,
    interleaved (eager, then the export, at each budget): rows for ``timing.json``.

    Each row names its ``platform``: ``eager`` (the PyTorch model) or the runtime the
    export ran on (``exported-program`` for an exported program run eagerly)."""
    rows = []
    full = model.full_budget() if budgets != [None] else None
    try:
        for b in budgets:
            if b is not None:
                model.set_budget(b)
                runner.set_budget(b)
            for name, fn, platform in (("eager", model, "eager"),
                                       (runtime, runner, export_platform(runtime))):
                m = measure_on_runtime(fn, name, x, warmup=warmup, repeats=repeats,
                                       threads=threads)
                rows.append({"budget": b, "platform": platform, **m.to_dict()})
    finally:
        if full is not None:
            model.set_budget(full)
            runner.set_budget(full)
    return rows
