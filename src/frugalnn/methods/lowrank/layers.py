"""Factorised layers that replace a trained ``nn.Linear`` or ``nn.Conv2d``.

Each layer is a short chain of ordinary convolutions/linears, so it runs on
the stock kernels of any device and is counted by ``FlopCounterMode`` like
any other layer. Built with ``from_linear`` / ``from_conv`` (weights from a
TensorLy decomposition of the trained layer) or, for rebuilding a checkpoint,
directly from the geometry and ranks (weights then come from the checkpoint).

=================  ==========================================================
``SVDLinear``      Linear(in->r) -> Linear(r->out)
``SVDConv1x1``     1x1 conv (in->r, carries stride/padding) -> 1x1 conv (r->out)
``CPConv2d``       1x1 (in->R) -> Kx1 depthwise -> 1xK depthwise -> 1x1 (R->out)
                   (or a single KxK depthwise in the middle, ``depthwise="kxk"``)
``TuckerConv2d``   1x1 (in->r_in) -> KxK (r_in->r_out) -> 1x1 (r_out->out)
``TTConv2d``       1x1 (in->r1) -> Kx1 (r1->r2) -> 1xK (r2->r3) -> 1x1 (r3->out);
                   a full-rank end 1x1 is absorbed, so at ranks (in, r, out)
                   it is Kx1 (in->r) -> 1xK (r->out)
=================  ==========================================================

Every layer also has a run-time rank knob (``set_rank_fraction``): at a
fraction below one it uses only the leading components (strongest first for
SVD and CP, leading singular subspaces for Tucker and TT), slicing the weights
so the skipped work is really skipped. At fraction 1 it is the plain chain.
Grouped convolutions and non-zero padding modes are refused with ``UserError``.

A chain keeps what callers read from the layer it replaces (Hugging Face ViT
reads ``projection.weight.dtype`` on every call): ``weight`` (the first
factor's weight, for its dtype and device; the dense weight is not stored),
``bias`` (the output bias), and the geometry: ``in_features`` /
``out_features`` for linears; ``in_channels``, ``out_channels``,
``kernel_size``, ``stride``, ``padding``, ``dilation``, ``groups``,
``padding_mode`` for convolutions.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from frugalnn.errors import UserError
from frugalnn.methods.lowrank import decompose as dec
from frugalnn.methods.lowrank.costs import chain_flops, tt_absorbed
from frugalnn.methods.lowrank.geometry import ConvSpec

METHODS = ("svd", "cp", "tucker", "tt")


def _keep(rank: int, fraction: float) -> int:
    return max(1, int(round(rank * fraction)))


def _conv(conv: nn.Conv2d, x: torch.Tensor, out_n: int, in_n: int | None,
          depthwise: bool = False) -> torch.Tensor:
    """``conv`` on its first ``out_n`` output (and ``in_n`` input) channels only."""
    w = conv.weight[:out_n]
    if in_n is not None and not depthwise:
        w = w[:, :in_n]
    bias = conv.bias[:out_n] if conv.bias is not None else None
    groups = out_n if depthwise else 1
    return F.conv2d(x, w, bias, conv.stride, conv.padding, conv.dilation, groups)


def _as_weight(array: Any, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(array, dtype=like.dtype, device=like.device).reshape(like.shape)


class FactorizedLayer(nn.Module):
    """Common interface: ``method``, ``ranks``, the rank knob and analytic costs."""

    method: str = ""

    def __init__(self, ranks: tuple[int, ...]) -> None:
        super().__init__()
        self.ranks = tuple(int(r) for r in ranks)
        self.rank_fraction = 1.0

    def set_rank_fraction(self, fraction: float) -> None:
        """Use only the leading ``fraction`` of every rank (1.0: the whole chain)."""
        if not 0.0 < float(fraction) <= 1.0:
            raise UserError(f"rank fraction must be in (0, 1], got {fraction}")
        self.rank_fraction = float(fraction)

    def active_ranks(self) -> tuple[int, ...]:
        return tuple(_keep(r, self.rank_fraction) for r in self.ranks)

    def param_count(self) -> int:
        """Parameters stored by the chain (all ranks, whatever the fraction)."""
        return sum(p.numel() for p in self.parameters())

    # -- what callers read from the replaced layer ---------------------------------------
    def output_layer(self) -> nn.Module | None:
        """The last layer of the chain, which carries the output bias (None: no such layer)."""
        return None

    @property
    def weight(self) -> torch.Tensor:
        """The first factor's weight: the replaced layer's dtype and device, not its shape."""
        return next(self.parameters())

    @property
    def bias(self) -> torch.Tensor | None:
        """The output bias (the replaced layer's bias), or None."""
        layer = self.output_layer()
        return None if layer is None else layer.bias

    def extra_repr(self) -> str:
        return f"method={self.method}, ranks={self.ranks}"


class SVDLinear(FactorizedLayer):
    """``Linear(in, out)`` as ``Linear(in, r, bias=False) -> Linear(r, out)``."""

    method = "svd"

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True) -> None:
        rank = dec.check_rank(rank, min(in_features, out_features),
                              f"a Linear({in_features}, {out_features})")
        super().__init__((rank,))
        self.in_features, self.out_features = in_features, out_features
        self.spec = ConvSpec(in_features, out_features, (1, 1), bias=bias)
        self.first = nn.Linear(in_features, rank, bias=False)
        self.second = nn.Linear(rank, out_features, bias=bias)

    def output_layer(self) -> nn.Module:
        return self.second

    @classmethod
    def from_linear(cls, linear: nn.Linear, rank: int,
                    whiten: np.ndarray | None = None) -> SVDLinear:
        """``whiten``: data-aware truncation (see :func:`.decompose.svd_factors`)."""
        if not isinstance(linear, nn.Linear):
            raise UserError(f"SVD expects an nn.Linear, got {type(linear).__name__}")
        layer = cls(linear.in_features, linear.out_features, rank, linear.bias is not None)
        layer.to(linear.weight.device, linear.weight.dtype)
        f = dec.svd_factors(linear.weight, rank, whiten)
        with torch.no_grad():
            layer.first.weight.copy_(_as_weight(f.right, layer.first.weight))
            layer.second.weight.copy_(_as_weight(f.left, layer.second.weight))
            if linear.bias is not None:
                layer.second.bias.copy_(linear.bias)
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.rank_fraction == 1.0:
            return self.second(self.first(x))
        (k,) = self.active_ranks()
        h = F.linear(x, self.first.weight[:k])
        return F.linear(h, self.second.weight[:, :k], self.second.bias)

    def flops(self, tokens: int = 1, w: int = 1) -> int:
        """FLOPs for one example of ``tokens`` rows (at the active rank)."""
        return chain_flops("svd", self.spec, self.active_ranks(), tokens, w)


class _ConvChain(FactorizedLayer):
    """Shared constructor plumbing for the convolution chains."""

    def __init__(self, spec: ConvSpec, ranks: tuple[int, ...]) -> None:
        super().__init__(ranks)
        self.spec = spec

    @classmethod
    def _from(cls, conv: nn.Conv2d, *args: Any, **kwargs: Any) -> _ConvChain:
        layer = cls(ConvSpec.of(conv), *args, **kwargs)
        return layer.to(conv.weight.device, conv.weight.dtype)

    @property
    def in_channels(self) -> int:
        return self.spec.in_channels

    @property
    def out_channels(self) -> int:
        return self.spec.out_channels

    @property
    def kernel_size(self) -> tuple[int, int]:
        return self.spec.kernel

    @property
    def stride(self) -> tuple[int, int]:
        return self.spec.stride

    @property
    def padding(self) -> tuple[int, int]:
        return self.spec.padding

    @property
    def dilation(self) -> tuple[int, int]:
        return self.spec.dilation

    groups = 1
    padding_mode = "zeros"

    def _copy_bias(self, conv: nn.Conv2d, last: nn.Conv2d) -> None:
        if conv.bias is not None:
            last.bias.data.copy_(conv.bias.data)

    def flops(self, h: int, w: int) -> int:
        """FLOPs for one example with input spatial size ``h x w`` (at the active ranks)."""
        dw = getattr(self, "depthwise", "separable")
        return chain_flops(self.method, self.spec, self.active_ranks(), h, w, dw)

    def extra_repr(self) -> str:
        s = self.spec
        return f"{s.in_channels}->{s.out_channels}, kernel={s.kernel}, " + super().extra_repr()


class SVDConv1x1(_ConvChain):
    """A 1x1 convolution as two 1x1 convolutions through ``rank`` channels."""

    method = "svd"

    def __init__(self, spec: ConvSpec, rank: int) -> None:
        if spec.kernel != (1, 1):
            raise UserError(
                f"SVD factorises 1x1 convolutions only, this one is {spec.kernel[0]}x"
                f"{spec.kernel[1]}; use --method cp, tucker or tt"
            )
        rank = dec.check_rank(rank, min(spec.in_channels, spec.out_channels),
                              f"a 1x1 conv {spec.in_channels}->{spec.out_channels}")
        super().__init__(spec, (rank,))
        self.first = nn.Conv2d(spec.in_channels, rank, 1, spec.stride, spec.padding, bias=False)
        self.second = nn.Conv2d(rank, spec.out_channels, 1, bias=spec.bias)

    def output_layer(self) -> nn.Module:
        return self.second

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, rank: int,
                  whiten: np.ndarray | None = None) -> SVDConv1x1:
        """``whiten``: data-aware truncation (see :func:`.decompose.svd_factors`)."""
        layer = cls._from(conv, rank)
        f = dec.svd_factors(conv.weight.reshape(conv.out_channels, conv.in_channels), rank,
                            whiten)
        with torch.no_grad():
            layer.first.weight.copy_(_as_weight(f.right, layer.first.weight))
            layer.second.weight.copy_(_as_weight(f.left, layer.second.weight))
        layer._copy_bias(conv, layer.second)
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.rank_fraction == 1.0:
            return self.second(self.first(x))
        (k,) = self.active_ranks()
        return _conv(self.second, _conv(self.first, x, k, None), self.spec.out_channels, k)


class CPConv2d(_ConvChain):
    """CP (Lebedev et al. 2015): 1x1 -> depthwise Kx1 -> depthwise 1xK -> 1x1.

    ``depthwise="kxk"`` uses one depthwise KxK convolution (rank-one kernels)
    instead of the two separable ones: more FLOPs, one kernel call fewer.
    """

    method = "cp"

    def __init__(self, spec: ConvSpec, rank: int, depthwise: str = "separable") -> None:
        if depthwise not in ("separable", "kxk"):
            raise UserError(f"CP depthwise must be 'separable' or 'kxk', got {depthwise!r}")
        limit = max_ranks("cp", spec)[0]
        rank = dec.check_rank(rank, limit, f"CP of a {spec.out_channels}x{spec.in_channels} kernel")
        super().__init__(spec, (rank,))
        (kh, kw), (sh, sw) = spec.kernel, spec.stride
        (ph, pw), (dh, dw) = spec.padding, spec.dilation
        r = int(rank)
        self.depthwise = depthwise
        self.pw_in = nn.Conv2d(spec.in_channels, r, 1, bias=False)
        if depthwise == "separable":
            self.dw_h = nn.Conv2d(r, r, (kh, 1), (sh, 1), (ph, 0), (dh, 1), groups=r, bias=False)
            self.dw_w = nn.Conv2d(r, r, (1, kw), (1, sw), (0, pw), (1, dw), groups=r, bias=False)
        else:
            self.dw = nn.Conv2d(r, r, (kh, kw), spec.stride, spec.padding, spec.dilation,
                                groups=r, bias=False)
        self.pw_out = nn.Conv2d(r, spec.out_channels, 1, bias=spec.bias)

    def output_layer(self) -> nn.Module:
        return self.pw_out

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, rank: int, depthwise: str = "separable",
                  n_iter_max: int = 50, random_state: int = 0) -> CPConv2d:
        f = dec.cp_factors(conv.weight, rank, n_iter_max=n_iter_max, random_state=random_state)
        layer = cls._from(conv, rank, depthwise)
        with torch.no_grad():
            layer.pw_in.weight.copy_(_as_weight(f.in_.T, layer.pw_in.weight))
            if depthwise == "separable":
                layer.dw_h.weight.copy_(_as_weight(f.kh.T, layer.dw_h.weight))
                layer.dw_w.weight.copy_(_as_weight(f.kw.T, layer.dw_w.weight))
            else:
                kernels = torch.einsum("hr,wr->rhw", torch.as_tensor(f.kh), torch.as_tensor(f.kw))
                layer.dw.weight.copy_(_as_weight(kernels, layer.dw.weight))
            layer.pw_out.weight.copy_(_as_weight(f.out, layer.pw_out.weight))
        layer._copy_bias(conv, layer.pw_out)
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.rank_fraction == 1.0:
            h = self.pw_in(x)
            h = self.dw_w(self.dw_h(h)) if self.depthwise == "separable" else self.dw(h)
            return self.pw_out(h)
        (k,) = self.active_ranks()
        h = _conv(self.pw_in, x, k, None)
        if self.depthwise == "separable":
            h = _conv(self.dw_w, _conv(self.dw_h, h, k, None, True), k, None, True)
        else:
            h = _conv(self.dw, h, k, None, True)
        return _conv(self.pw_out, h, self.spec.out_channels, k)


class TuckerConv2d(_ConvChain):
    """Tucker-2 (Kim et al. 2016): 1x1 (in->r_in) -> KxK (r_in->r_out) -> 1x1 (r_out->out)."""

    method = "tucker"

    def __init__(self, spec: ConvSpec, ranks: tuple[int, int]) -> None:
        r_in = dec.check_rank(ranks[0], spec.in_channels, "the Tucker input rank")
        r_out = dec.check_rank(ranks[1], spec.out_channels, "the Tucker output rank")
        super().__init__(spec, (r_in, r_out))
        self.pw_in = nn.Conv2d(spec.in_channels, r_in, 1, bias=False)
        self.core = nn.Conv2d(r_in, r_out, spec.kernel, spec.stride, spec.padding, spec.dilation,
                              bias=False)
        self.pw_out = nn.Conv2d(r_out, spec.out_channels, 1, bias=spec.bias)

    def output_layer(self) -> nn.Module:
        return self.pw_out

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, ranks: tuple[int, int]) -> TuckerConv2d:
        f = dec.tucker2_factors(conv.weight, ranks)
        layer = cls._from(conv, ranks)
        with torch.no_grad():
            layer.pw_in.weight.copy_(_as_weight(f.in_.T, layer.pw_in.weight))
            layer.core.weight.copy_(_as_weight(f.core, layer.core.weight))
            layer.pw_out.weight.copy_(_as_weight(f.out, layer.pw_out.weight))
        layer._copy_bias(conv, layer.pw_out)
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.rank_fraction == 1.0:
            return self.pw_out(self.core(self.pw_in(x)))
        ri, ro = self.active_ranks()
        h = _conv(self.core, _conv(self.pw_in, x, ri, None), ro, ri)
        return _conv(self.pw_out, h, self.spec.out_channels, ro)


class TTConv2d(_ConvChain):
    """Tensor-train of the kernel ``(in, kh, kw, out)`` run as 1x1 -> Kx1 -> 1xK -> 1x1.

    An end core at full rank (``r1 == in`` or ``r3 == out``) is a square 1x1
    convolution that only changes basis, so it is *absorbed* into its
    neighbour: with both ends full the layer is two convolutions, Kx1
    (in->r2) then 1xK (r2->out), the spatially separable scheme of Tai et al.
    (2016), and it keeps every channel wide. That form was the fastest
    factorisation measured on the project's CPU (``benchmarks/lowrank_layout.py``):
    thin 1x1 chains spend more time moving activations than they save in FLOPs.
    """

    method = "tt"

    def __init__(self, spec: ConvSpec, ranks: tuple[int, int, int]) -> None:
        (kh, kw), (sh, sw) = spec.kernel, spec.stride
        (ph, pw), (dh, dw) = spec.padding, spec.dilation
        r1, r2, r3 = dec.check_tt_ranks(tuple(ranks), spec.out_channels, spec.in_channels, kh, kw)
        super().__init__(spec, (r1, r2, r3))
        self.absorb_in, self.absorb_out = tt_absorbed(spec, (r1, r2, r3))
        # An absorbed core is registered as None (no module, no weights), not as
        # nn.Identity: BatchNorm folding looks for a Conv2d feeding the BatchNorm.
        self.register_module("c1", None if self.absorb_in else nn.Conv2d(
            spec.in_channels, r1, 1, bias=False))
        self.c2 = nn.Conv2d(r1, r2, (kh, 1), (sh, 1), (ph, 0), (dh, 1), bias=False)
        self.c3 = nn.Conv2d(r2, r3, (1, kw), (1, sw), (0, pw), (1, dw),
                            bias=spec.bias and self.absorb_out)
        self.register_module("c4", None if self.absorb_out else nn.Conv2d(
            r3, spec.out_channels, 1, bias=spec.bias))

    def output_layer(self) -> nn.Module:
        return self.c3 if self.absorb_out else self.c4

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, ranks: tuple[int, int, int]) -> TTConv2d:
        f = dec.tt_factors(conv.weight, tuple(ranks))
        layer = cls._from(conv, ranks)
        g1, g2, g3, g4 = f.cores
        if layer.absorb_in:  # fold the (in, r1) basis change into the Kx1 core
            g2 = np.einsum("ia,ahb->ihb", g1[0], g2)
        if layer.absorb_out:  # and the (r3, out) one into the 1xK core
            g3 = np.einsum("awb,bo->awo", g3, g4[:, :, 0])
        with torch.no_grad():
            if not layer.absorb_in:
                layer.c1.weight.copy_(_as_weight(g1[0].T, layer.c1.weight))  # (r1, in)
            layer.c2.weight.copy_(_as_weight(g2.transpose(2, 0, 1), layer.c2.weight))  # (r2,r1,kh)
            layer.c3.weight.copy_(_as_weight(g3.transpose(2, 0, 1), layer.c3.weight))  # (r3,r2,kw)
            if not layer.absorb_out:
                layer.c4.weight.copy_(_as_weight(g4[:, :, 0].T, layer.c4.weight))  # (out, r3)
        layer._copy_bias(conv, layer.c3 if layer.absorb_out else layer.c4)
        return layer

    def active_ranks(self) -> tuple[int, ...]:
        """Absorbed end ranks cannot shrink at run time; only the others follow the knob."""
        r1, r2, r3 = super().active_ranks()
        return (self.ranks[0] if self.absorb_in else r1, r2,
                self.ranks[2] if self.absorb_out else r3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.rank_fraction == 1.0:
            h = self.c3(self.c2(x if self.absorb_in else self.c1(x)))
            return h if self.absorb_out else self.c4(h)
        r1, r2, r3 = self.active_ranks()
        h = x if self.absorb_in else _conv(self.c1, x, r1, None)
        h = _conv(self.c2, h, r2, None if self.absorb_in else r1)
        h = _conv(self.c3, h, r3, r2)
        return h if self.absorb_out else _conv(self.c4, h, self.spec.out_channels, r3)


def normalize_ranks(method: str, rank: int | list[int] | tuple[int, ...]) -> tuple[int, ...]:
    """Ranks as the tuple each method's constructor takes (an int is repeated)."""
    n = {"svd": 1, "cp": 1, "tucker": 2, "tt": 3}.get(method)
    if n is None:
        raise UserError(f"unknown factorisation {method!r}; choose one of {', '.join(METHODS)}")
    ranks = (int(rank),) * n if isinstance(rank, (int, float)) else tuple(int(r) for r in rank)
    if len(ranks) != n:
        raise UserError(f"{method} takes {n} rank(s), got {list(ranks)}")
    return ranks


def from_conv(conv: nn.Conv2d, method: str, rank: Any, **options: Any) -> _ConvChain:
    """Factorise a trained convolution with ``method`` (``svd`` only for 1x1 kernels)."""
    ranks = normalize_ranks(method, rank)
    if method == "svd":
        return SVDConv1x1.from_conv(conv, ranks[0], options.get("whiten"))
    if method == "cp":
        return CPConv2d.from_conv(conv, ranks[0], **options)
    if method == "tucker":
        return TuckerConv2d.from_conv(conv, ranks)  # type: ignore[arg-type]
    return TTConv2d.from_conv(conv, ranks)  # type: ignore[arg-type]


def empty_like_conv(conv: nn.Conv2d, method: str, rank: Any, **options: Any) -> _ConvChain:
    """The factorised structure for ``conv`` with untrained weights (checkpoint rebuild)."""
    spec, ranks = ConvSpec.of(conv), normalize_ranks(method, rank)
    if method == "svd":
        layer: _ConvChain = SVDConv1x1(spec, ranks[0])
    elif method == "cp":
        layer = CPConv2d(spec, ranks[0], options.get("depthwise", "separable"))
    elif method == "tucker":
        layer = TuckerConv2d(spec, ranks)  # type: ignore[arg-type]
    else:
        layer = TTConv2d(spec, ranks)  # type: ignore[arg-type]
    return layer.to(conv.weight.device, conv.weight.dtype)


def max_ranks(method: str, spec: ConvSpec | nn.Linear) -> tuple[int, ...]:
    """The full (exact) ranks of a layer for ``method``."""
    if isinstance(spec, nn.Linear):
        return (min(spec.in_features, spec.out_features),)
    o, i, (kh, kw) = spec.out_channels, spec.in_channels, spec.kernel
    if method == "svd":
        return (min(o, i),)
    if method == "tucker":
        return (i, o)
    if method == "tt":
        return dec.tt_max_ranks(o, i, kh, kw)
    dims = sorted([o, i, kh, kw])
    return (dims[0] * dims[1] * dims[2],)
