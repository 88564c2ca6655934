"""Factorised layers: equality with the dense layer, costs, refusals."""

from __future__ import annotations

import pytest
import tensorly as tl
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from frugalnn.errors import UserError
from frugalnn.methods.lowrank import decompose as dec
from frugalnn.methods.lowrank import layers as L
from frugalnn.methods.lowrank.costs import chain_params
from frugalnn.methods.lowrank.geometry import ConvSpec

CONVS = {
    "plain": lambda: nn.Conv2d(6, 8, 3, padding=1),
    "stride_dilation": lambda: nn.Conv2d(6, 8, 3, stride=2, padding=2, dilation=2),
    "rect_nobias": lambda: nn.Conv2d(5, 7, (3, 5), stride=(2, 1), padding=(1, 2), bias=False),
    "same": lambda: nn.Conv2d(4, 6, 3, padding="same"),
}


def _flops(module: nn.Module, x: torch.Tensor) -> int:
    with FlopCounterMode(display=False) as counter:
        module(x)
    return counter.get_total_flops()


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).detach().norm() / b.detach().norm())


@pytest.mark.parametrize("geometry", sorted(CONVS))
@pytest.mark.parametrize("method", ["tucker", "tt"])
def test_full_rank_reproduces_dense_conv(geometry: str, method: str) -> None:
    conv = CONVS[geometry]()
    x = torch.randn(2, conv.in_channels, 11, 9)
    layer = L.from_conv(conv, method, L.max_ranks(method, ConvSpec.of(conv)))
    torch.testing.assert_close(layer(x), conv(x), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("depthwise", ["separable", "kxk"])
def test_cp_exact_when_kernel_has_that_cp_rank(depthwise: str) -> None:
    # ALS cannot promise an exact fit at an arbitrary rank, but a kernel that
    # *is* a sum of R rank-one terms must be recovered at rank R.
    torch.manual_seed(1)
    r, (o, i, k) = 4, (8, 6, 3)
    a, b, c, d = torch.randn(o, r), torch.randn(i, r), torch.randn(k, r), torch.randn(k, r)
    conv = nn.Conv2d(i, o, k, padding=1)
    with torch.no_grad():
        conv.weight.copy_(torch.einsum("or,ir,hr,wr->oihw", a, b, c, d))
    x = torch.randn(2, i, 10, 10)
    layer = L.CPConv2d.from_conv(conv, r, depthwise=depthwise)
    assert _rel(layer(x), conv(x)) < 1e-4


def test_cp_error_shrinks_with_rank() -> None:
    conv = nn.Conv2d(6, 8, 3, padding=1)
    x = torch.randn(2, 6, 8, 8)
    errs = [_rel(L.CPConv2d.from_conv(conv, r)(x), conv(x)) for r in (1, 4, 16, 54)]
    assert all(e2 <= e1 + 1e-6 for e1, e2 in zip(errs, errs[1:]))
    assert errs[-1] < 0.05 < errs[0]


def test_svd_linear_and_1x1_full_rank() -> None:
    lin = nn.Linear(12, 7)
    x = torch.randn(3, 5, 12)
    torch.testing.assert_close(L.SVDLinear.from_linear(lin, 7)(x), lin(x), atol=1e-5, rtol=1e-4)
    conv = nn.Conv2d(9, 5, 1, stride=2, padding=1)
    xi = torch.randn(2, 9, 7, 7)
    torch.testing.assert_close(L.from_conv(conv, "svd", 5)(xi), conv(xi), atol=1e-5, rtol=1e-4)


def test_svd_truncation_error_is_tail_energy() -> None:
    # Eckart-Young: the Frobenius error of the rank-r SVD is the tail of the spectrum.
    lin = nn.Linear(10, 10, bias=False)
    s = torch.linalg.svdvals(lin.weight.double())
    layer = L.SVDLinear.from_linear(lin, 4)
    w = (layer.second.weight @ layer.first.weight).double()
    assert float((w - lin.weight.double()).norm()) == pytest.approx(float(s[4:].norm()), rel=1e-4)


@pytest.mark.parametrize("geometry", sorted(CONVS))
@pytest.mark.parametrize("method,ranks", [("cp", (5,)), ("tucker", (3, 4)), ("tt", (3, 5, 4))])
def test_flops_and_params_equal_counted(geometry: str, method: str, ranks) -> None:
    conv = CONVS[geometry]()
    spec = ConvSpec.of(conv)
    for dw in (("separable", "kxk") if method == "cp" else ("separable",)):
        opts = {"depthwise": dw} if method == "cp" else {}
        layer = L.empty_like_conv(conv, method, ranks, **opts)
        x = torch.randn(1, conv.in_channels, 11, 9)
        assert layer.flops(11, 9) == _flops(layer, x)
        assert chain_params(method, spec, layer.ranks, dw) == layer.param_count()
    assert spec.dense_flops(11, 9) == _flops(conv, x)
    assert spec.dense_params() == sum(p.numel() for p in conv.parameters())


@pytest.mark.parametrize("method,ranks", [("cp", 6), ("tucker", (4, 6)), ("tt", (4, 8, 6)),
                                          ("tt", (6, 8, 8))])
def test_rank_fraction_skips_work_and_full_is_identity(method: str, ranks) -> None:
    conv = nn.Conv2d(6, 8, 3, padding=1)
    layer = L.from_conv(conv, method, ranks)
    x = torch.randn(1, 6, 8, 8)
    full = layer(x)
    dense_like = layer.flops(8, 8)
    layer.set_rank_fraction(0.5)
    half = layer(x)
    assert layer.flops(8, 8) == _flops(layer, x) < dense_like
    assert half.shape == full.shape and not torch.allclose(half, full)
    layer.set_rank_fraction(1.0)
    torch.testing.assert_close(layer(x), full)
    with pytest.raises(UserError):
        layer.set_rank_fraction(0.0)


@pytest.mark.parametrize("geometry", sorted(CONVS))
def test_tt_full_end_ranks_are_absorbed_into_two_convolutions(geometry: str) -> None:
    # At ranks (in, r, out) the end cores are square basis changes: the layer
    # must run only the Kx1 and 1xK convolutions and still compute exactly the
    # TT-SVD reconstruction of the kernel.
    conv = CONVS[geometry]()
    spec = ConvSpec.of(conv)
    ranks = (conv.in_channels, 4, conv.out_channels)
    layer = L.from_conv(conv, "tt", ranks)
    convs = [m for m in layer.modules() if isinstance(m, nn.Conv2d)]
    assert [c.kernel_size for c in convs] == [(spec.kernel[0], 1), (1, spec.kernel[1])]
    assert layer.c1 is None and layer.c4 is None
    cores = dec.tt_factors(conv.weight, ranks).cores
    kernel = torch.as_tensor(tl.tt_to_tensor(cores).transpose(3, 0, 1, 2), dtype=torch.float32)
    x = torch.randn(2, conv.in_channels, 11, 9)
    ref = torch.nn.functional.conv2d(x, kernel, conv.bias, conv.stride, conv.padding,
                                     conv.dilation)
    torch.testing.assert_close(layer(x), ref, atol=1e-5, rtol=1e-4)
    assert layer.flops(11, 9) == _flops(layer, x[:1])
    assert chain_params("tt", spec, ranks) == layer.param_count()
    # a rebuilt layer (checkpoint path) has the same structure and state keys
    rebuilt = L.empty_like_conv(conv, "tt", ranks)
    rebuilt.load_state_dict(layer.state_dict())
    torch.testing.assert_close(rebuilt(x), layer(x))


def test_tt_absorbs_one_end_only_when_only_that_rank_is_full() -> None:
    conv = nn.Conv2d(6, 8, 3, padding=1)
    x = torch.randn(2, 6, 8, 8)
    first = L.from_conv(conv, "tt", (6, 5, 4))
    last = L.from_conv(conv, "tt", (3, 5, 8))
    assert first.c1 is None and first.c4 is not None
    assert last.c1 is not None and last.c4 is None
    for layer in (first, last):
        assert layer.flops(8, 8) == _flops(layer, x[:1])
        assert chain_params("tt", ConvSpec.of(conv), layer.ranks) == layer.param_count()
    # r3 = out is allowed even above r2 * kw (zero-padded cores): still exact at full r2
    torch.testing.assert_close(L.from_conv(conv, "tt", (6, 18, 8))(x), conv(x),
                               atol=1e-5, rtol=1e-4)
    assert L.from_conv(conv, "tt", (6, 2, 8)).ranks == (6, 2, 8)


def test_refusals_are_user_errors() -> None:
    with pytest.raises(UserError, match="grouped"):
        L.from_conv(nn.Conv2d(4, 4, 3, groups=2), "tucker", 2)
    with pytest.raises(UserError, match="padding_mode"):
        L.from_conv(nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"), "cp", 2)
    with pytest.raises(UserError, match="between 1 and 4"):
        L.from_conv(nn.Conv2d(4, 6, 3), "tucker", (5, 6))
    with pytest.raises(UserError, match="1x1"):
        L.from_conv(nn.Conv2d(4, 6, 3), "svd", 2)
    with pytest.raises(UserError, match="impossible"):
        L.SVDLinear.from_linear(nn.Linear(4, 3), 4)
    with pytest.raises(UserError, match="unknown factorisation"):
        L.from_conv(nn.Conv2d(4, 6, 3), "qr", 2)
    with pytest.raises(UserError, match="3 rank"):
        L.from_conv(nn.Conv2d(4, 6, 3), "tt", (2, 2))
    with pytest.raises(UserError, match="impossible"):
        L.from_conv(nn.Conv2d(4, 6, 3), "cp", 0)
