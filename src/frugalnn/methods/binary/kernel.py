"""Packed-bit arithmetic: signs stored one bit each, dot products by XNOR and popcount.

A vector of ``K`` signs (+1 / -1) is stored as ``K / w`` unsigned words of
``w`` bits (``w`` = 8, 16, 32 or 64; bit set = +1). For two such vectors the
dot product of the signs is ``K - 2 * popcount(a XOR b)``: every bit where the
signs agree adds 1, every bit where they differ subtracts 1. :func:`xnor_matmul`
does this for every row pair of two packed matrices, by one of two kernels:

- ``"c"``: a small C function (``__builtin_popcountll`` on 64-bit words, four
  output columns per pass over a row), compiled on first use with the system C
  compiler (``cc``, ``-O3 -march=native``) into the user cache
  (``$FRUGALNN_CACHE`` or ``~/.cache/frugalnn``) and called through ctypes;
- ``"numpy"``: numpy's vectorised ``bitwise_xor`` and ``bitwise_count``
  (numpy >= 2.0), any word size; no Python loop over elements, only over
  blocks of rows so the temporary stays small.

``"auto"`` takes the C kernel for 64-bit words when a compiler is there, numpy
otherwise. Both give the same integers.

The result is exact integer arithmetic, so a packed layer reproduces the
float layer that multiplies the same +1 / -1 values (whose sums of at most
2**24 terms are exact in float32).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from frugalnn.errors import UserError

__all__ = [
    "KERNELS",
    "WORD_BITS",
    "c_kernel_available",
    "check_width",
    "pack_signs",
    "resolve_kernel",
    "unpack_signs",
    "xnor_gemm",
    "xnor_matmul",
]

#: Supported packing words (bits) and their numpy dtypes.
WORD_BITS = {8: np.uint8, 16: np.uint16, 32: np.uint32, 64: np.uint64}
#: Target size of the XOR temporary of one block of rows, in bytes.
_BLOCK_BYTES = 1 << 21
KERNELS = ("auto", "c", "numpy")

_C_SOURCE = r"""
#include <stdint.h>
void xnor_gemm(const uint64_t *a, const uint64_t *b, int32_t *out,
               int64_t m, int64_t n, int64_t words, int64_t width) {
    for (int64_t i = 0; i < m; i++) {
        const uint64_t *ar = a + i * words;
        int64_t j = 0;
        for (; j + 4 <= n; j += 4) {
            const uint64_t *b0 = b + j * words, *b1 = b0 + words, *b2 = b1 + words,
                           *b3 = b2 + words;
            int64_t c0 = 0, c1 = 0, c2 = 0, c3 = 0;
            for (int64_t w = 0; w < words; w++) {
                uint64_t x = ar[w];
                c0 += __builtin_popcountll(x ^ b0[w]);
                c1 += __builtin_popcountll(x ^ b1[w]);
                c2 += __builtin_popcountll(x ^ b2[w]);
                c3 += __builtin_popcountll(x ^ b3[w]);
            }
            int32_t *o = out + i * n + j;
            o[0] = (int32_t)(width - 2 * c0);
            o[1] = (int32_t)(width - 2 * c1);
            o[2] = (int32_t)(width - 2 * c2);
            o[3] = (int32_t)(width - 2 * c3);
        }
        for (; j < n; j++) {
            const uint64_t *br = b + j * words;
            int64_t c = 0;
            for (int64_t w = 0; w < words; w++) c += __builtin_popcountll(ar[w] ^ br[w]);
            out[i * n + j] = (int32_t)(width - 2 * c);
        }
    }
}
"""


def _cache_dir() -> Path:
    root = os.environ.get("FRUGALNN_CACHE") or Path.home() / ".cache" / "frugalnn"
    return Path(root) / "binary"


@lru_cache(maxsize=1)
def _c_library() -> ctypes.CDLL | None:
    """The compiled C kernel (built once per source and machine), or ``None`` without ``cc``."""
    compiler = shutil.which(os.environ.get("CC", "cc"))
    if compiler is None:
        return None
    digest = hashlib.sha256((_C_SOURCE + os.uname().machine).encode()).hexdigest()[:16]
    lib = _cache_dir() / f"xnor_gemm_{digest}.so"
    if not lib.is_file():
        lib.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=lib.parent) as tmp:
            src = Path(tmp) / "xnor_gemm.c"
            src.write_text(_C_SOURCE)
            built = Path(tmp) / lib.name
            cmd = [compiler, "-O3", "-march=native", "-shared", "-fPIC", "-o", str(built),
                   str(src)]
            if subprocess.run(cmd, capture_output=True).returncode != 0:
                return None
            os.replace(built, lib)
    handle = ctypes.CDLL(str(lib))
    ptr = np.ctypeslib.ndpointer
    handle.xnor_gemm.argtypes = [ptr(np.uint64, flags="C"), ptr(np.uint64, flags="C"),
                                 ptr(np.int32, flags="C")] + [ctypes.c_int64] * 4
    handle.xnor_gemm.restype = None
    return handle


def c_kernel_available() -> bool:
    """Whether the compiled C kernel can be used on this machine."""
    return _c_library() is not None


def resolve_kernel(kernel: str, word_bits: int) -> str:
    """The kernel ``"auto"`` means here (``"c"`` for 64-bit words with a compiler)."""
    if kernel not in KERNELS:
        raise UserError(f"unknown binary kernel {kernel!r}; use one of {', '.join(KERNELS)}")
    if kernel == "auto":
        return "c" if word_bits == 64 and c_kernel_available() else "numpy"
    if kernel == "c" and word_bits != 64:
        raise UserError(f"the C kernel packs 64-bit words; got word_bits={word_bits}")
    if kernel == "c" and not c_kernel_available():
        raise UserError("the C kernel needs a C compiler (cc); use kernel='numpy'")
    return kernel


def check_width(width: int, word_bits: int, where: str = "binary layer") -> None:
    """Refuse a packed width that is not a whole number of words (one clear line)."""
    if word_bits not in WORD_BITS:
        raise UserError(f"packing word must be one of {sorted(WORD_BITS)} bits, got {word_bits}")
    if width % word_bits:
        raise UserError(
            f"{where}: binary width {width} is not a multiple of the {word_bits}-bit packing "
            f"word; use widths that are multiples of {word_bits} or a smaller word_bits "
            "(8, 16, 32), or exclude the layer")


def pack_signs(x: torch.Tensor | np.ndarray, word_bits: int = 64) -> np.ndarray:
    """Pack the signs of the last axis of ``x`` (``>= 0`` -> bit 1) into words.

    ``x`` of shape ``(..., K)`` gives a ``uint{word_bits}`` array ``(..., K / word_bits)``.
    """
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    k = x.shape[-1]
    check_width(k, word_bits, "pack_signs")
    bits = np.packbits(x >= 0, axis=-1, bitorder="little")  # (..., K/8) uint8
    return np.ascontiguousarray(bits).view(WORD_BITS[word_bits])


def unpack_signs(packed: np.ndarray, width: int) -> np.ndarray:
    """The +1 / -1 float32 values that :func:`pack_signs` packed (last axis ``width``)."""
    as_bytes = np.ascontiguousarray(packed).view(np.uint8)
    bits = np.unpackbits(as_bytes, axis=-1, count=width, bitorder="little")
    return bits.astype(np.float32) * 2.0 - 1.0


def xnor_matmul(a: np.ndarray, b: np.ndarray, width: int, kernel: str = "auto") -> np.ndarray:
    """Sign dot products of every row of ``a`` ``(M, W)`` with every row of ``b`` ``(N, W)``.

    Both are packed with the same word; ``width`` is the number of signs per
    row. Returns ``int32 (M, N)`` = ``width - 2 * popcount(a XOR b)`` summed
    over the words. ``kernel``: ``"auto"``, ``"c"`` or ``"numpy"`` (see the module).
    """
    if a.dtype != b.dtype or a.shape[-1] != b.shape[-1]:
        raise ValueError(f"packed operands differ: {a.dtype}{a.shape} vs {b.dtype}{b.shape}")
    m, words = a.shape
    n = b.shape[0]
    out = np.empty((m, n), dtype=np.int32)
    if resolve_kernel(kernel, a.itemsize * 8) == "c":
        lib = _c_library()
        assert lib is not None
        lib.xnor_gemm(np.ascontiguousarray(a), np.ascontiguousarray(b), out, m, n, words,
                      width)
        return out
    rows = max(1, _BLOCK_BYTES // max(1, n * words * a.itemsize))
    xor = np.empty((min(rows, m), n, words), dtype=a.dtype)
    count = np.empty(xor.shape, dtype=np.uint8)
    for start in range(0, m, rows):
        stop = min(m, start + rows)
        x = xor[: stop - start]
        c = count[: stop - start]
        np.bitwise_xor(a[start:stop, None, :], b[None, :, :], out=x)
        np.bitwise_count(x, out=c)
        differ = c.sum(axis=-1, dtype=np.int32)
        np.subtract(width, 2 * differ, out=out[start:stop])
    return out


_UNSIGNED = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


@torch.library.custom_op("frugalnn_binary::xnor_gemm", mutates_args=())
def xnor_gemm(a: torch.Tensor, b: torch.Tensor, width: int, kernel: str) -> torch.Tensor:
    """:func:`xnor_matmul` as a torch op on packed words stored as integer tensors.

    Being a dispatched op (``frugalnn_binary.xnor_gemm``), the FLOP counter sees
    it: :mod:`frugalnn.cost.bits` counts it as ``2 * M * N * width`` FLOPs of
    precision ``binary`` (one multiply-accumulate per sign pair).
    """
    unsigned = _UNSIGNED[a.element_size()]
    out = xnor_matmul(a.contiguous().numpy().view(unsigned), b.contiguous().numpy().view(unsigned),
                      width, kernel)
    return torch.from_numpy(out)


@xnor_gemm.register_fake
def _xnor_gemm_fake(a: torch.Tensor, b: torch.Tensor, width: int, kernel: str) -> torch.Tensor:
    return a.new_empty((a.shape[0], b.shape[0]), dtype=torch.int32)


def _xnor_gemm_flops(args: tuple, out: torch.Tensor) -> int:
    return 2 * out.numel() * int(args[2])


try:  # precision-labelled counting (frugalnn.cost.bits), where this version has it
    from frugalnn.cost.bits import register_precision_op
except ImportError:  # pragma: no cover
    pass
else:
    register_precision_op("frugalnn_binary.xnor_gemm", _xnor_gemm_flops, "binary")
