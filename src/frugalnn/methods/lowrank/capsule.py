"""Factorised capsule transformations: CP, Tucker-2 and tensor-train of the pose tensor.

A capsule layer's transformation tensor ``W`` has shape
``(in_caps, out_caps, out_dim, in_dim)`` (:class:`frugalnn.models.capsnet.CapsuleTransform`):
``u_hat[b, i, j] = W[i, j] @ u[b, i]``. The layers here compute the same
predictions from the factors of ``W`` (decomposed by
:mod:`frugalnn.methods.lowrank.decompose`, TensorLy) without rebuilding it, as
a chain of products that ``FlopCounterMode`` counts (``N_in``/``N_out``: input
and output capsules; ``D_in``/``D_out``: their dimensions):

=========  =======================================================  ==========================
method     factors                                                  FLOPs per example / 2N_in
=========  =======================================================  ==========================
``cp``     ``W = sum_r A[i,r] B[j,r] C[o,r] D[d,r]``                ``R (D_in + N_out D_out)``
``tucker`` Tucker-2 of the pose modes: ``D`` (D_in x r_in), core    ``D_in r_in +
           ``G[i, r_in, j, r_out]``, ``C`` (D_out x r_out)            N_out r_out (r_in + D_out)``
``tt``     tensor-train of ``W`` ordered ``(D_in, N_in, N_out,      ``D_in r1 + r1 r2 +
           D_out)``: cores ``(D_in, r1)``, ``(r1, N_in, r2)``,        N_out r3 (r2 + D_out)``
           ``(r2, N_out, r3)``, ``(r3, D_out)``
=========  =======================================================  ==========================

The dense layer costs ``2 N_in N_out D_out D_in`` FLOPs per example (the
elementwise scalings of the CP chain are not multiply-adds and are not
counted, as everywhere in :mod:`frugalnn.cost`). Ranks are ``(R,)`` for CP,
``(r_in, r_out)`` for Tucker and ``(r1, r2, r3)`` for TT; a rank larger than
the tensor allows is a one-line ``UserError``. At full Tucker / TT ranks the
factorisation is exact; CP is fitted by ALS and exact only where ALS finds
an exact decomposition.

Rank selection (:func:`select_ranks`) follows the targets of
:mod:`frugalnn.methods.lowrank.rank`: ``rank=``, ``flops=X`` / ``params=X``
(every rank scaled in proportion to its maximum, the largest that fits, in
steps of ``multiple``), ``energy=E`` / ``vbmf`` on the unfoldings that set
each rank (CP: the larger of the two Tucker ranks). Like the other chains the
layers have the run-time ``rank_fraction`` knob (leading components only).
"""

from __future__ import annotations

import abc
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from frugalnn.errors import UserError
from frugalnn.methods.lowrank import decompose as dec
from frugalnn.methods.lowrank.layers import FactorizedLayer
from frugalnn.methods.lowrank.rank import Criterion, energy_rank
from frugalnn.methods.lowrank.vbmf import evbmf
from frugalnn.models.capsnet import CapsuleTransform, check_capsule_input

METHODS = ("cp", "tucker", "tt")


@dataclass(frozen=True)
class CapsuleSpec:
    """The geometry of a capsule transformation (``W``: in_caps x out_caps x out_dim x in_dim)."""

    in_caps: int
    out_caps: int
    in_dim: int
    out_dim: int

    @classmethod
    def of(cls, module: nn.Module) -> CapsuleSpec:
        return cls(module.in_caps, module.out_caps, module.in_dim, module.out_dim)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return self.in_caps, self.out_caps, self.out_dim, self.in_dim

    def describe(self) -> str:
        return f"capsules {self.in_caps}x{self.in_dim}D->{self.out_caps}x{self.out_dim}D"

    def dense_params(self) -> int:
        return math.prod(self.shape)

    def dense_flops(self) -> int:
        return 2 * math.prod(self.shape)


def is_capsule_layer(module: nn.Module) -> bool:
    """A dense capsule transformation, or a factorised one."""
    return isinstance(module, (CapsuleTransform, FactorizedCapsuleTransform))


# ----------------------------------------------------------------------- costs and limits


def chain_params(method: str, s: CapsuleSpec, ranks: tuple[int, ...]) -> int:
    ni, nj, di, do = s.in_caps, s.out_caps, s.in_dim, s.out_dim
    if method == "cp":
        return ranks[0] * (ni + nj + do + di)
    if method == "tucker":
        ri, ro = ranks
        return di * ri + ni * ri * nj * ro + do * ro
    if method == "tt":
        r1, r2, r3 = ranks
        return di * r1 + r1 * ni * r2 + r2 * nj * r3 + r3 * do
    raise ValueError(method)


def chain_flops(method: str, s: CapsuleSpec, ranks: tuple[int, ...]) -> int:
    """FLOPs of the factorised chain for one example (2 per multiply-add)."""
    ni, nj, di, do = s.in_caps, s.out_caps, s.in_dim, s.out_dim
    if method == "cp":
        return 2 * ni * ranks[0] * (di + nj * do)
    if method == "tucker":
        ri, ro = ranks
        return 2 * ni * (di * ri + nj * ro * (ri + do))
    if method == "tt":
        r1, r2, r3 = ranks
        return 2 * ni * (di * r1 + r1 * r2 + nj * r3 * (r2 + do))
    raise ValueError(method)


def chain_cost(method: str, s: CapsuleSpec, ranks: tuple[int, ...], measure: str) -> int:
    return chain_params(method, s, ranks) if measure == "params" else chain_flops(method, s, ranks)


def dense_cost(s: CapsuleSpec, measure: str) -> int:
    return s.dense_params() if measure == "params" else s.dense_flops()


def max_ranks(method: str, s: CapsuleSpec) -> tuple[int, ...]:
    """The largest ranks of each method (TT: at full earlier ranks)."""
    if method not in METHODS:
        raise UserError(f"capsule layers factorise with {', '.join(METHODS)}, not {method!r}")
    ni, nj, di, do = s.in_caps, s.out_caps, s.in_dim, s.out_dim
    if method == "cp":
        return (math.prod(sorted(s.shape)[:3]),)
    if method == "tucker":
        return (di, do)
    r1 = min(di, ni * nj * do)
    r2 = min(r1 * ni, nj * do)
    return (r1, r2, min(r2 * nj, do))


def check_ranks(method: str, s: CapsuleSpec, ranks: tuple[int, ...]) -> tuple[int, ...]:
    """``ranks`` as ints if ``method`` can build them for ``s``, else a one-line ``UserError``."""
    limits = max_ranks(method, s)
    r = tuple(int(v) for v in ranks)
    ok = len(r) == len(limits) and min(r) >= 1
    if ok and method == "tt":
        r1, r2, r3 = r
        ok = (r1 <= limits[0] and r2 <= min(r1 * s.in_caps, limits[1])
              and r3 <= s.out_dim and (r3 == s.out_dim or r3 <= r2 * s.out_caps))
    elif ok:
        ok = all(v <= m for v, m in zip(r, limits))
    if not ok:
        raise UserError(
            f"{method} ranks {','.join(map(str, ranks))} are impossible for the "
            f"{'x'.join(map(str, s.shape))} capsule tensor (in_caps x out_caps x out_dim x "
            f"in_dim); give {len(limits)} rank(s) between 1 and {','.join(map(str, limits))}"
        )
    return r


def feasible(method: str, s: CapsuleSpec, ranks: tuple[int, ...]) -> tuple[int, ...]:
    """Clamp ranks into what ``method`` can build (at least 1 each)."""
    limits = max_ranks(method, s)
    r = [max(1, min(int(v), m)) for v, m in zip(ranks, limits)]
    if method == "tt":
        r[1] = min(r[1], r[0] * s.in_caps)
        r[2] = min(r[2], r[1] * s.out_caps)
    return tuple(r)


def scaled_ranks(method: str, s: CapsuleSpec, t: int) -> tuple[int, ...]:
    limits = max_ranks(method, s)
    top = max(limits)
    return feasible(method, s, tuple(math.ceil(t * m / top) for m in limits))


# ----------------------------------------------------------------------- rank selection


def unfoldings(method: str, weight: torch.Tensor) -> list[np.ndarray]:
    """The matrices whose spectra set each rank (see the module docstring)."""
    w = weight.detach().to("cpu", torch.float64).numpy()
    ni, nj, do, di = w.shape
    if method in ("tucker", "cp"):
        return [w.transpose(3, 0, 1, 2).reshape(di, -1), w.transpose(2, 0, 1, 3).reshape(do, -1)]
    p = w.transpose(3, 0, 1, 2)  # (in_dim, in_caps, out_caps, out_dim)
    return [p.reshape(di, -1), p.reshape(di * ni, -1), p.reshape(di * ni * nj, -1)]


def select_ranks(method: str, s: CapsuleSpec, weight: torch.Tensor, criterion: Criterion,
                 multiple: int = 1) -> tuple[int, ...] | None:
    """Ranks for one capsule layer under ``criterion``; ``None``: keep it dense."""
    if criterion.kind == "latency":
        raise UserError("a latency target chooses convolution ranks only; give capsule layers "
                        "a flops=, params=, rank=, energy= or vbmf target")
    measure = "params" if criterion.kind == "params" else "flops"
    if criterion.kind in ("flops", "params"):
        budget = dense_cost(s, measure) / criterion.value
        size = max(max_ranks(method, s))
        step = multiple if 1 < multiple <= size else 1

        def fits(t: int) -> bool:
            return chain_cost(method, s, scaled_ranks(method, s, t * step), measure) <= budget

        if not fits(1):
            return None
        lo, hi = 1, size // step
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
        return scaled_ranks(method, s, lo * step)
    if criterion.kind == "rank":
        want = criterion.ranks
        if len(want) == 1:
            want = want * len(max_ranks(method, s))
        ranks = check_ranks(method, s, want)
    else:
        found = []
        for mat in unfoldings(method, weight):
            if criterion.kind == "vbmf":
                found.append(max(1, evbmf(mat).rank))
            else:
                found.append(energy_rank(dec.singular_values(mat), criterion.value))
        ranks = feasible(method, s, (max(found),) if method == "cp" else tuple(found))
    if chain_cost(method, s, ranks, measure) >= dense_cost(s, measure):
        return None
    return ranks


# ----------------------------------------------------------------------- layers


def _keep(rank: int, fraction: float) -> int:
    return max(1, int(round(rank * fraction)))


def _param(*shape: int) -> nn.Parameter:
    return nn.Parameter(torch.zeros(*shape))


class FactorizedCapsuleTransform(FactorizedLayer, abc.ABC):
    """Common geometry of the factorised capsule transformations."""

    def __init__(self, spec: CapsuleSpec, ranks: tuple[int, ...]) -> None:
        super().__init__(check_ranks(self.method, spec, ranks))
        self.spec = spec
        self.in_caps, self.out_caps = spec.in_caps, spec.out_caps
        self.in_dim, self.out_dim = spec.in_dim, spec.out_dim

    def active_ranks(self) -> tuple[int, ...]:
        if self.rank_fraction == 1.0:
            return self.ranks
        return feasible(self.method, self.spec,
                        tuple(_keep(r, self.rank_fraction) for r in self.ranks))

    def flops(self) -> int:
        """FLOPs for one example at the active ranks."""
        return chain_flops(self.method, self.spec, self.active_ranks())

    @classmethod
    def from_dense(cls, module: nn.Module, ranks: tuple[int, ...]) -> FactorizedCapsuleTransform:
        spec = CapsuleSpec.of(module)
        layer = cls(spec, ranks).to(module.weight.device, module.weight.dtype)
        with torch.no_grad():
            for p, value in zip(layer.parameters(), layer._factors(module.weight)):
                p.copy_(torch.as_tensor(value, dtype=p.dtype, device=p.device).reshape(p.shape))
        return layer

    @abc.abstractmethod
    def _factors(self, weight: torch.Tensor) -> list[np.ndarray]:
        """The factors of ``weight``, in the order of this chain's parameters."""


class CPCapsuleTransform(FactorizedCapsuleTransform):
    """``u_hat = ((u @ D) * A) @ (B (x) C)^T``: rank-R CP of ``W``."""

    method = "cp"

    def __init__(self, spec: CapsuleSpec, ranks: tuple[int, ...]) -> None:
        super().__init__(spec, ranks)
        (r,) = self.ranks
        self.caps_in, self.caps_out = _param(spec.in_caps, r), _param(spec.out_caps, r)
        self.pose_out, self.pose_in = _param(spec.out_dim, r), _param(spec.in_dim, r)

    def _factors(self, weight: torch.Tensor) -> list[np.ndarray]:
        f = dec.cp_factors(weight, self.ranks[0])
        return [f.out, f.in_, f.kh, f.kw]  # modes (in_caps, out_caps, out_dim, in_dim)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        check_capsule_input(u, self.in_caps, self.in_dim)
        (k,) = self.active_ranks()
        t = (u @ self.pose_in[:, :k]) * self.caps_in[:, :k]  # (B, N_in, k)
        mix = self.caps_out[:, None, :k] * self.pose_out[None, :, :k]  # (N_out, D_out, k)
        out = t @ mix.reshape(-1, k).t()
        return out.view(u.shape[0], self.in_caps, self.out_caps, self.out_dim)


class TuckerCapsuleTransform(FactorizedCapsuleTransform):
    """Tucker-2 of the pose modes: ``u @ D``, then a per-capsule core, then ``C``."""

    method = "tucker"

    def __init__(self, spec: CapsuleSpec, ranks: tuple[int, ...]) -> None:
        super().__init__(spec, ranks)
        ri, ro = self.ranks
        self.pose_in = _param(spec.in_dim, ri)
        self.core = _param(spec.in_caps, ri, spec.out_caps, ro)
        self.pose_out = _param(spec.out_dim, ro)

    def _factors(self, weight: torch.Tensor) -> list[np.ndarray]:
        # Viewed as (out_dim, in_dim, in_caps, out_caps): Tucker-2 compresses modes 0 and 1.
        f = dec.tucker2_factors(weight.permute(2, 3, 0, 1), self.ranks)
        return [f.in_, f.core.transpose(2, 1, 3, 0), f.out]

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        check_capsule_input(u, self.in_caps, self.in_dim)
        ri, ro = self.active_ranks()
        v = u @ self.pose_in[:, :ri]  # (B, N_in, ri)
        w = torch.einsum("bis,isjq->bijq", v, self.core[:, :ri, :, :ro])
        return w @ self.pose_out[:, :ro].t()


class TTCapsuleTransform(FactorizedCapsuleTransform):
    """Tensor-train of ``W`` ordered ``(in_dim, in_caps, out_caps, out_dim)``."""

    method = "tt"

    def __init__(self, spec: CapsuleSpec, ranks: tuple[int, ...]) -> None:
        super().__init__(spec, ranks)
        r1, r2, r3 = self.ranks
        self.core_in = _param(spec.in_dim, r1)
        self.core_caps_in = _param(r1, spec.in_caps, r2)
        self.core_caps_out = _param(r2, spec.out_caps, r3)
        self.core_out = _param(r3, spec.out_dim)

    def _factors(self, weight: torch.Tensor) -> list[np.ndarray]:
        # tt_factors orders a (o, i, kh, kw) tensor as (i, kh, kw, o): give it
        # (out_dim, in_dim, in_caps, out_caps) to get (in_dim, in_caps, out_caps, out_dim).
        return dec.tt_factors(weight.permute(2, 3, 0, 1), self.ranks).cores

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        check_capsule_input(u, self.in_caps, self.in_dim)
        k1, k2, k3 = self.active_ranks()
        a = u @ self.core_in[:, :k1]  # (B, N_in, k1)
        c = torch.einsum("bir,ris->bis", a, self.core_caps_in[:k1, :, :k2])
        e = c @ self.core_caps_out[:k2, :, :k3].reshape(k2, -1)  # (B, N_in, N_out * k3)
        e = e.view(u.shape[0], self.in_caps, self.out_caps, k3)
        return e @ self.core_out[:k3]


LAYERS: dict[str, type[FactorizedCapsuleTransform]] = {
    "cp": CPCapsuleTransform, "tucker": TuckerCapsuleTransform, "tt": TTCapsuleTransform,
}


def factorise(module: nn.Module, method: str, ranks: tuple[int, ...],
              from_weights: bool = True) -> FactorizedCapsuleTransform:
    """The factorised replacement of a capsule transformation (weights decomposed from
    ``module``, or left for a checkpoint to fill when ``from_weights`` is false)."""
    if method not in LAYERS:
        raise UserError(f"capsule layers factorise with {', '.join(METHODS)}, not {method!r}")
    cls = LAYERS[method]
    if from_weights:
        return cls.from_dense(module, ranks)
    w = module.weight
    return cls(CapsuleSpec.of(module), ranks).to(w.device, w.dtype)
