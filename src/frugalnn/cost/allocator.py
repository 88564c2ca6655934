"""Keep freed CPU memory in the process, so timings do not include page faults.

Why: with glibc's default ``malloc``, a large block (an activation of a few
MB, e.g. ResNet-56's 64x16x32x32 feature maps at batch 64) is served by
``mmap`` or from the top of the heap, and freeing it can hand the pages back
to the kernel (``munmap`` / heap trimming). The next forward pass then faults
the same pages in again and the kernel zeroes them. That cost scales with
activation bytes, not FLOPs, and glibc's thresholds adapt to the allocation
history, so a model's time also depends on what else ran before it in the
process. ``benchmarks/lowrank_layout.py --allocator default retain`` measures
both settings in one run (``benchmarks/results/lowrank_layout.md``): with
freed memory retained, eager dense ResNet-56 at batch 64 took 114 instead of
176 ms, and the factorised models gained even more. Tuned allocators
(jemalloc, tcmalloc) avoid the same cost; :func:`retain_freed_memory` does it
in-process with glibc's ``mallopt`` so that both sides of a speed-up are
measured without it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

__all__ = ["retain_freed_memory"]

# glibc <malloc.h> parameter numbers
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# glibc refuses an mmap threshold above HEAP_MAX_SIZE / 2 (32 MiB on 64-bit).
_MMAP_THRESHOLD = 32 * 1024 * 1024
_TRIM_THRESHOLD = 2**31 - 1

_applied = False


def retain_freed_memory() -> bool:
    """Make glibc keep freed blocks instead of returning them to the kernel.

    Sets the mmap threshold to its maximum (blocks up to 32 MiB come from the
    heap and are reused) and the trim threshold to 2 GiB (the heap is not
    shrunk after each free). Process-wide and not undone; memory the process
    has used stays mapped, as with any caching allocator. Returns whether the
    settings were applied: ``False`` on platforms without glibc (macOS,
    Windows, musl), where timings run under the platform's allocator.
    """
    global _applied
    if _applied:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD) == 1
    ok = mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD) == 1 and ok
    _applied = ok
    return ok
