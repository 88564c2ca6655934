"""Peak memory of one call, measured rather than estimated.

On CUDA the caching allocator keeps exact statistics, so the peak is
``torch.cuda.max_memory_allocated`` during the call minus what was allocated
before it.

On CPU there is no such counter: ``tracemalloc`` does not see torch's
allocator, and ``resource.getrusage`` gives the process's lifetime high-water
mark, which cannot go down, so a second, smaller model would read the same as
the first. We therefore track tensor storage ourselves: a
``TorchDispatchMode`` sees every aten op of the call, notes each newly
allocated output storage (views and in-place results share their input's
storage and are skipped) and a weak-reference finaliser subtracts it when
Python frees it. The peak of that running sum is the peak of *live tensor
memory allocated by the call*, excluding the inputs and parameters that
existed before it and excluding scratch buffers a kernel allocates and frees
internally (e.g. convolution's unfolded input), which no Python-level tool
can see. It is exact for what it covers and deterministic, which makes it
comparable across methods.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

__all__ = ["MemoryRecord", "peak_memory"]


@dataclass
class MemoryRecord:
    """Peak and retained bytes of one call (beyond what existed before it)."""

    peak_bytes: int
    retained_bytes: int  # still allocated after the call (mostly its outputs)
    device: str
    method: str  # "cuda_allocator" or "tensor_storage_tracking"

    @property
    def peak_mib(self) -> float:
        return self.peak_bytes / 2**20

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["peak_mib"] = self.peak_mib
        return d


class _LiveStorageMode(TorchDispatchMode):
    """Running sum of bytes of storages created by ops in this mode, and its peak."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._seen: set[int] = set()

    def _free(self, key: int, nbytes: int) -> None:
        self.live -= nbytes
        self._seen.discard(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if any(r.alias_info is not None for r in func._schema.returns):
            return out  # views and in-place results allocate nothing new
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor) or t.device.type == "meta":
                continue
            storage = t.untyped_storage()
            key = id(storage)
            if key in self._seen:
                continue
            nbytes = storage.nbytes()
            self._seen.add(key)
            self.live += nbytes
            weakref.finalize(storage, self._free, key, nbytes)
        self.peak = max(self.peak, self.live)
        return out


def _device_of(inputs: tuple[Any, ...], device: str | torch.device | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    for t in tree_flatten(inputs)[0]:
        if isinstance(t, torch.Tensor):
            return t.device
    return torch.device("cpu")


def peak_memory(
    fn: Callable[..., Any], *inputs: Any, device: str | torch.device | None = None
) -> MemoryRecord:
    """Peak memory allocated while running ``fn(*inputs)`` under ``inference_mode``."""
    dev = _device_of(inputs, device)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        before = torch.cuda.memory_allocated(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        with torch.inference_mode():
            result = fn(*inputs)
        torch.cuda.synchronize(dev)
        peak = torch.cuda.max_memory_allocated(dev) - before
        retained = torch.cuda.memory_allocated(dev) - before
        del result
        return MemoryRecord(int(peak), int(retained), str(dev), "cuda_allocator")
    mode = _LiveStorageMode()
    with torch.inference_mode(), mode:
        result = fn(*inputs)
    retained = mode.live
    del result
    return MemoryRecord(int(mode.peak), int(retained), str(dev), "tensor_storage_tracking")
