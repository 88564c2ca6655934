"""Closed-form parameter and FLOP counts of the factorised chains.

Rank selection evaluates hundreds of candidate ranks per layer, too many to
build and trace each one, so the counts are written out here once; the tests
check them against ``FlopCounterMode`` on the built layers. FLOPs are 2 per
multiply-add (the ``FlopCounterMode`` convention; bias additions are not
counted) for one example. A Linear is treated as a 1x1 convolution on an
``n x 1`` "image", where ``n`` is the number of tokens (1 for a plain vector).
"""

from __future__ import annotations

from frugalnn.methods.lowrank.geometry import ConvSpec, out_len


def tt_absorbed(spec: ConvSpec, ranks: tuple[int, ...]) -> tuple[bool, bool]:
    """Whether a TT chain's first / last 1x1 core is at full rank and so absorbed.

    A full-rank end core is a square basis change; ``TTConv2d`` folds it into
    its neighbour instead of running it, and the counts here follow suit.
    """
    return ranks[0] == spec.in_channels, ranks[2] == spec.out_channels


def chain_params(method: str, spec: ConvSpec, ranks: tuple[int, ...],
                 depthwise: str = "separable") -> int:
    """Parameters of the factorised chain (bias included)."""
    o, i, (kh, kw) = spec.out_channels, spec.in_channels, spec.kernel
    bias = o if spec.bias else 0
    if method == "svd":
        (r,) = ranks
        return r * (i + o) + bias
    if method == "cp":
        (r,) = ranks
        mid = r * (kh + kw) if depthwise == "separable" else r * kh * kw
        return r * (i + o) + mid + bias
    if method == "tucker":
        ri, ro = ranks
        return ri * i + ro * ri * kh * kw + o * ro + bias
    if method == "tt":
        r1, r2, r3 = ranks
        a_in, a_out = tt_absorbed(spec, ranks)
        ends = (0 if a_in else r1 * i) + (0 if a_out else o * r3)
        return ends + r2 * r1 * kh + r3 * r2 * kw + bias
    raise ValueError(method)


def chain_flops(method: str, spec: ConvSpec, ranks: tuple[int, ...], h: int, w: int,
                depthwise: str = "separable") -> int:
    """FLOPs of the factorised chain for one example with input spatial size ``h x w``."""
    o, i, (kh, kw) = spec.out_channels, spec.in_channels, spec.kernel
    ho, wo = spec.out_hw(h, w)
    hmid = out_len(h, kh, spec.stride[0], spec.padding[0], spec.dilation[0])
    if method == "svd":
        (r,) = ranks
        return 2 * r * (i + o) * ho * wo
    if method == "cp":
        (r,) = ranks
        total = 2 * r * i * h * w + 2 * o * r * ho * wo
        if depthwise == "separable":
            return total + 2 * r * kh * hmid * w + 2 * r * kw * ho * wo
        return total + 2 * r * kh * kw * ho * wo
    if method == "tucker":
        ri, ro = ranks
        return 2 * ri * i * h * w + 2 * ro * ri * kh * kw * ho * wo + 2 * o * ro * ho * wo
    if method == "tt":
        r1, r2, r3 = ranks
        a_in, a_out = tt_absorbed(spec, ranks)
        ends = (0 if a_in else 2 * r1 * i * h * w) + (0 if a_out else 2 * o * r3 * ho * wo)
        return ends + 2 * r2 * r1 * kh * hmid * w + 2 * r3 * r2 * kw * ho * wo
    raise ValueError(method)
