"""Capsule networks (models/capsnet.py) and their factorisation (methods/lowrank/capsule.py)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import frugalnn
from frugalnn.budget import has_budget
from frugalnn.cost.count import count_flops
from frugalnn.errors import UserError
from frugalnn.methods.lowrank import capsule as C
from frugalnn.methods.lowrank.compress import compress_model
from frugalnn.models.capsnet import (
    CapsuleTransform,
    dynamic_routing,
    margin_loss,
)
from frugalnn.models.registry import create_model

CAPS = "blocks.1.transform"  # the capsule transformation tensor's module
SMALL = dict(image_size=8, conv_channels=8, primary_caps=4, primary_dim=4, class_dim=6)


def small_capsnet(**kw) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("capsnet", **{**SMALL, **kw}).eval()


def test_shapes_and_published_sizes() -> None:
    x = torch.randn(2, 1, 28, 28)
    for name, params in (("capsnet", 8_215_568), ("capsnet_efficient", 161_824)):
        model = create_model(name).eval()
        assert sum(p.numel() for p in model.parameters()) == params
        out = model(x)
        assert out.shape == (2, 10) and bool(((out >= 0) & (out <= 1)).all())
    cifar = create_model("capsnet_efficient", in_channels=3, image_size=32).eval()
    assert cifar(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    small = small_capsnet()
    lengths, recon = small(torch.randn(3, 1, 8, 8), targets=torch.tensor([0, 1, 2]))
    assert lengths.shape == (3, 10) and recon.shape == (3, 1, 8, 8)


def test_routing_knob() -> None:
    model = small_capsnet()
    x = torch.randn(4, 1, 8, 8)
    default = model(x)
    assert has_budget(model) and model.budget_values() == [1.0, 2.0, 3.0]
    outs = {}
    for r in model.budget_values():
        model.set_budget(r)
        outs[r] = model(x)
    assert torch.equal(outs[model.full_budget()], default)
    assert not torch.allclose(outs[1.0], default)
    for bad in (0, -1, 1.5, "two"):
        with pytest.raises(UserError, match="routing iterations"):
            model.set_budget(bad)
    with pytest.raises(UserError, match="routing iterations"):
        create_model("capsnet", routing_iterations=0, **SMALL)
    assert not has_budget(create_model("capsnet_efficient", image_size=8))


def test_routing_one_iteration_is_uniform_coupling() -> None:
    u_hat = torch.randn(2, 5, 3, 4)
    v = dynamic_routing(u_hat, 1)
    s = u_hat.sum(1) / 3  # coupling 1/3 to each of the 3 class capsules
    n2 = (s * s).sum(-1, keepdim=True)
    assert torch.allclose(v, n2 / (1 + n2) * s / n2.sqrt(), atol=1e-6)


@pytest.mark.parametrize("layout", ["contiguous", "permuted"])
def test_routing_equals_procedure_1_of_the_paper(layout: str) -> None:
    """Three iterations against a literal transcription of routing-by-agreement, on
    predictions laid out either way in memory."""
    torch.manual_seed(0)
    u_hat = torch.randn(2, 7, 3, 4)
    if layout == "permuted":  # same values, (B, J, I, O) memory
        u_hat = u_hat.permute(0, 2, 1, 3).contiguous().permute(0, 2, 1, 3)
    logits = torch.zeros(2, 7, 3)
    for r in range(3):
        c = torch.softmax(logits, dim=2)
        s = (c.unsqueeze(-1) * u_hat).sum(1)
        n2 = (s * s).sum(-1, keepdim=True)
        v = n2 / (1 + n2) * s / (n2 + 1e-8).sqrt()
        if r < 2:
            logits = logits + (u_hat * v.unsqueeze(1)).sum(-1)
    torch.testing.assert_close(dynamic_routing(u_hat, 3), v, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("iterations", [1, 2, 3])
def test_flops_hand_count(iterations: int) -> None:
    """Convolutions + the transformation u_hat = W u + the routing's sums and agreements."""
    model = small_capsnet(routing_iterations=iterations)
    b = 3
    x = torch.randn(b, 1, 8, 8)
    d = model.blocks[1].transform
    ni, nj, do, di = d.in_caps, d.out_caps, d.out_dim, d.in_dim
    conv1 = 2 * 8 * 1 * 9 * 6 * 6  # 8 channels, 3x3 kernel, 6x6 out
    primary = 2 * 16 * 8 * 9 * 2 * 2  # 16 = 4 caps x 4D, 2x2 out (stride 2)
    transform = 2 * ni * nj * do * di
    routing = 2 * ni * nj * do * (2 * iterations - 1)  # weighted sums + agreements
    report = frugalnn.measure(model, x)
    assert report.flops == b * (conv1 + primary + transform + routing)
    assert report.unknown_ops == {}
    assert count_flops(d, torch.randn(b, ni, di)) == b * transform


def test_efficient_flops_hand_count() -> None:
    model = create_model("capsnet_efficient").eval()
    x = torch.randn(2, 1, 28, 28)
    convs = 2 * (32 * 25 * 24**2 + 64 * 32 * 9 * 22**2 + 64 * 64 * 9 * 20**2
                 + 128 * 64 * 9 * 9**2 + 128 * 81)
    ni, nj, do, di = 16, 10, 16, 8
    caps = 2 * ni * nj * do * di + 2 * nj * ni * ni * do + 2 * nj * ni * do
    assert frugalnn.measure(model, x).flops == 2 * (convs + caps)


def test_margin_loss_by_hand() -> None:
    lengths = torch.tensor([[0.95, 0.3, 0.05], [0.5, 0.2, 0.8]])
    targets = torch.tensor([0, 2])
    # row 0: present 0 (0.95 > 0.9); absent 0.5*(0.2^2) + 0 = 0.02
    # row 1: present (0.9-0.8)^2 = 0.01; absent 0.5*(0.4^2 + 0.1^2) = 0.085
    assert margin_loss(lengths, targets).item() == pytest.approx((0.02 + 0.095) / 2)
    with pytest.raises(UserError, match="margin loss"):
        margin_loss(lengths, torch.tensor([0, 1, 2]))


def test_training_reduces_loss_on_digits() -> None:
    splits = frugalnn.load_splits("digits", val_fraction=0.0, train_limit=256, test_limit=64)
    x = torch.stack([splits.train[i][0] for i in range(len(splits.train))])
    y = torch.tensor([int(splits.train[i][1]) for i in range(len(splits.train))])
    model = small_capsnet(conv_channels=16)
    model.train()
    loader = DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True)
    with torch.no_grad():
        before = model.training_loss(model, (x, y))[0].item()
    result = frugalnn.fit(model, loader, epochs=3, optimizer="adamw", lr=3e-3,
                          weight_decay=0.0, progress=False)
    with torch.no_grad():
        after = model.training_loss(model, (x, y))[0].item()
    assert after < 0.7 * before
    assert result.history[-1]["train_acc"] > 0.3  # lengths are the scores top-1 reads


def test_save_load_identical(tmp_path) -> None:
    from frugalnn.train.checkpoint import load_model, save_checkpoint

    x = torch.randn(3, 1, 8, 8)
    for model in (small_capsnet(routing_iterations=2),
                  create_model("capsnet_efficient", image_size=8).eval()):
        out = tmp_path / type(model).__name__
        save_checkpoint(out, model)
        again = load_model(out)
        assert torch.equal(model(x), again(x))
    # a checkpoint of other capsule shapes: one line naming the mismatch
    other = create_model("capsnet", **{**SMALL, "class_dim": 4})
    from frugalnn.train.checkpoint import load_weights

    with pytest.raises(UserError, match="does not fit"):
        load_weights(other, tmp_path / "CapsNet")


@pytest.mark.parametrize("method", ["tucker", "tt"])
def test_full_rank_factorisation_reproduces_layer(method: str) -> None:
    torch.manual_seed(1)
    layer = CapsuleTransform(12, 5, 4, 6, init_std=1.0)
    u = torch.randn(3, 12, 4)
    spec = C.CapsuleSpec.of(layer)
    full = C.max_ranks(method, spec)
    f = C.factorise(layer, method, full)
    assert torch.allclose(f(u), layer(u), atol=1e-5)
    assert count_flops(f, u) == 3 * C.chain_flops(method, spec, full)
    assert sum(p.numel() for p in f.parameters()) == C.chain_params(method, spec, full)


def test_cp_recovers_an_exact_low_rank_tensor() -> None:
    torch.manual_seed(2)
    a, b, c, d = (torch.randn(n, 2) for n in (12, 5, 6, 4))
    layer = CapsuleTransform(12, 5, 4, 6)
    with torch.no_grad():
        layer.weight.copy_(torch.einsum("ir,jr,or,dr->ijod", a, b, c, d))
    u = torch.randn(3, 12, 4)
    f = C.factorise(layer, "cp", (2,))
    assert torch.allclose(f(u), layer(u), atol=1e-4)
    assert count_flops(f, u) == 3 * C.chain_flops("cp", C.CapsuleSpec.of(layer), (2,))


def test_bad_ranks_one_line() -> None:
    layer = CapsuleTransform(12, 5, 4, 6)
    for method, ranks in (("tucker", (5, 6)), ("tt", (4, 49, 6)), ("cp", (0,))):
        with pytest.raises(UserError, match="impossible for the 12x5x6x4 capsule tensor"):
            C.factorise(layer, method, ranks)


def test_lowrank_picks_up_capsule_layers(tmp_path) -> None:
    from frugalnn.train.checkpoint import load_model, save_checkpoint

    torch.manual_seed(3)
    model = small_capsnet()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    x = torch.randn(4, 1, 8, 8)
    ref = model(x)
    cheap, plan = compress_model(copy.deepcopy(model), "tt", "params=4", x)
    rows = {p.name: p for p in plan}
    row, layer = rows[CAPS], cheap.blocks[1].transform
    assert row.kind == "capsule" and row.ranks is not None
    assert row.params * 4 <= row.dense_params
    assert isinstance(layer, C.TTCapsuleTransform)
    report = frugalnn.measure(layer, torch.randn(1, layer.in_caps, 4))
    assert report.params == row.params and report.flops == row.flops
    save_checkpoint(tmp_path / "ck", cheap)
    assert torch.equal(load_model(tmp_path / "ck")(x), cheap(x))
    # the public API finds the capsule tensor too (and leaves the original alone)
    cfg = frugalnn.LowRankConfig(method="tucker", target="params=3", include=[CAPS],
                                 finetune_epochs=0)
    small = frugalnn.lowrank(model, cfg, example_input=x)
    assert isinstance(small.blocks[1].transform, C.TuckerCapsuleTransform)
    assert isinstance(model.blocks[1].transform, CapsuleTransform) and torch.equal(model(x), ref)
    # at full rank the factorised capsule tensor reproduces the model
    spec = C.CapsuleSpec.of(model.blocks[1].transform)
    for method in ("tucker", "tt"):
        full = copy.deepcopy(model)
        full.blocks[1].transform = C.factorise(model.blocks[1].transform, method,
                                               C.max_ranks(method, spec))
        assert torch.allclose(full(x), ref, atol=1e-5)
    with pytest.raises(UserError, match="impossible for the 16x10x6x4 capsule tensor"):
        compress_model(copy.deepcopy(model), "tucker", "rank=5,2", x, include=[CAPS])
