"""int8 quantisation: the three modes, costs by precision, checkpoints, bad input."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import frugalnn
from frugalnn.cost.count import flops_per_example, measure
from frugalnn.errors import UserError
from frugalnn.methods.quant.convert import static_targets
from frugalnn.train.checkpoint import load_model, save_checkpoint


def _resnet() -> nn.Module:
    torch.manual_seed(0)
    return frugalnn.create_model("resnet20").eval()


def _images(n: int = 32) -> TensorDataset:
    g = torch.Generator().manual_seed(1)
    return TensorDataset(torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,)))


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return frugalnn.create_model("mlp", input_shape=(1, 8, 8), hidden=64, depth=2).eval()


X = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))


@pytest.fixture(scope="module")
def static_resnet() -> tuple[nn.Module, nn.Module]:
    model = _resnet()
    config = frugalnn.QuantConfig(mode="static", observer="minmax", calibration_size=32)
    q = frugalnn.quantize(model, config, calibration_data=_images())
    return model, q


def test_static_int8_is_close_counts_every_op_and_is_smaller(static_resnet) -> None:
    model, q = static_resnet
    assert static_targets(model) == [""]  # the whole ResNet traces
    ref, out = model(X), q(X)
    assert torch.nn.functional.cosine_similarity(ref, out).min() > 0.95
    f, c = measure(model, X), measure(q, X)
    # Same arithmetic, now all int8; conv weights int8, BN folded into them.
    assert c.flops == f.flops and c.flops_by_precision == {"int8": f.flops}
    assert f.flops_by_precision == {"fp32": f.flops}
    conv_fc = sum(m.weight.numel() for m in model.modules()
                  if isinstance(m, (nn.Conv2d, nn.Linear)))
    assert c.params_by_precision["int8"] == conv_fc
    assert f.model_bytes / c.model_bytes > 3.5
    assert flops_per_example(q, X) == f.flops / 4
    assert "quantized.conv2d" in " ".join(c.flops_by_op)


@pytest.mark.parametrize("mode,label", [("dynamic", "int8"), ("weight_only", "fp32")])
def test_linear_modes_keep_outputs_and_count_params_by_precision(mode: str, label: str) -> None:
    model = _mlp()
    x = torch.randn(8, 1, 8, 8)
    q = frugalnn.quantize(model, frugalnn.QuantConfig(mode=mode))
    assert q is not model and all(type(m) is not nn.Linear for m in q.modules())
    torch.testing.assert_close(q(x), model(x), atol=0.05, rtol=0.05)
    f, c = measure(model, x), measure(q, x)
    assert f.params == c.params > 0  # dynamic int8 weights are no longer "0 params"
    assert c.flops == f.flops and c.flops_by_precision == {label: f.flops}
    biases = sum(m.bias.numel() for m in model.modules() if isinstance(m, nn.Linear))
    assert c.params_by_precision == {"int8": f.params - biases, "fp32": biases}
    assert f.model_bytes / c.model_bytes > 3


@pytest.mark.parametrize("mode", ["dynamic", "weight_only", "static"])
def test_quantised_checkpoint_reproduces_outputs_exactly(tmp_path, mode: str) -> None:
    model = _resnet()
    q = frugalnn.quantize(model, frugalnn.QuantConfig(mode=mode, calibration_size=16),
                          calibration_data=_images(16))
    save_checkpoint(tmp_path / "ck", q)
    assert (tmp_path / "ck" / "model.safetensors").is_file()
    again = load_model(tmp_path / "ck")
    assert torch.equal(again(X), q(X))
    assert again.frugalnn_transforms[-1]["name"] == "int8"
    assert measure(again, X).model_bytes == measure(q, X).model_bytes


def test_bad_input_is_one_clear_line(monkeypatch) -> None:
    relu = nn.Sequential(nn.ReLU())
    for mode in ("dynamic", "weight_only", "static"):
        with pytest.raises(UserError, match="no layers"):
            frugalnn.quantize(relu, frugalnn.QuantConfig(mode=mode), calibration_data=_images())
    with pytest.raises(UserError, match="needs calibration data"):
        frugalnn.quantize(_resnet(), frugalnn.QuantConfig(mode="static"))
    with pytest.raises(UserError, match="needs calibration data"):
        frugalnn.quantize(_resnet(), frugalnn.QuantConfig(mode="static"),
                          calibration_data=_images(0))
    from frugalnn.methods.quant import convert

    monkeypatch.setattr(convert, "available_engines", lambda: ["qnnpack"])
    with pytest.raises(UserError, match="'x86' is not available .*available: qnnpack"):
        frugalnn.quantize(_mlp(), frugalnn.QuantConfig(mode="dynamic"))
    with pytest.raises(UserError, match="unknown int8 backend"):
        frugalnn.QuantConfig(backend="tensorrt").validate()


class _Gated(nn.Module):
    """Data-dependent control flow (as in early exits): not traceable as a whole."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                               nn.Flatten(), nn.Linear(8, 10))
        self.early = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
        self.threshold = 2.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        early = self.early(h)
        if early.softmax(-1).max() > self.threshold:  # the "budget knob"
            return early
        return self.b(h)


def test_static_quantises_traceable_parts_and_keeps_the_control_flow(tmp_path) -> None:
    torch.manual_seed(0)
    model = _Gated().eval()
    assert static_targets(model) == ["a", "b", "early"]
    q = frugalnn.quantize(model, frugalnn.QuantConfig(mode="static", calibration_size=16),
                          calibration_data=_images(16))
    assert torch.nn.functional.cosine_similarity(q(X), model(X)).min() > 0.9
    q.threshold = 0.0  # the knob still works: now the early head answers
    torch.testing.assert_close(q(X), q.early(q.a(X)))
    assert measure(q, X).flops_by_precision.keys() == {"int8"}


def test_lowrank_then_int8_stacks(tmp_path) -> None:
    model = _resnet()
    lr = frugalnn.lowrank(model, frugalnn.LowRankConfig(method="tucker", target="flops=2",
                                                        finetune_epochs=0), example_input=X[:1])
    q = frugalnn.quantize(lr, frugalnn.QuantConfig(mode="static", observer="minmax",
                                                   calibration_size=16),
                          calibration_data=_images(16))
    f, c = measure(model, X), measure(q, X)
    assert c.flops_by_precision.keys() == {"int8"} and c.flops < f.flops
    assert f.model_bytes / c.model_bytes > 5
    save_checkpoint(tmp_path / "ck", q)
    assert torch.equal(load_model(tmp_path / "ck")(X), q(X))


def test_early_exit_model_quantises_and_keeps_its_budget_knob(tmp_path) -> None:
    torch.manual_seed(0)
    data = _images(32)
    ee = frugalnn.early_exit(_resnet(), frugalnn.EarlyExitConfig(epochs=1, batch_size=16),
                             train_data=data)
    q = frugalnn.quantize(ee, frugalnn.QuantConfig(mode="static", calibration_size=16),
                          calibration_data=data)
    assert type(q) is type(ee) and "backbone.blocks.0" in q.frugalnn_transforms[-1]["args"][
        "targets"]  # the staged backbone keeps its stages; each is int8
    q.set_budget(q.full_budget())
    ee.set_budget(ee.full_budget())
    assert torch.nn.functional.cosine_similarity(q(X), ee(X)).min() > 0.95
    low = q.budget_values()[0]
    q.set_budget(low)
    assert measure(q, X).flops < measure(ee, X).flops  # the knob still cuts work
    save_checkpoint(tmp_path / "ck", q)
    again = load_model(tmp_path / "ck")
    again.set_budget(low)
    assert torch.equal(again(X), q(X))


@pytest.mark.parametrize("mode", ["dynamic", "static"])
def test_moe_model_quantises_keeps_tau_and_reloads(tmp_path, mode: str) -> None:
    import copy

    torch.manual_seed(0)
    vit = frugalnn.create_model("vit_tiny", image_size=8, patch_size=2, in_channels=1, dim=16,
                                depth=1, heads=2).eval()
    x = torch.randn(16, 1, 8, 8)
    data = TensorDataset(x, torch.zeros(16, dtype=torch.long))
    moe = frugalnn.moe(copy.deepcopy(vit), frugalnn.MoEConfig(experts=4, router_epochs=0),
                       train_data=[(x, data.tensors[1])])
    q = frugalnn.quantize(moe, frugalnn.QuantConfig(mode=mode, calibration_size=16),
                          calibration_data=data)
    for tau in (moe.budget_values()[0], 1.0):
        q.set_budget(tau)
        moe.set_budget(tau)
        assert torch.nn.functional.cosine_similarity(q(x), moe(x)).min() > 0.95
        assert measure(q, x).flops_by_precision["int8"] > 0
    save_checkpoint(tmp_path / "ck", q)
    again = load_model(tmp_path / "ck")
    again.set_budget(1.0)
    assert torch.equal(again(x), q(x))


def test_uint8_embeddings_with_dynamic_int8_shrink_a_language_model(tmp_path) -> None:
    torch.manual_seed(0)
    lm = frugalnn.create_model("lm_tiny", vocab_size=500).eval()
    x = torch.randint(0, 500, (2, 16))
    config = frugalnn.QuantConfig(mode="dynamic", embeddings="uint8")
    q = frugalnn.quantize(lm, config)
    assert not any(type(m) is nn.Embedding for m in q.modules())
    torch.testing.assert_close(q(x), lm(x), atol=0.1, rtol=0.1)
    f, c = measure(lm, x), measure(q, x)
    assert c.params == f.params and f.model_bytes / c.model_bytes > 3
    save_checkpoint(tmp_path / "ck", q)
    assert torch.equal(load_model(tmp_path / "ck")(x), q(x))
    with pytest.raises(UserError, match="needs nn.Embedding"):
        frugalnn.quantize(_mlp(), config)


def _close_and_counted(model: nn.Module, q: nn.Module, x: torch.Tensor, min_cos: float,
                       precision: str, tmp_path) -> None:
    """Outputs close to the float model's, int8 arithmetic counted, save/load exact."""
    with torch.no_grad():
        ref, out = model(x), q(x)
    assert torch.nn.functional.cosine_similarity(ref, out).min() > min_cos
    assert precision in measure(q, x).flops_by_precision
    save_checkpoint(tmp_path / "ck", q)
    torch.testing.assert_close(load_model(tmp_path / "ck")(x), out, rtol=0, atol=0)


def test_nas_net_quantises_static(tmp_path) -> None:
    torch.manual_seed(0)
    model = frugalnn.create_model("nas_net").eval()
    q = frugalnn.quantize(model, frugalnn.QuantConfig(mode="static", observer="minmax",
                                                      calibration_size=32),
                          calibration_data=_images())
    _close_and_counted(model, q, X, 0.9, "int8", tmp_path)
    assert measure(q, X).flops_by_precision.keys() == {"int8"}  # the whole net is int8


def test_pruned_model_quantises_static(tmp_path) -> None:
    pytest.importorskip("torch_pruning")
    small = frugalnn.prune(_resnet(), frugalnn.PruneConfig(target="flops=1.5", epochs=0),
                           example_input=X[:1]).eval()
    q = frugalnn.quantize(small, frugalnn.QuantConfig(mode="static", observer="minmax",
                                                      calibration_size=32),
                          calibration_data=_images())
    _close_and_counted(small, q, X, 0.9, "int8", tmp_path)
    f, c = measure(_resnet(), X), measure(q, X)
    assert c.flops < f.flops and f.model_bytes / c.model_bytes > 1.5 * 3.5


def test_nmf_token_mixing_model_quantises_dynamic(tmp_path) -> None:
    from frugalnn.methods.lowrank.nmf import replace_attention

    torch.manual_seed(0)
    vit = replace_attention(frugalnn.create_model("vit_tiny"), rank=8).eval()
    q = frugalnn.quantize(vit, frugalnn.QuantConfig(mode="dynamic"))
    # the mixers' multiplicative updates stay float; the projections and MLPs go int8
    _close_and_counted(vit, q, X, 0.98, "int8", tmp_path)
    assert "fp32" in measure(q, X).flops_by_precision
