"""frugalnn's FLOP counts against the expectations in two peer counters' own test suites.

Each case restates one expectation (module, input shape, expected count) from:

* fvcore, ``facebookresearch/fvcore``: ``tests/test_flop_count.py`` and
  ``tests/test_jit_model_analysis.py``. fvcore counts **one multiply-add as one
  flop**, so its number is a MAC count, and it ignores biases as we do.
* ptflops, ``sovrasov/flops-counter.pytorch``: ``tests/common_test.py``. ptflops
  reports **MACs including the bias additions** (one per output element), so
  its number is our MACs plus the bias term, which each case subtracts.

frugalnn reports FLOPs = 2 x MACs with biases not counted. Where a peer counts
an op that is not a multiply-add (batch norm, group norm, pooling, bilinear
upsampling) frugalnn counts 0 and lists the op in ``CostReport.uncounted``;
those cases assert exactly that documented difference.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from frugalnn.cost.count import measure


class Fn(nn.Module):
    def __init__(self, fn) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, *xs):
        return self.fn(*xs)


def macs(model: nn.Module, *inputs) -> float:
    """frugalnn's MACs (FLOPs / 2), checking that no op went uncounted unknowingly."""
    report = measure(model, inputs[0] if len(inputs) == 1 else inputs)
    assert report.unknown_ops == {}
    return report.flops / 2


# --- fvcore, tests/test_flop_count.py --------------------------------------------------


def test_fvcore_linear() -> None:
    # test_nn: Linear(8, 4) on (5, 8) -> 5*8*4; test_linear: Linear(10, 20) on (5, 10) and
    # on (5, 5, 10) -> 1000 and 5000
    assert macs(nn.Linear(8, 4), torch.randn(5, 8)) == 160
    assert macs(nn.Linear(10, 20), torch.randn(5, 10)) == 1000
    assert macs(nn.Linear(10, 20), torch.randn(5, 5, 10)) == 5000


# test_conv: (dims, batch, c_in, c_out, spatial, kernel, padding, stride, groups,
# transposed, output_padding) -> fvcore's expected count
FVCORE_CONV = [
    (2, 5, 10, 3, 15, 3, 1, 1, 1, False, 0, 303750),
    (2, 2, 10, 6, 20, 3, 1, 2, 1, False, 0, 108000),  # strided
    (2, 5, 16, 8, 15, 5, 2, 1, 4, False, 0, 900000),  # grouped
    (2, 5, 16, 8, 15, 3, 1, 1, 8, False, 0, 162000),  # groups == c_out
    (1, 5, 10, 3, 15, 3, 1, 1, 1, False, 0, 6750),
    (3, 5, 10, 3, 15, 3, 1, 1, 1, False, 0, 13668750),
    (2, 5, 10, 3, 15, 3, 1, 1, 1, True, 0, 303750),  # transposed: per *input* position
    (2, 5, 10, 3, 15, 3, 1, 2, 1, True, 0, 303750),
    (2, 5, 10, 3, 15, 3, 1, 3, 1, True, 2, 303750),
]


@pytest.mark.parametrize("dims,b,cin,cout,s,k,p,stride,g,transposed,outpad,expected",
                         FVCORE_CONV)
def test_fvcore_conv(dims, b, cin, cout, s, k, p, stride, g, transposed, outpad,
                     expected) -> None:
    if transposed:
        layer = [nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d][dims - 1](
            cin, cout, k, stride, p, groups=g, output_padding=outpad)
    else:
        layer = [nn.Conv1d, nn.Conv2d, nn.Conv3d][dims - 1](cin, cout, k, stride, p, groups=g)
    x = torch.randn(b, cin, *([s] * dims))
    for mode in (False, True):  # eval and train mode count the same
        assert macs(layer.train(mode), x) == expected


def test_fvcore_matmul_bmm_einsum() -> None:
    mm = Fn(torch.matmul)
    # test_matmul and test_matmul_broadcast
    assert macs(mm, torch.randn(20, 10), torch.randn(10, 100)) == 20000
    assert macs(mm, torch.randn(1, 20, 10), torch.randn(1, 10, 100)) == 20000
    assert macs(mm, torch.randn(2, 2, 20, 10), torch.randn(2, 2, 10, 100)) == 80000
    assert macs(mm, torch.randn(1, 20, 10), torch.randn(10, 100)) == 20000
    assert macs(mm, torch.randn(2, 20, 10), torch.randn(10, 100)) == 40000
    # test_bmm: nct,ntp->ncp with n=2, c=5, t=2, p=12
    assert macs(Fn(torch.bmm), torch.randn(2, 5, 2), torch.randn(2, 2, 12)) == 240
    # test_einsum: "nct,ncp->ntp" (n=1, c=5, t=2, p=12) and "ntg,ncg->nct" (g=6)
    ein = Fn(lambda eq, a, b: torch.einsum(eq, a, b))
    assert macs(Fn(lambda a, b: ein("nct,ncp->ntp", a, b)),
                torch.randn(1, 5, 2), torch.randn(1, 5, 12)) == 120
    assert macs(Fn(lambda a, b: ein("ntg,ncg->nct", a, b)),
                torch.randn(1, 2, 6), torch.randn(1, 5, 6)) == 60
    # TestFlopCountHandles.test_complicated_einsum and test_torch_mm
    assert macs(Fn(lambda a, b: torch.einsum("nc,nchw->hw", a, b)),
                torch.randn(3, 4), torch.randn(3, 4, 2, 3)) == 72
    assert macs(Fn(torch.mm), torch.randn(3, 4), torch.randn(4, 5)) == 60


def test_fvcore_three_net_and_its_modules() -> None:
    # test_threeNet / test_flop_counter_class: conv 1x1 (2 -> 5) on 4x2x10x10, adaptive avg
    # pool, Linear(5, 3), Linear(3, 1). fvcore: conv 4000, linear1 60, linear2 12 and pool
    # 2000 (one per input element); pooling is not a multiply-add here: 0, listed uncounted.
    class ThreeNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(2, 5, 1, 1)
            self.pool = nn.AdaptiveAvgPool2d((1, 1))
            self.linear1 = nn.Linear(5, 3)
            self.linear2 = nn.Linear(3, 1)

        def forward(self, x):
            return self.linear2(self.linear1(torch.flatten(self.pool(self.conv(x)), 1)))

    report = measure(ThreeNet(), torch.randn(4, 2, 10, 10))
    rows = {m.name: m.macs for m in report.per_module}
    assert rows == {"": 4072, "conv": 4000, "pool": 0, "linear1": 60, "linear2": 12}
    assert "mean" in report.uncounted or "_adaptive_avg_pool2d" in report.uncounted


@pytest.mark.parametrize("train", [False, True])
def test_fvcore_norms_are_not_multiply_adds(train: bool) -> None:
    # test_batchnorm: fvcore counts 1 (eval) or 4 (train) per element; TestFlopCountHandles
    # counts group norm and bilinear upsampling too. frugalnn: 0, named in `uncounted`.
    bn = nn.BatchNorm2d(10, affine=False).train(train)
    report = measure(bn, torch.randn(10, 10, 5, 5))
    assert report.flops == 0 and "native_batch_norm" in report.uncounted
    gn = Fn(lambda x: F.group_norm(x, 2))
    assert measure(gn, torch.rand(2, 2, 2, 2)).uncounted == {"native_group_norm": 1}
    up = measure(Fn(lambda x: F.interpolate(x, None, 2, "bilinear", False)),
                 torch.rand(2, 2, 2, 2))
    assert up.flops == 0 and "upsample_bilinear2d" in up.uncounted


# --- fvcore, tests/test_jit_model_analysis.py -----------------------------------------


class NestedInner(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(2, 2, 1)
        self.fc = nn.Linear(10, 10)

    def forward(self, x):
        x = torch.flatten(self.conv(x.reshape(-1, 2, 5)), 1)
        return 3 * self.fc(x) + 1


class Nested(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.submod = NestedInner()
        self.fc = nn.Linear(20, 10)
        self.conv = nn.Conv1d(4, 4, 3, padding=1)

    def forward(self, x):
        return self.submod(self.fc(torch.flatten(self.conv(x), 1))) ** 2


def test_fvcore_nested_net_by_module() -> None:
    # NestedNet on (1, 4, 5): conv 240, fc 200, submod 120 (conv 20, fc 100); total 560
    report = measure(Nested(), torch.randn(1, 4, 5), depth=2)
    assert {m.name: m.macs for m in report.per_module} == {
        "": 560, "submod": 120, "submod.conv": 20, "submod.fc": 100, "fc": 200, "conv": 240,
    }


def test_fvcore_repeated_shared_unused_recursive_modules() -> None:
    class Repeated(nn.Module):  # RepeatedNet: fc1 called 3 times, fc2 twice
        def __init__(self) -> None:
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(10, 10), nn.Linear(10, 10)

        def forward(self, x):
            for _ in range(3):
                x = self.fc1(x)
            for _ in range(2):
                x = self.fc2(x)
            return x

    rows = {m.name: m.macs for m in measure(Repeated(), torch.randn(1, 10)).per_module}
    assert rows == {"": 500, "fc1": 300, "fc2": 200}

    class Inner(nn.Module):
        def __init__(self, submod: nn.Module) -> None:
            super().__init__()
            self.submod = submod

        def forward(self, x):
            return self.submod(x)

    class Shared(nn.Module):  # SharedModuleNet: one Linear under two parents, one under 2 names
        def __init__(self) -> None:
            super().__init__()
            inner = nn.Linear(10, 10)
            self.submod1, self.submod2 = Inner(inner), Inner(inner)
            self.multiname1 = self.multiname2 = nn.Linear(10, 1)

        def forward(self, x):
            x = self.submod1(x) + self.submod2(x)
            return self.multiname1(x) + self.multiname2(x)

    rows = {m.name: m.macs for m in measure(Shared(), torch.randn(1, 10), depth=2).per_module}
    # fvcore: total 220, submod1 100, submod1.submod 200 (both calls under its first
    # name), submod2 100, multiname1 20
    assert rows == {"": 220, "submod1": 100, "submod1.submod": 200, "submod2": 100,
                    "multiname1": 20}

    class Unused(nn.Module):  # UnusedNet: an uncalled Linear costs 0
        def __init__(self) -> None:
            super().__init__()
            self.fc1, self.fc2, self.unused = nn.Linear(10, 10), nn.Linear(10, 1), nn.Linear(20, 20)

        def forward(self, x):
            return self.fc2(torch.relu(self.fc1(x)))

    rows = {m.name: m.macs for m in measure(Unused(), torch.randn(1, 10)).per_module}
    assert rows == {"": 110, "fc1": 100, "fc2": 10, "unused": 0}

    class Recursive(nn.Module):  # RecursiveScopeNet: the model calls itself three times
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(10, 1)

        def forward(self, x, count: int = 3):
            return self(x, count - 1) if count > 0 else self.fc(x)

    assert macs(Recursive(), torch.randn(1, 10)) == 10


def test_fvcore_non_forward_call_and_data_parallel() -> None:
    class Inner(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(10, 1)

        def forward(self, x):
            return x

        def other_func(self, x):
            return self.fc(x)

    class NonForward(nn.Module):  # NonForwardNet: the parent calls a submodule's method
        def __init__(self) -> None:
            super().__init__()
            self.submod, self.fc = Inner(), nn.Linear(10, 10)

        def forward(self, x):
            return self.submod.other_func(self.fc(x))

    rows = {m.name: m.macs for m in measure(NonForward(), torch.randn(1, 10)).per_module}
    assert rows == {"": 110, "submod": 10, "submod.fc": 10, "fc": 100}
    assert macs(NonForward(), torch.randn(5, 10)) == 550  # test_copy: batch 5
    # test_data_parallel_root_scope
    assert macs(nn.DataParallel(nn.Linear(10, 10)), torch.randn(10, 10)) == 1000


# --- ptflops, tests/common_test.py ----------------------------------------------------


def test_ptflops_conv_and_transposed_conv() -> None:
    x = torch.randn(1, 3, 224, 224)
    # test_conv: Conv2d(3, 2, 3) -> 2759904 MACs with the bias (2 * 222 * 222) included
    conv = nn.Sequential(nn.Conv2d(3, 2, 3, bias=True))
    report = measure(conv, x)
    assert report.params == 3 * 3 * 2 * 3 + 2
    assert report.macs == 2759904 - 2 * 222 * 222
    # test_conv_t: ConvTranspose2d(3, 2, 3, stride 2) -> 3112706 with bias (2 * 449 * 449)
    convt = nn.ConvTranspose2d(3, 2, 3, stride=(2, 2), bias=True)
    report = measure(convt, x)
    assert report.params == 3 * 3 * 2 * 3 + 2
    assert report.macs == 3112706 - 2 * 449 * 449


def test_ptflops_linear_and_dict_input() -> None:
    # test_fc: Linear(3, 2) -> 8 MACs with 2 bias adds; test_fc_multidim: no bias, input
    # (4, 5, 3) -> 120; test_input_constructor_dict: keyword input, (8 MACs, 8 params)
    fc = nn.Sequential(nn.Linear(3, 2, bias=True))
    report = measure(fc, torch.ones(1, 3))
    assert (report.macs + 2, report.params) == (8, 8)
    assert macs(nn.Sequential(nn.Linear(3, 2, bias=False)), torch.ones(1, 4, 5, 3)) == 120

    class CustomLinear(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = nn.Linear(3, 2, bias=True)

        def forward(self, x):
            return self.linear(x)

    report = measure(CustomLinear(), {"x": torch.ones(1, 3)})
    assert (report.macs + 2, report.params) == (8, 8)


@pytest.mark.parametrize("size", [(20, 20), 20])
def test_ptflops_interpolate_is_not_a_multiply_add(size) -> None:
    # test_func_interpolate_args: ptflops counts 1200 (one per output element of 3x20x20);
    # frugalnn: 0 FLOPs, the op named in `uncounted`
    model = Fn(lambda x: F.interpolate(input=x, size=size, mode="bilinear", align_corners=False))
    report = measure(model, torch.randn(1, 3, 10, 10))
    assert report.flops == 0 and report.params == 0
    assert report.uncounted == {"upsample_bilinear2d": 1} and report.unknown_ops == {}


def test_ptflops_matmul_with_transpose() -> None:
    # test_ten_matmul: x.matmul(x.t()) on (1, 10) -> ptflops asserts > 0; it is 10 MACs
    assert macs(Fn(lambda x: x.matmul(x.t())), torch.randn(1, 10)) == 10
