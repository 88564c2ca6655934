"""Per-layer rank selection: fixed rank, compression target, spectral energy, VBMF.

A *criterion* is parsed from the ``--target`` string of the CLI:

=================  ===========================================================
``rank=R``         the same rank for every layer (``R`` or ``R1,R2[,R3]``)
``flops=X``        the largest ranks whose chain has at most 1/X of the layer's
                   FLOPs (``params=X``: of its parameters)
``energy=E``       the smallest ranks keeping a fraction E of the squared
                   singular values of the relevant unfoldings
``vbmf``           ranks estimated by EVBMF on the unfoldings (Kim et al. 2016)
``model-flops=X``  whole-model target: the model at most 1/X of its FLOPs
                   (``model-params=X``: parameters), ranks allocated across the
                   layers by spectral energy (see :mod:`frugalnn.methods.lowrank.allocate`)
``latency=F``      whole-model target: F x the dense model's measured latency
                   (see :mod:`frugalnn.methods.lowrank.latency_select`)
=================  ===========================================================

``rank_multiple=M`` (``--rank-multiple``) restricts the ``flops``/``params``
(and ``model-*``) ladder to ranks that are multiples of M: the climbing rank is rounded *down*
(so the layer still meets its target), and a layer whose budget is below M
keeps its unaligned rank. Kernels work on blocks of channels (GPU tensor cores
want multiples of 8), so a rank just past a block boundary costs nearly a
whole extra block: on a 2-core AMD EPYC (2026-12-02) the steps were 16 channels
wide, and a 32-channel Kx1 -> 1xK chain ran 1.84x faster than the dense layer
at rank 16 but 1.10x at rank 20 (``benchmarks/lowrank_rank_steps.py``).

Which unfoldings: SVD uses the matrix itself; Tucker-2 the mode-1 (input) and
mode-0 (output) unfoldings; tensor-train the three sequential unfoldings of the
kernel ordered ``(in, kh, kw, out)``, as TT-SVD does; CP has no such spectral
rank, so it takes the larger of the two Tucker ranks (a heuristic, said here
because it is one). A layer whose selected chain would not be cheaper than the
dense layer (by the measure being targeted, FLOPs otherwise) is left dense.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from frugalnn.errors import UserError
from frugalnn.methods.lowrank.costs import chain_flops, chain_params
from frugalnn.methods.lowrank.decompose import singular_values
from frugalnn.methods.lowrank.geometry import ConvSpec
from frugalnn.methods.lowrank.vbmf import evbmf

KINDS = ("rank", "flops", "params", "model-flops", "model-params", "energy", "vbmf", "latency")
#: Targets on the whole model's cost, allocated across layers (:mod:`.allocate`).
MODEL_KINDS = ("model-flops", "model-params")


@dataclass(frozen=True)
class Criterion:
    """A parsed ``--target``: ``kind`` and its value (ranks for ``rank``)."""

    kind: str
    value: float = 0.0
    ranks: tuple[int, ...] = ()

    @classmethod
    def parse(cls, text: str) -> Criterion:
        text = str(text).strip().lower()
        if text == "vbmf":
            return cls("vbmf")
        kind, sep, raw = text.partition("=")
        if not sep or kind not in KINDS:
            raise UserError(
                f"bad target {text!r}; use rank=R, flops=X, params=X, model-flops=X, "
                "model-params=X, energy=E, vbmf or latency=F"
            )
        try:
            if kind == "rank":
                ranks = tuple(int(v) for v in raw.split(","))
                return cls("rank", ranks=ranks)
            value = float(raw)
        except ValueError:
            raise UserError(f"bad number in target {text!r}") from None
        if kind in ("flops", "params", *MODEL_KINDS) and value <= 1.0:
            raise UserError(f"compression target {text!r} must be > 1 (e.g. flops=2 for 2x fewer)")
        if kind in ("energy", "latency") and not 0.0 < value <= 1.0:
            raise UserError(f"target {text!r} must be a fraction in (0, 1]")
        return cls(kind, value)

    def __str__(self) -> str:
        if self.kind == "rank":
            return "rank=" + ",".join(map(str, self.ranks))
        return self.kind if self.kind == "vbmf" else f"{self.kind}={self.value:g}"


def unfoldings(method: str, weight: torch.Tensor) -> list[np.ndarray]:
    """The matrices whose spectra set each rank of ``method`` (see module docstring)."""
    w = weight.detach().to("cpu", torch.float64).numpy()
    if w.ndim == 2:
        return [w]
    o, i, kh, kw = w.shape
    if method == "svd":
        return [w.reshape(o, i * kh * kw)]
    mode0 = w.reshape(o, -1)
    mode1 = w.transpose(1, 0, 2, 3).reshape(i, -1)
    if method in ("tucker", "cp"):
        return [mode1, mode0]
    p = w.transpose(1, 2, 3, 0)  # (in, kh, kw, out)
    return [p.reshape(i, -1), p.reshape(i * kh, -1), p.reshape(i * kh * kw, -1)]


def discarded_energy_fn(method: str, weight: torch.Tensor) -> Callable[[tuple[int, ...]], float]:
    """``ranks -> mean fraction of spectral energy the ranks drop on the method's unfoldings``
    (the spectra computed once, so that a whole ladder of ranks is cheap to score)."""
    tails = []
    for mat in unfoldings(method, weight):
        p = singular_values(mat) ** 2
        total = max(float(p.sum()), 1e-30)
        kept = np.concatenate([[0.0], np.cumsum(p)])  # kept[r]: energy of the first r values
        tails.append(np.clip((total - kept) / total, 0.0, 1.0))

    def lost(ranks: tuple[int, ...]) -> float:
        rs = list(ranks) * len(tails) if method == "cp" else list(ranks)
        return float(np.mean([t[min(r, len(t) - 1)] for t, r in zip(tails, rs)]))

    return lost


def energy_rank(singular_values: np.ndarray, energy: float) -> int:
    """Smallest r whose leading squared singular values hold ``energy`` of the total."""
    power = np.asarray(singular_values, dtype=np.float64) ** 2
    if power.sum() <= 0:
        return 1
    cum = np.cumsum(power) / power.sum()
    return int(min(np.searchsorted(cum, energy - 1e-12) + 1, len(power)))


def feasible(method: str, spec: ConvSpec, ranks: tuple[int, ...]) -> tuple[int, ...]:
    """Clamp ranks into what ``method`` can build for this layer (at least 1 each)."""
    from frugalnn.methods.lowrank.layers import max_ranks

    limits = max_ranks(method, spec)
    r = [max(1, min(int(v), m)) for v, m in zip(ranks, limits)]
    if method == "tt":
        kh, kw = spec.kernel
        r[1] = min(r[1], r[0] * kh)
        if r[2] != spec.out_channels:  # a full last rank is absorbed, always allowed
            r[2] = min(r[2], r[1] * kw)
    return tuple(r)


def scaled_ranks(method: str, spec: ConvSpec, t: int) -> tuple[int, ...]:
    """Ranks at step ``t`` of the ladder that compression targets climb.

    Every rank grows in proportion to its maximum, except for tensor-train:
    there the end ranks stay full (their 1x1 cores are absorbed, see
    ``TTConv2d``) and only the middle rank climbs, which gives the two-kernel
    Kx1 -> 1xK chain. Per FLOP it keeps the channels wide, which is what runs
    fast on a CPU, where thin channel bottlenecks do not.
    """
    from frugalnn.methods.lowrank.layers import max_ranks

    limits = max_ranks(method, spec)
    if method == "tt":
        return feasible(method, spec, (limits[0], t, limits[2]))
    top = max(limits)
    return feasible(method, spec, tuple(math.ceil(t * m / top) for m in limits))


def rank_ladder_size(method: str, spec: ConvSpec) -> int:
    from frugalnn.methods.lowrank.layers import max_ranks

    limits = max_ranks(method, spec)
    return limits[1] if method == "tt" else max(limits)


def chain_cost(method: str, spec: ConvSpec, ranks: tuple[int, ...], hw: tuple[int, int],
               measure: str, depthwise: str = "separable") -> int:
    if measure == "params":
        return chain_params(method, spec, ranks, depthwise)
    return chain_flops(method, spec, ranks, hw[0], hw[1], depthwise)


def dense_cost(spec: ConvSpec, hw: tuple[int, int], measure: str) -> int:
    return spec.dense_params() if measure == "params" else spec.dense_flops(*hw)


def ranks_for_ratio(method: str, spec: ConvSpec, hw: tuple[int, int], measure: str,
                    ratio: float, depthwise: str = "separable",
                    multiple: int = 1) -> tuple[int, ...] | None:
    """The largest ladder ranks whose chain costs at most ``1/ratio`` of the dense layer.

    With ``multiple`` > 1 only ladder steps that are multiples of it are
    considered; if none fits the budget, the unaligned step is returned.
    """
    if multiple < 1:
        raise UserError(f"rank multiple must be >= 1, got {multiple}")
    budget = dense_cost(spec, hw, measure) / ratio

    def cost(t: int) -> int:
        return chain_cost(method, spec, scaled_ranks(method, spec, t), hw, measure, depthwise)

    size = rank_ladder_size(method, spec)
    if multiple > 1 and size >= multiple and cost(multiple) <= budget:
        lo, hi = 1, size // multiple  # search over k: step k * multiple
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if cost(mid * multiple) <= budget else (lo, mid - 1)
        return scaled_ranks(method, spec, lo * multiple)
    lo, hi = 1, size
    if cost(lo) > budget:
        return None
    while lo < hi:  # cost grows with t: binary search for the last t within budget
        mid = (lo + hi + 1) // 2
        if cost(mid) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return scaled_ranks(method, spec, lo)


def spectral_ranks(method: str, weight: torch.Tensor, criterion: Criterion) -> tuple[int, ...]:
    """Ranks from the spectra of the unfoldings (``energy`` or ``vbmf``)."""
    found = []
    for mat in unfoldings(method, weight):
        if criterion.kind == "vbmf":
            found.append(max(1, evbmf(mat).rank))
        else:
            s = singular_values(mat)
            found.append(energy_rank(s, criterion.value))
    if method == "cp":
        return (max(found),)
    return tuple(found)


def select_ranks(method: str, spec: ConvSpec, weight: torch.Tensor, hw: tuple[int, int],
                 criterion: Criterion, depthwise: str = "separable",
                 multiple: int = 1) -> tuple[int, ...] | None:
    """Ranks for one layer under ``criterion``; ``None`` when the layer should stay dense.

    A fixed rank that the layer cannot take raises ``UserError`` (the layer
    classes validate it); a criterion that only makes the layer more expensive
    leaves it dense.
    """
    if criterion.kind == "latency" or criterion.kind in MODEL_KINDS:
        raise ValueError(f"{criterion.kind} targets are whole-model; use "
                         "latency_select.choose_ranks or allocate.allocate")
    measure = "params" if criterion.kind == "params" else "flops"
    if criterion.kind in ("flops", "params"):
        return ranks_for_ratio(method, spec, hw, measure, criterion.value, depthwise, multiple)
    if criterion.kind == "rank":
        from frugalnn.methods.lowrank.layers import max_ranks, normalize_ranks

        raw = criterion.ranks[0] if len(criterion.ranks) == 1 else criterion.ranks
        ranks = normalize_ranks(method, raw)
        limits = max_ranks(method, spec)
        ok = feasible(method, spec, ranks) == ranks and min(ranks) >= 1
        if not ok:
            raise UserError(
                f"rank {criterion} is impossible for a {spec.in_channels}->{spec.out_channels} "
                f"{spec.kernel[0]}x{spec.kernel[1]} layer (largest {method} ranks: "
                f"{','.join(map(str, limits))}); lower it or restrict layers with --include"
            )
    else:
        ranks = feasible(method, spec, spectral_ranks(method, weight, criterion))
    if chain_cost(method, spec, ranks, hw, measure, depthwise) >= dense_cost(spec, hw, measure):
        return None
    return ranks
