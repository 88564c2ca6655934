"""Nonlinear tensor factorisation: identity at start, costs, layer-wise distillation, reload."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import frugalnn
from frugalnn.cli import main
from frugalnn.cost.count import count_flops
from frugalnn.errors import UserError
from frugalnn.methods.lowrank import layers as L
from frugalnn.methods.lowrank import nonlinear as NL
from frugalnn.methods.lowrank.compress import compress_model
from frugalnn.methods.lowrank.recipe import compress
from frugalnn.models import create_model
from frugalnn.train.checkpoint import load_model, save_checkpoint

# (linear method, kernel, ranks, channels carrying a kink: hand-counted)
CASES = [
    ("svd", 1, (5,), 5),
    ("tucker", 3, (6, 8), 6 + 8),
    ("tt", 3, (16, 10, 24), 10),  # full end ranks: both ends absorbed, one kink
    ("tt", 3, (8, 10, 12), 8 + 10 + 12),  # every core present: three kinks
]


def _conv(kernel: int) -> nn.Conv2d:
    torch.manual_seed(0)
    return nn.Conv2d(16, 24, kernel, stride=1, padding=kernel // 2)


@pytest.mark.parametrize("method, kernel, ranks, kinks", CASES)
def test_at_init_equals_the_linear_factorisation_and_costs_match(
        method: str, kernel: int, ranks: tuple[int, ...], kinks: int) -> None:
    conv = _conv(kernel)
    x = torch.randn(2, 16, 8, 8)
    lin = L.from_conv(conv, method, ranks)
    nl = NL.build(conv, f"{method}-nl", ranks)
    assert nl.method == f"{method}-nl" and isinstance(nl, type(lin))
    torch.testing.assert_close(nl(x), lin(x), rtol=0, atol=0)
    # The kinks add 2 parameters per bottleneck channel and no counted FLOPs.
    assert nl.param_count() == lin.param_count() + 2 * kinks
    assert NL.extra_params(nl.method, nl.spec, nl.ranks) == 2 * kinks
    assert count_flops(nl, x[:1]) == count_flops(lin, x[:1]) == nl.flops(8, 8)
    for layer in (lin, nl):
        layer.set_rank_fraction(0.5)
    torch.testing.assert_close(nl(x), lin(x), rtol=0, atol=0)
    assert count_flops(nl, x[:1]) == count_flops(lin, x[:1]) == nl.flops(8, 8)


def test_svd_nl_linear_equals_svd_at_init() -> None:
    torch.manual_seed(0)
    linear = nn.Linear(20, 12)
    x = torch.randn(3, 7, 20)
    lin, nl = L.SVDLinear.from_linear(linear, 4), NL.build(linear, "svd-nl", (4,))
    torch.testing.assert_close(nl(x), lin(x), rtol=0, atol=0)
    assert nl.param_count() == lin.param_count() + 2 * 4
    assert nl.in_features == 20 and nl.weight.dtype == torch.float32


def test_kink_changes_the_function_once_trained() -> None:
    kink = NL.ChannelKink(3)
    h = torch.randn(2, 3, 4, 4)
    torch.testing.assert_close(kink(h), h)
    with torch.no_grad():
        kink.scale.fill_(-1.0)
        kink.shift.fill_(0.5)
    torch.testing.assert_close(kink(h), h.clamp(max=0.5))  # scale -1 clips at the shift


class _Target(nn.Module):
    """A rank-4 map with a ReLU inside: ``b(relu(a(x)))``."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(16, 4, bias=False)
        self.b = nn.Linear(4, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(x)))


class _Holder(nn.Module):
    def __init__(self, f: nn.Module) -> None:
        super().__init__()
        self.f = f

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.f(x)


def test_layerwise_distillation_beats_linear_on_a_nonlinear_target() -> None:
    torch.manual_seed(0)
    teacher = _Holder(_Target())
    x = torch.randn(512, 16)
    with torch.no_grad():
        y = teacher(x)
    # The linear layer to factorise: the least-squares fit of the target.
    sol = torch.linalg.lstsq(torch.cat([x, torch.ones(512, 1)], 1), y).solution
    dense = nn.Linear(16, 16)
    with torch.no_grad():
        dense.weight.copy_(sol[:16].T)
        dense.bias.copy_(sol[16])
    batches = [(x[i:i + 64], torch.zeros(64)) for i in range(0, 512, 64)]

    def err(layer: nn.Module) -> float:
        with torch.no_grad():
            return float(((layer(x) - y) ** 2).mean() / y.var())

    errors = {}
    for method, layer in (("svd", L.SVDLinear.from_linear(dense, 4)),
                          ("svd-nl", NL.build(dense, "svd-nl", (4,)))):
        start = err(layer)
        hist = NL.distill_layers(teacher, _Holder(layer), batches, steps=300, lr=1e-2)
        assert hist["steps"] == 300 and hist["layers"] == 1
        errors[method] = (start, err(layer))
    assert errors["svd"][0] == pytest.approx(errors["svd-nl"][0])  # same start
    # The nonlinear chain fits the ReLU target far better than the linear one can.
    assert errors["svd-nl"][1] < 0.5 * errors["svd"][1]
    assert errors["svd-nl"][1] < 0.5 * errors["svd-nl"][0]


def _cnn() -> nn.Module:
    torch.manual_seed(0)
    return create_model("cnn_small", image_size=8, in_channels=1, num_classes=10).eval()


@pytest.mark.parametrize("method", ["tucker-nl", "tt-nl"])
def test_compressed_model_plan_save_and_load(tmp_path, method: str) -> None:
    model = _cnn()
    x = torch.randn(4, 1, 8, 8)
    linear, _ = compress_model(_cnn(), NL.linear_method(method), "params=2", x)
    nl, plan = compress_model(model, method, "params=2", x)
    torch.testing.assert_close(nl(x), linear(x), rtol=1e-5, atol=1e-6)  # identity kinks
    for row in plan:
        if row.ranks is not None:  # the plan counts the kinks' parameters exactly
            assert row.params == nl.get_submodule(row.name).param_count()
    with torch.no_grad():  # move the kinks off the identity so that reload is tested
        for m in nl.modules():
            if isinstance(m, NL.ChannelKink):
                m.scale.uniform_(-1, 1)
                m.shift.uniform_(-0.2, 0.2)
    ref = nl(x)
    save_checkpoint(tmp_path / "ckpt", nl)
    loaded = load_model(tmp_path / "ckpt")
    kinds = {type(m).__name__ for m in loaded.modules()}
    assert {"NLTuckerConv2d", "NLTTConv2d"} & kinds
    torch.testing.assert_close(loaded(x), ref)


def test_recipe_runs_layerwise_then_finetune() -> None:
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(64, 1, 8, 8, generator=g),
                         torch.randint(0, 10, (64,), generator=g))
    config = frugalnn.LowRankConfig(method="tt-nl", target="params=2", finetune_epochs=1,
                                    layerwise_steps=5, batch_size=16)
    assert frugalnn.LowRankConfig(method="tt-nl").layerwise == NL.DEFAULT_LAYERWISE_STEPS
    assert frugalnn.LowRankConfig(method="tt").layerwise == 0
    model, _, history = compress(_cnn(), config, train_data=data)
    assert history["layerwise"]["steps"] == 5 and "finetune" in history
    assert any(isinstance(m, NL.NLTTConv2d) for m in model.modules())


def test_bad_input_is_user_error(capsys) -> None:
    with pytest.raises(UserError, match="svd-nl for a Linear"):
        NL.build(nn.Linear(4, 4), "tucker-nl", (2, 2))
    with pytest.raises(UserError, match="unknown"):
        NL.build(nn.Linear(4, 4), "cp-nl", (2,))
    with pytest.raises(UserError, match="--layerwise-steps"):
        frugalnn.LowRankConfig(method="tt-nl", layerwise_steps=-1).validate()
    with pytest.raises(UserError, match="no factorised layer"):
        NL.distill_layers(_cnn(), _cnn(), [])
    assert main(["lowrank", "plan", "resnet20", "--method", "tucker-nl",
                 "--target", "rank=99"]) == 2
    assert "impossible" in capsys.readouterr().err


def test_cli_plan_accepts_nonlinear_methods(capsys) -> None:
    assert main(["lowrank", "plan", "resnet20", "--method", "tt-nl", "--target", "flops=2"]) == 0
    assert "layers factorised" in capsys.readouterr().out
