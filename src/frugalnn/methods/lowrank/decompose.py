"""Tensor decompositions of layer weights, computed with TensorLy.

Every function takes a dense weight (a ``torch.Tensor``), works in float64 on
the NumPy backend (so the global TensorLy backend chosen by other code does not
matter) and returns float64 NumPy factors that :mod:`frugalnn.methods.lowrank.layers`
turns into convolution/linear weights. Ranks are validated here: a rank larger
than the tensor allows is a ``UserError``, not a silent clamp, because the user
asked for something impossible.

The small dense SVDs inside the decompositions run on one BLAS thread
(``threadpoolctl``, installed with scikit-learn): with a multi-threaded BLAS on
a shared CPU, thread oversubscription made one Tucker-2 of a 64x64x3x3 kernel
take two minutes instead of 0.06 s.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import tensorly as tl
import torch
from tensorly.decomposition import parafac, partial_tucker, tensor_train
from threadpoolctl import threadpool_limits

from frugalnn.errors import UserError


def _np(weight: torch.Tensor) -> np.ndarray:
    return weight.detach().to("cpu", torch.float64).numpy()


def singular_values(matrix: np.ndarray) -> np.ndarray:
    """Singular values of a small dense matrix, computed on one BLAS thread."""
    with threadpool_limits(1):
        return np.linalg.svd(np.asarray(matrix, dtype=np.float64), compute_uv=False)


def check_rank(rank: int, maximum: int, what: str) -> int:
    """``rank`` as an int in ``[1, maximum]``, else a ``UserError`` naming the limit."""
    r = int(rank)
    if r < 1 or r > maximum:
        raise UserError(
            f"rank {rank} for {what} is impossible; choose a rank between 1 and {maximum}"
        )
    return r


@dataclass
class SVDFactors:
    """``W ≈ left @ right`` with ``left`` (out, r) and ``right`` (r, in), balanced by sqrt(S)."""

    left: np.ndarray
    right: np.ndarray
    singular_values: np.ndarray


def svd_factors(weight: torch.Tensor, rank: int,
                whiten: np.ndarray | None = None) -> SVDFactors:
    """Truncated SVD of a matrix; singular values split evenly between the two factors.

    ``whiten``: a lower-triangular ``L`` with ``L L^T`` the second moment of the
    layer's inputs (:func:`frugalnn.methods.lowrank.calibrate.input_whitening`).
    Then ``W L`` is truncated and its right factor mapped back through ``L^-1``:
    the rank-``r`` factors whose *outputs* on those inputs are closest to the
    layer's (least squares), instead of the closest weights. ``singular_values``
    are then those of ``W L``.
    """
    w = _np(weight)
    rank = check_rank(rank, min(w.shape), f"a {w.shape[0]}x{w.shape[1]} matrix")
    with threadpool_limits(1):
        u, s, vt = np.linalg.svd(w if whiten is None else w @ whiten, full_matrices=False)
    root = np.sqrt(s[:rank])
    right = root[:, None] * vt[:rank]
    if whiten is not None:
        from scipy.linalg import solve_triangular

        right = solve_triangular(whiten, right.T, lower=True, trans="T").T  # right @ L^-1
    return SVDFactors(u[:, :rank] * root, right, s)


@dataclass
class CPFactors:
    """``W[o,i,h,w] = sum_r out[o,r] in_[i,r] kh[h,r] kw[w,r]``, components strongest first."""

    out: np.ndarray
    in_: np.ndarray
    kh: np.ndarray
    kw: np.ndarray


def cp_factors(
    weight: torch.Tensor, rank: int, *, n_iter_max: int = 50, random_state: int = 0
) -> CPFactors:
    """CP decomposition of a 4-D conv weight by ALS (``tensorly.decomposition.parafac``).

    ALS is a local method: even at a rank where an exact decomposition exists it
    may stop short of it. Components are sorted by magnitude (so that dropping
    the last ones at run time removes the weakest) and each factor gets the
    fourth root of the magnitude, which keeps the four factors on one scale
    for fine-tuning.
    """
    w = _np(weight)
    o, i, kh, kw = w.shape
    # The CP rank of a tensor is at most the product of all but its largest mode.
    dims = sorted([o, i, kh, kw])
    rank = check_rank(rank, dims[0] * dims[1] * dims[2], f"CP of a {o}x{i}x{kh}x{kw} kernel")
    with threadpool_limits(1), tl.backend_context("numpy"), warnings.catch_warnings():
        # TensorLy's SVD init pads short modes (e.g. a 3-wide kernel) with
        # random vectors and warns about it; that is expected here.
        warnings.filterwarnings("ignore", message="Trying to compute SVD")
        cp = parafac(
            w, rank, n_iter_max=n_iter_max, init="svd" if rank <= min(o, i) else "random",
            tol=1e-8, random_state=random_state, normalize_factors=True,
        )
    weights = np.asarray(cp.weights, dtype=np.float64)
    factors = [np.asarray(f, dtype=np.float64) for f in cp.factors]
    # Fold signs into the first factor so every weight is non-negative, then sort.
    sign = np.sign(weights)
    sign[sign == 0] = 1.0
    factors[0] = factors[0] * sign
    weights = np.abs(weights)
    order = np.argsort(-weights)
    scale = weights[order] ** 0.25
    f = [fac[:, order] * scale for fac in factors]
    return CPFactors(out=f[0], in_=f[1], kh=f[2], kw=f[3])


@dataclass
class TuckerFactors:
    """Tucker-2: ``W = core x_0 out x_1 in_`` (spatial modes kept dense)."""

    core: np.ndarray  # (r_out, r_in, kh, kw)
    out: np.ndarray  # (o, r_out)
    in_: np.ndarray  # (i, r_in)


def tucker2_factors(weight: torch.Tensor, ranks: tuple[int, int]) -> TuckerFactors:
    """Tucker-2 decomposition of a conv weight (``tensorly.decomposition.partial_tucker``).

    ``ranks = (r_in, r_out)``. With full ranks the factors are orthogonal bases
    of the whole mode spaces, so the reconstruction is exact.
    """
    w = _np(weight)
    o, i = w.shape[:2]
    r_in = check_rank(ranks[0], i, f"the input mode of a {o}x{i} kernel (Tucker)")
    r_out = check_rank(ranks[1], o, f"the output mode of a {o}x{i} kernel (Tucker)")
    with threadpool_limits(1), tl.backend_context("numpy"), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Trying to compute SVD")
        (core, factors), _ = partial_tucker(
            w, rank=[r_out, r_in], modes=[0, 1], init="svd", n_iter_max=100, tol=1e-8
        )
    return TuckerFactors(np.asarray(core), np.asarray(factors[0]), np.asarray(factors[1]))


def tt_max_ranks(o: int, i: int, kh: int, kw: int) -> tuple[int, int, int]:
    """Largest useful TT ranks of a kernel ordered ``(in, kh, kw, out)``."""
    return (min(i, kh * kw * o), min(i * kh, kw * o), min(i * kh * kw, o))


@dataclass
class TTFactors:
    """Tensor-train of the kernel ordered ``(in, kh, kw, out)``: four cores."""

    cores: list[np.ndarray]  # (1,i,r1), (r1,kh,r2), (r2,kw,r3), (r3,o,1)


def tt_factors(weight: torch.Tensor, ranks: tuple[int, int, int]) -> TTFactors:
    """TT-SVD (``tensorly.decomposition.tensor_train``) of a conv weight.

    The kernel is permuted to ``(in, kh, kw, out)`` so that the train can be
    run as 1x1 -> Kx1 -> 1xK -> 1x1 convolutions.
    """
    w = _np(weight)
    o, i, kh, kw = w.shape
    rs = check_tt_ranks(ranks, o, i, kh, kw)
    with threadpool_limits(1), tl.backend_context("numpy"):
        tt = tensor_train(np.ascontiguousarray(w.transpose(1, 2, 3, 0)), [1, *rs, 1])
    full = [1, *rs, 1]
    cores = []
    for n, core in enumerate(tt.factors):
        core = np.asarray(core)
        # TT-SVD returns thinner cores when a step has fewer singular vectors
        # than asked for; zero padding keeps the requested structure exactly.
        padded = np.zeros((full[n], core.shape[1], full[n + 1]))
        padded[: core.shape[0], :, : core.shape[2]] = core
        cores.append(padded)
    return TTFactors(cores)


def check_tt_ranks(ranks: tuple[int, ...], o: int, i: int, kh: int, kw: int) -> list[int]:
    """Validate TT ranks left to right as TT-SVD builds them."""
    if len(ranks) != 3:
        raise UserError(f"tensor-train needs 3 ranks (r1, r2, r3), got {list(ranks)}")
    what = f"a {o}x{i}x{kh}x{kw} kernel"
    r1 = check_rank(ranks[0], min(i, kh * kw * o), f"TT rank 1 of {what}")
    r2 = check_rank(ranks[1], min(r1 * kh, kw * o), f"TT rank 2 of {what} (given r1={r1})")
    # r3 = out is always allowed: a full last core is absorbed (TTConv2d), and
    # the TT-SVD cores are zero-padded up to it when r2 * kw < out.
    r3 = int(ranks[2]) if int(ranks[2]) == o else check_rank(
        ranks[2], min(r2 * kw, o), f"TT rank 3 of {what} (given r2={r2})")
    return [r1, r2, r3]
