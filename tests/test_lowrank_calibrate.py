"""Data-aware SVD: exact at full rank, never worse than weight SVD on the data it saw,
ranks read from the data's spectrum, wired through the recipe and the CLI flags."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import frugalnn
from frugalnn.errors import UserError
from frugalnn.methods.lowrank import decompose as dec
from frugalnn.methods.lowrank.calibrate import effective_weight, input_whitening
from frugalnn.methods.lowrank.compress import compress_model


def _skewed_inputs(n: int = 512, dim: int = 24, seed: int = 0) -> torch.Tensor:
    """Inputs whose variance falls by 1000x across directions (as trained features do)."""
    g = torch.Generator().manual_seed(seed)
    basis = torch.linalg.qr(torch.randn(dim, dim, generator=g))[0]
    return torch.randn(n, dim, generator=g) * torch.logspace(0, -3, dim) @ basis.T


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(24, 24), nn.ReLU(), nn.Linear(24, 6)).eval()


def test_whitening_is_the_cholesky_factor_of_the_input_second_moment() -> None:
    model, x = _mlp(), _skewed_inputs()
    loader = DataLoader(TensorDataset(x, torch.zeros(len(x))), batch_size=100)
    w = input_whitening(model, {"0": model[0]}, loader, damping=0.0)["0"]
    c = (x.double().T @ x.double() / len(x)).numpy()
    np.testing.assert_allclose(w @ w.T, c, rtol=1e-8, atol=1e-12)
    assert np.allclose(w, np.tril(w))


def test_1x1_conv_inputs_are_every_strided_position() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 5, 1, stride=2)).eval()
    x = torch.randn(4, 3, 6, 6)
    w = input_whitening(model, {"0": model[0]}, [(x, None)], damping=0.0)["0"]
    rows = x[..., ::2, ::2].permute(0, 2, 3, 1).reshape(-1, 3).double()
    np.testing.assert_allclose(w @ w.T, (rows.T @ rows / len(rows)).numpy(), rtol=1e-8)


@pytest.mark.parametrize("rank", [3, 6, 12])
def test_data_aware_factors_fit_the_outputs_at_least_as_well_as_weight_svd(rank: int) -> None:
    model, x = _mlp(), _skewed_inputs()
    layer = model[0]
    whiten = input_whitening(model, {"0": layer}, [(x, None)])["0"]
    with torch.no_grad():
        target = layer(x) - layer.bias
    errors = {}
    for name, wh in (("weight", None), ("data", whiten)):
        f = dec.svd_factors(layer.weight, rank, wh)
        approx = x.double() @ torch.from_numpy(f.right.T @ f.left.T)
        errors[name] = float((approx - target.double()).norm())
    assert errors["data"] <= errors["weight"] + 1e-9
    if rank < 12:
        assert errors["data"] < 0.5 * errors["weight"]  # skewed inputs: a large gain


def test_full_rank_data_aware_layer_reproduces_the_original() -> None:
    from frugalnn.methods.lowrank.layers import SVDConv1x1, SVDLinear

    model, x = _mlp(), _skewed_inputs()
    whiten = input_whitening(model, {"2": model[2]}, [(x, None)])["2"]
    layer = SVDLinear.from_linear(model[2], 6, whiten)  # 6 = min(24, 6): full rank
    torch.testing.assert_close(layer(x), model[2](x), rtol=1e-4, atol=1e-5)
    conv = nn.Conv2d(4, 3, 1).eval()
    xc = torch.randn(2, 4, 5, 5)
    wc = input_whitening(nn.Sequential(conv), {"0": conv}, [(xc, None)])["0"]
    torch.testing.assert_close(SVDConv1x1.from_conv(conv, 3, wc)(xc), conv(xc),
                               rtol=1e-4, atol=1e-5)


def test_ranks_read_the_effective_weights_spectrum() -> None:
    model, x = _mlp(), _skewed_inputs()
    whiten = input_whitening(model, {"0": model[0]}, [(x, None)])["0"]
    eff = effective_weight(model[0], whiten)
    s_eff = np.linalg.svd(eff.numpy(), compute_uv=False)
    s_w = np.linalg.svd(model[0].weight.detach().double().numpy(), compute_uv=False)
    energy = lambda s: int(np.searchsorted(np.cumsum(s**2) / np.sum(s**2), 0.99) + 1)  # noqa: E731
    assert energy(s_eff) < energy(s_w)  # the data occupy few directions
    _, plan = compress_model(_mlp(), "svd", "energy=0.99", x[:2], include=["0"],
                             calibration=[(x, None)])
    assert plan[0].ranks == (energy(s_eff),)


def test_recipe_flag_and_refusals() -> None:
    x = _skewed_inputs()
    data = TensorDataset(x, torch.zeros(len(x), dtype=torch.long))
    cfg = frugalnn.LowRankConfig(method="svd", target="rank=4", finetune_epochs=0,
                                 data_aware=True, calibration_examples=256)
    aware = frugalnn.lowrank(_mlp(), cfg, train_data=data).eval()
    plain = frugalnn.lowrank(_mlp(), frugalnn.LowRankConfig(
        method="svd", target="rank=4", finetune_epochs=0), train_data=data).eval()
    ref = _mlp()
    with torch.no_grad():
        err = {k: float((m(x) - ref(x)).norm()) for k, m in (("aware", aware), ("plain", plain))}
    assert err["aware"] < err["plain"]
    with pytest.raises(UserError, match="training data"):
        frugalnn.lowrank(_mlp(), cfg, example_input=x[:2])
    with pytest.raises(UserError, match="--method svd"):
        frugalnn.LowRankConfig(method="tucker", data_aware=True).validate()
    with pytest.raises(UserError, match="--method svd"):
        compress_model(_mlp(), "svd", "latency=0.5", x[:2], calibration=[(x, None)])


def test_the_plan_says_which_layers_are_data_aware() -> None:
    x = _skewed_inputs()
    _, plan = compress_model(_mlp(), "svd", "rank=4", x[:2], include=["0"],
                             calibration=[(x, None)])
    assert plan[0].ranks == (4,) and plan[0].reason.endswith("data-aware")


def test_calibration_takes_unlabelled_data() -> None:
    """Calibration needs inputs only: a ``TensorDataset`` of inputs alone, dicts without
    ``labels`` and labelled pairs all give the same factors."""
    x = _skewed_inputs()

    class _Dicts(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(x)

        def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
            return {"input": x[i]}

    class _Keyword(nn.Module):  # a model called with keyword inputs, as Hugging Face's are
        def __init__(self) -> None:
            super().__init__()
            self.net = _mlp()

        def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002
            return self.net(input)

    cfg = frugalnn.LowRankConfig(method="svd", target="rank=4", finetune_epochs=0,
                                 data_aware=True, calibration_examples=256)
    outs = []
    for model, data in ((_mlp(), TensorDataset(x, torch.zeros(len(x)))),
                        (_mlp(), TensorDataset(x)), (_Keyword(), _Dicts())):
        small = frugalnn.lowrank(model, cfg, train_data=data,
                                 example_input=x[:2] if isinstance(model, nn.Sequential)
                                 else {"input": x[:2]}).eval()
        with torch.no_grad():
            outs.append(small(x) if isinstance(model, nn.Sequential) else small(input=x))
    torch.testing.assert_close(outs[1], outs[0], rtol=0, atol=0)
    torch.testing.assert_close(outs[2], outs[0], rtol=1e-6, atol=1e-6)
    with pytest.raises(UserError, match="inputs or \\(inputs, labels\\) pairs; got list of 3"):
        frugalnn.lowrank(_mlp(), cfg, train_data=TensorDataset(x, x, x), example_input=x[:2])
