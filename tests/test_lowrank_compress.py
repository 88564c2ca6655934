"""Whole-model compression: plan, costs, knob, checkpoint rebuild, latency selection."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from frugalnn.budget import has_budget
from frugalnn.cost.count import count_flops
from frugalnn.errors import UserError
from frugalnn.methods.lowrank import layers as L
from frugalnn.methods.lowrank.compress import compress_model, find_layers, plan_totals
from frugalnn.methods.lowrank.geometry import ConvSpec
from frugalnn.methods.lowrank.latency_select import greedy_choice
from frugalnn.models import create_model
from frugalnn.models.fold import conv_bn_pairs, fold_batchnorm
from frugalnn.train.checkpoint import load_model, save_checkpoint


def _resnet() -> tuple[nn.Module, torch.Tensor]:
    return create_model("resnet20").eval(), torch.randn(2, 3, 32, 32)


def _small_cnn() -> tuple[nn.Module, torch.Tensor]:
    # CP by ALS is the slow decomposition: test it on a model with fewer, smaller convs.
    return create_model("cnn_small", image_size=8).eval(), torch.randn(2, 1, 8, 8)


@pytest.mark.parametrize("method", ["cp", "tucker", "tt"])
def test_flops_target_met_and_counted(method: str) -> None:
    model, x = _small_cnn() if method == "cp" else _resnet()
    n_convs = sum(isinstance(m, nn.Conv2d) for m in model.modules())
    dense = count_flops(model, x[:1])
    dense_params = sum(p.numel() for p in model.parameters())
    model, plan = compress_model(model, method, "flops=2", x)
    totals = plan_totals(plan)
    assert totals["layers_factorised"] == n_convs
    assert totals["flops_ratio"] >= 2.0
    # The plan's per-layer counts agree with what FlopCounterMode sees on the model.
    counted = count_flops(model, x[:1])
    assert dense - counted == totals["dense_flops"] - totals["flops"]
    params = sum(p.numel() for p in model.parameters())
    assert params == dense_params - totals["dense_params"] + totals["params"]
    assert model(x).shape == (2, 10)


def test_batchnorm_folds_into_absorbed_tt_chains(tmp_path) -> None:
    # The spatially separable TT chain ends in a real Conv2d, so the BatchNorm
    # after it folds as in the dense model (what fair latency comparisons use),
    # and a saved TT model rebuilds to the same outputs.
    model, x = _resnet()
    with torch.no_grad():  # non-trivial BatchNorm statistics
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    dense_pairs = len(conv_bn_pairs(model))
    model, _ = compress_model(model, "tt", "flops=3", x)
    ref = model(x)
    save_checkpoint(tmp_path / "ckpt", model, {"note": "tt"})
    torch.testing.assert_close(load_model(tmp_path / "ckpt")(x), ref)
    assert fold_batchnorm(model) == dense_pairs
    torch.testing.assert_close(model(x), ref, atol=1e-4, rtol=1e-4)


def test_checkpoint_rebuild_gives_identical_outputs(tmp_path) -> None:
    model, x = _small_cnn()
    model, _ = compress_model(model, "cp", "flops=3", x, depthwise="kxk")
    model.set_budget(1.0)
    ref = model(x)
    save_checkpoint(tmp_path / "ckpt", model, {"note": "test"})
    loaded = load_model(tmp_path / "ckpt")
    torch.testing.assert_close(loaded(x), ref)
    assert has_budget(loaded)
    loaded.set_budget(0.5)
    model.set_budget(0.5)
    torch.testing.assert_close(loaded(x), model(x))


def test_rank_knob() -> None:
    model, x = _resnet()
    model, _ = compress_model(model, "tucker", "flops=2", x)
    assert has_budget(model) and model.budget_name == "rank_fraction"
    assert model.budget_values() == sorted(model.budget_values())
    full = model(x)
    costs = []
    for b in model.budget_values():
        model.set_budget(b)
        costs.append(count_flops(model, x[:1]))
    assert costs == sorted(costs) and costs[0] < costs[-1]
    model.set_budget(model.full_budget())
    torch.testing.assert_close(model(x), full)
    with pytest.raises(UserError):
        model.set_budget(1.5)


def test_exact_at_full_rank_on_a_whole_model() -> None:
    torch.manual_seed(0)
    model = create_model("cnn_small", image_size=8).eval()
    x = torch.randn(3, 1, 8, 8)
    ref = model(x)
    # Tucker ranks (in, out) of every conv: exact; but not cheaper, so kept dense...
    with pytest.raises(UserError, match="no layer gets cheaper"):
        compress_model(copy.deepcopy(model), "tucker", "energy=1.0", x)
    # ...while the layers themselves reproduce the model exactly at those ranks.
    for name, conv in list(model.named_modules()):
        if isinstance(conv, nn.Conv2d):
            model.set_submodule(name, L.from_conv(conv, "tucker",
                                                  L.max_ranks("tucker", ConvSpec.of(conv))))
    torch.testing.assert_close(model(x), ref, atol=1e-5, rtol=1e-4)


def test_nothing_to_factorise_is_a_user_error() -> None:
    mlp = create_model("mlp", input_shape=(1, 8, 8), hidden=16, depth=2)
    with pytest.raises(UserError, match="nothing to factorise"):
        compress_model(mlp, "tucker", "flops=2", torch.randn(2, 1, 8, 8))
    with pytest.raises(UserError, match="unknown method"):
        find_layers(mlp, "qr", torch.randn(2, 1, 8, 8))


def test_svd_on_linear_layers_of_mlp() -> None:
    mlp = create_model("mlp", input_shape=(1, 8, 8), hidden=32, depth=2).eval()
    x = torch.randn(4, 1, 8, 8)
    model, plan = compress_model(mlp, "svd", "params=2", x)
    assert plan_totals(plan)["params_ratio"] >= 1.5
    assert any(isinstance(m, L.SVDLinear) for m in model.modules())


def test_greedy_latency_choice() -> None:
    table = {
        "a": {"dense_ms": 10.0, "candidates": [{"ranks": (4,), "ms": 6.0, "error": 0.1},
                                               {"ranks": (2,), "ms": 4.0, "error": 0.5}]},
        "b": {"dense_ms": 5.0, "candidates": [{"ranks": (4,), "ms": 5.5, "error": 0.01}]},
    }
    choice, predicted = greedy_choice(table, model_ms=20.0, target_ms=16.5)
    assert choice["b"] is None  # slower than dense: never factorised
    assert choice["a"]["ranks"] == (4,) and predicted == pytest.approx(16.0)
    choice, predicted = greedy_choice(table, model_ms=20.0, target_ms=10.0)
    assert predicted == pytest.approx(14.0)  # best reachable


def test_latency_target_end_to_end_small() -> None:
    model = create_model("cnn_small", image_size=8, widths=(16, 32, 64)).eval()
    x = torch.randn(2, 1, 8, 8)
    try:
        model, plan = compress_model(model, "tucker", "latency=0.99", x,
                                     latency={"batch_size": 8, "repeats": 3, "warmup": 1})
    except UserError as exc:  # a loaded CPU may find nothing faster: the error must say so
        assert "not reachable" in str(exc) or "no layer" in str(exc)
        return
    for p in plan:
        assert "dense_ms" in p.extra
        if p.ranks is not None:
            assert p.extra["lowrank_ms"] < p.extra["dense_ms"]


def test_svd_on_a_vit_round_trips_through_a_checkpoint(tmp_path) -> None:
    vit = create_model("vit_tiny", image_size=8, patch_size=2, in_channels=1, dim=32, depth=2,
                       heads=2).eval()
    x = torch.randn(2, 1, 8, 8)
    vit, plan = compress_model(vit, "svd", "params=1.5", x, exclude=["head"])
    assert any(p.name.endswith("attn.qkv") and p.ranks for p in plan)
    assert all(p.extra["input_hw"] == [17, 1] for p in plan)  # 16 patches + CLS per example
    ref = vit(x)
    save_checkpoint(tmp_path / "ckpt", vit)
    torch.testing.assert_close(load_model(tmp_path / "ckpt")(x), ref)


def test_compressing_twice_leaves_existing_chains_alone() -> None:
    mlp = create_model("mlp", input_shape=(1, 8, 8), hidden=32, depth=2).eval()
    x = torch.randn(2, 1, 8, 8)
    mlp, _ = compress_model(mlp, "svd", "params=1.5", x)
    with pytest.raises(UserError, match="nothing to factorise"):
        compress_model(mlp, "svd", "params=1.5", x, include=["*first*", "*second*"])


def test_layer_targets_override_by_pattern_and_align_ranks(tmp_path) -> None:
    model, x = _resnet()  # resnet20: blocks 0-2 at 16 channels, 3-5 at 32, 6-8 at 64
    model, plan = compress_model(
        model, "tt", "flops=2", x, exclude=["conv1"], rank_multiple=8,
        layer_targets=["blocks.[0-2].*:flops=1.5", "blocks.[3-5].*:flops=3", "blocks.0.*:flops=4"])
    ranks = {row.name: row.ranks for row in plan}
    assert ranks["blocks.0.conv1"] == (16, 16, 16)  # 1.5x: the first matching pattern wins
    assert ranks["blocks.4.conv2"] == (32, 16, 32)  # 3x
    assert ranks["blocks.7.conv1"] == (64, 48, 64)  # no pattern: the default flops=2
    assert "conv1" not in ranks
    assert all("multiple of 8" in row.reason for row in plan if row.name.startswith("blocks.0"))
    save_checkpoint(tmp_path / "ckpt", model, {"note": "test"})
    loaded = load_model(tmp_path / "ckpt").eval()
    assert torch.equal(loaded(x), model(x))


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"layer_targets": ["flops=2"]}, "PATTERN:TARGET"),
    ({"layer_targets": ["blocks.0.*:speed=2"]}, "bad target"),
    ({"layer_targets": ["layer9.*:flops=2"]}, "match no eligible layer"),
    ({"layer_targets": ["blocks.0.*:latency=0.5"]}, "whole-model"),
    ({"rank_multiple": 0}, "rank-multiple"),
])
def test_bad_layer_targets_are_user_errors(kwargs, match) -> None:
    model, x = _resnet()
    with pytest.raises(UserError, match=match):
        compress_model(model, "tt", "flops=2", x, **kwargs)


def test_conv_subclasses_that_do_more_than_a_conv_are_left_alone() -> None:
    # A conv that pads "same" inside forward (EfficientNet's stem): replacing it by a
    # factorised chain would silently drop that padding, so it is not a candidate.
    import torch.nn.functional as F

    class SamePadConv(nn.Conv2d):
        def forward(self, x):
            return super().forward(F.pad(x, (0, 1, 0, 1)))

    class Subclassed(nn.Conv2d):  # same computation: still a candidate
        pass

    model = nn.Sequential(SamePadConv(3, 8, 3, stride=2), Subclassed(8, 8, 3, padding=1),
                          nn.Conv2d(8, 8, 3, padding=1, padding_mode="circular"))
    names = [t.name for t in find_layers(model, "tucker", torch.randn(1, 3, 16, 16))]
    assert names == ["1"]
