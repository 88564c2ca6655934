"""FFN sites of models frugalnn did not define, and the FFN methods on them.

Tiny Hugging Face BERT / ViT / Llama built from configs (no download), a
hand-written timm-style ViT and an ``nn.Sequential`` MLP: sites are found with
their module paths; MoE (plain and gated) and ACM at full budget reproduce the
original outputs; below full budget a gated MoE counts fewer FLOPs; sparsity
analysis and training run on dict inputs; factorised layers keep what HF ViT
reads from its patch projection; converted HF models save and load; bad
patterns and unrecognised models get one line.
"""

from __future__ import annotations

import os

import pytest
import torch
from tiny_hf import tiny_bert, tiny_llama, tiny_vit
from torch import nn

from frugalnn.cost.ledger import CostLedger
from frugalnn.errors import UserError
from frugalnn.methods.acm import convert_to_acm
from frugalnn.methods.lowrank import layers as L
from frugalnn.methods.moe import MoEFFN, convert_to_moe
from frugalnn.models.adapters.ffn import find_ffn_sites
from frugalnn.utils.batch import call_model, logits_of

transformers = pytest.importorskip("transformers")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

DIM, HIDDEN, VOCAB, SEQ = 32, 64, 50, 6


# -- models -------------------------------------------------------------------------------
def hf_bert() -> nn.Module:
    return tiny_bert(layers=2, labels=3, positions=16)


def hf_vit() -> nn.Module:
    return tiny_vit(layers=2, labels=5)


def hf_llama() -> nn.Module:
    return tiny_llama(layers=2, positions=16)


class TimmMlp(nn.Module):
    """timm's ``Mlp``: fc1 -> act -> drop -> norm (Identity) -> fc2 -> drop."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.act, self.drop1 = nn.Linear(DIM, HIDDEN), nn.GELU(), nn.Dropout(0.1)
        self.norm, self.fc2, self.drop2 = nn.Identity(), nn.Linear(HIDDEN, DIM), nn.Dropout(0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop2(self.fc2(self.norm(self.drop1(self.act(self.fc1(x))))))


class TimmBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(DIM), nn.LayerNorm(DIM)
        self.attn = nn.MultiheadAttention(DIM, 2, batch_first=True)
        self.mlp = TimmMlp()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class TimmViT(nn.Module):
    """A timm-style ViT written by hand (patch_embed, cls_token, pos_embed, blocks, head)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.patch_embed = nn.Conv2d(3, DIM, 4, 4)
        self.cls_token = nn.Parameter(torch.randn(1, 1, DIM) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, 17, DIM) * 0.02)
        self.blocks = nn.Sequential(TimmBlock(), TimmBlock())
        self.norm, self.head = nn.LayerNorm(DIM), nn.Linear(DIM, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], 1) + self.pos_embed
        return self.head(self.norm(self.blocks(x))[:, 0])


def seq_mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(8, DIM),
        nn.Sequential(nn.Linear(DIM, HIDDEN), nn.ReLU(), nn.Dropout(0.0), nn.Linear(HIDDEN, DIM)),
        nn.Linear(DIM, 3),
    ).eval()


def text_input(batch: int = 3, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (batch, SEQ), generator=g)
    mask = torch.ones(batch, SEQ, dtype=torch.long)
    mask[0, -2:] = 0  # some padding
    return {"input_ids": ids, "attention_mask": mask}


def image_input(batch: int = 3, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


#: name -> (builder, example input, pattern (None: automatic), expected site names)
MODELS = {
    "bert": (hf_bert, text_input, None,
             ["bert.encoder.layer.0.intermediate", "bert.encoder.layer.1.intermediate"]),
    "vit": (hf_vit, image_input, None, ["vit.layers.0.mlp", "vit.layers.1.mlp"]),
    "llama": (hf_llama, text_input, None, ["model.layers.0.mlp", "model.layers.1.mlp"]),
    "timm": (lambda: TimmViT().eval(), image_input, None, ["blocks.0.mlp", "blocks.1.mlp"]),
    "sequential": (seq_mlp, lambda: torch.randn(4, 8), "1", ["1"]),
}


def outputs(model: nn.Module, x: object) -> torch.Tensor:
    with torch.no_grad():
        return logits_of(call_model(model, x))


def text_loader(n: int = 2, labels: str = "class") -> list[dict[str, torch.Tensor]]:
    out = []
    for i in range(n):
        batch = text_input(4, seed=10 + i)
        if labels == "class":
            batch["labels"] = torch.randint(0, 3, (4,), generator=torch.Generator().manual_seed(i))
        out.append(batch)
    return out


# -- sites --------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(MODELS))
def test_sites_found_with_module_paths(name):
    build, _, pattern, expected = MODELS[name]
    model = build()
    sites = find_ffn_sites(model, pattern)
    assert [s.name for s in sites] == expected
    modules = dict(model.named_modules())
    for s in sites:
        assert s.name in modules  # the path of the module a replacement goes to
        assert s.fc1.out_features == s.fc2.in_features == HIDDEN
    gated = [s.gate is not None for s in sites]
    assert gated == [name == "llama"] * len(sites)


def test_pattern_names_hf_layers_or_their_intermediates():
    model = hf_bert()
    by_inter = find_ffn_sites(model, "bert.encoder.layer.*.intermediate")
    by_layer = find_ffn_sites(model, "bert.encoder.layer.?")
    assert [s.name for s in by_inter] == [s.name for s in by_layer] == MODELS["bert"][3]
    assert [s.name for s in find_ffn_sites(hf_llama(), "model.layers.*.mlp")] == \
        MODELS["llama"][3]


def test_unrecognised_model_gets_one_line_naming_the_option():
    cnn = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2))
    for model in (cnn, seq_mlp()):
        with pytest.raises(UserError, match="--ffn-pattern") as err:
            convert_to_moe(model, num_experts=2, router_epochs=0)
        assert "\n" not in str(err.value) and "ffn_pattern=" in str(err.value)


def test_bad_patterns_get_one_line():
    with pytest.raises(UserError, match="matches no module") as err:
        find_ffn_sites(hf_bert(), "encoder.layers.*.mlp")
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="is not a feed-forward layer") as err:
        find_ffn_sites(hf_bert(), "bert.encoder.layer.*.attention")
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="is not a feed-forward layer"):
        find_ffn_sites(seq_mlp(), "0")  # a single Linear


def test_converted_sites_are_not_found_again():
    model = hf_llama()
    moe = convert_to_moe(model, num_experts=4, router_epochs=0)
    assert find_ffn_sites(model, required=False) == []
    assert moe.ffn_sites() == []
    assert len(moe.moe_layers()) == 2 and all(m.gated for m in moe.moe_layers())


# -- MoE ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(MODELS))
def test_moe_full_budget_reproduces_original(name):
    build, make_input, pattern, _ = MODELS[name]
    model = build()
    x = make_input()
    before = outputs(model, x)
    moe = convert_to_moe(model, num_experts=4, router_epochs=0, ffn_pattern=pattern)
    assert len(moe.moe_layers()) == len(MODELS[name][3])
    torch.testing.assert_close(outputs(moe, x), before, rtol=1e-4, atol=1e-5)


def test_gated_moe_matches_dense_on_every_path():
    site = find_ffn_sites(hf_llama())[0]
    mlp = dict(hf_llama().named_modules())[site.name]
    experts = [torch.arange(i, HIDDEN, 4) for i in range(4)]
    layer = MoEFFN.from_dense(site.fc1, site.act, site.fc2, experts, gate=site.gate)
    x = torch.randn(2, 5, DIM)
    with torch.no_grad():
        want = mlp(x)
        torch.testing.assert_close(layer(x), want, rtol=1e-5, atol=1e-6)
        layer.set_mode("topk", k=4)  # every expert, through the routed paths
        for impl in ("gather", "bmm"):
            layer.set_impl(impl)
            torch.testing.assert_close(layer(x), want, rtol=1e-5, atol=1e-6)


def test_gated_moe_below_full_budget_runs_and_counts_fewer_flops():
    model = hf_llama()
    x = text_input(2)
    moe = convert_to_moe(model, num_experts=4, router_epochs=1, loader=text_loader(2, "none"),
                         router_hidden=8)  # the default router costs as much as this tiny FFN
    costs = {}
    for k in (4.0, 1.0):
        moe.set_mode("topk")
        moe.set_budget(k)
        led = CostLedger(2)
        with led, torch.no_grad():
            out = logits_of(moe(x))
        assert torch.isfinite(out).all()
        costs[k] = float(led.flops.sum())
    assert costs[1.0] < costs[4.0]
    one = moe.moe_layers()[0]
    assert one.gated and one.expert_flops > 0


def test_moe_recipe_runs_on_dict_batches():
    import frugalnn

    model = hf_bert()
    cfg = frugalnn.MoEConfig(experts=4, router_epochs=1, batch_size=4, taus=[0.5, 1.0])
    data = text_loader(2)
    moe = frugalnn.moe(model, cfg, train_data=data)
    assert len(moe.moe_layers()) == 2
    moe.set_budget(0.5)
    assert torch.isfinite(outputs(moe, text_input())).all()


# -- ACM ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(MODELS))
def test_acm_full_budget_reproduces_original(name):
    build, make_input, pattern, _ = MODELS[name]
    model = build()
    x = make_input()
    before = outputs(model, x)
    acm = convert_to_acm(model, num_learners=4, ffn_pattern=pattern)
    assert len(acm.acm_layers()) == len(MODELS[name][3])
    assert all(m.gated == (name == "llama") for m in acm.acm_layers())
    torch.testing.assert_close(outputs(acm, x), before, rtol=1e-4, atol=1e-5)


def test_acm_trains_on_dict_batches():
    import copy

    from torch.utils.data import DataLoader

    from frugalnn.methods.acm.training import ACMTrainConfig, train_acm

    model = hf_bert()
    teacher = copy.deepcopy(model)
    acm = convert_to_acm(model, num_learners=4)
    cfg = ACMTrainConfig(distill_epochs=1, gate_epochs=1, finetune_epochs=1)
    items = [{k: v[i] for k, v in b.items()} for b in text_loader(2) for i in range(4)]
    train_acm(acm, teacher, DataLoader(items, batch_size=4), cfg)
    acm.set_budget(0.0)
    assert torch.isfinite(outputs(acm, text_input())).all()


# -- sparsity -----------------------------------------------------------------------------
def test_sparsity_analysis_on_dict_inputs():
    from frugalnn.analysis.sparsity import activation_sparsity

    for model, pattern in ((hf_bert(), None), (hf_llama(), "model.layers.*.mlp")):
        report = activation_sparsity(model, text_loader(2), ffn_pattern=pattern)
        assert report.examples == 8
        names = [layer.name for layer in report.layers]
        assert names == [s.name for s in find_ffn_sites(model)]


# -- low-rank -----------------------------------------------------------------------------
def test_factorised_layers_keep_what_callers_read():
    conv = nn.Conv2d(3, 8, 4, stride=4, padding=1)
    for chain in (L.from_conv(conv, "tucker", (3, 8)), L.from_conv(conv, "cp", 4),
                  L.from_conv(conv, "tt", (3, 4, 8))):
        assert chain.weight.dtype == conv.weight.dtype
        assert chain.weight.device == conv.weight.device
        assert (chain.in_channels, chain.out_channels) == (3, 8)
        assert (chain.kernel_size, chain.stride, chain.padding) == ((4, 4), (4, 4), (1, 1))
        assert chain.groups == 1 and chain.bias is not None
        torch.testing.assert_close(chain.bias, conv.bias)
    lin = nn.Linear(DIM, HIDDEN).double()
    svd = L.SVDLinear.from_linear(lin, DIM)
    assert (svd.in_features, svd.out_features, svd.weight.dtype) == (DIM, HIDDEN, torch.float64)


def test_lowrank_on_hf_vit_runs_and_full_rank_reproduces():
    from frugalnn.methods.lowrank.compress import compress_model

    x = image_input()
    model = hf_vit()
    before = outputs(model, x)
    proj = model.vit.embeddings.patch_embeddings.projection
    model.vit.embeddings.patch_embeddings.projection = L.from_conv(proj, "tucker", (3, DIM))
    fc1 = model.vit.layers[0].mlp.fc1
    model.vit.layers[0].mlp.fc1 = L.SVDLinear.from_linear(fc1, DIM)
    torch.testing.assert_close(outputs(model, x), before, rtol=1e-4, atol=1e-4)
    for method in ("tucker", "svd"):
        compressed, plan = compress_model(hf_vit(), method, "rank=2", x)
        assert any(p.ranks is not None for p in plan)
        assert torch.isfinite(outputs(compressed, x)).all()



def test_lowrank_on_dict_inputs():
    import frugalnn

    x = text_input()
    model = hf_bert()
    before = outputs(model, x)
    cfg = frugalnn.LowRankConfig(method="svd", target="flops=2", finetune_epochs=0)
    compressed = frugalnn.lowrank(model, cfg, example_input=x)
    assert any(isinstance(m, L.SVDLinear) for m in compressed.modules())
    out = outputs(compressed, x)
    assert out.shape == before.shape and torch.isfinite(out).all()


# -- save / load --------------------------------------------------------------------------
@pytest.mark.parametrize("name,method", [("bert", "moe"), ("llama", "moe"), ("llama", "acm")])
def test_converted_hf_model_saves_and_rebuilds(tmp_path, name, method):
    from frugalnn.train.checkpoint import load_meta, load_weights, save_checkpoint
    from frugalnn.transforms import apply_transforms

    build, make_input, _, _ = MODELS[name]
    x = make_input()
    if method == "moe":
        converted = convert_to_moe(build(), num_experts=4, router_epochs=1,
                                   loader=text_loader(1, "none"))
        converted.set_budget(0.5)
    else:
        converted = convert_to_acm(build(), num_learners=4)
        converted.set_budget(0.25)
    want = outputs(converted, x)
    save_checkpoint(tmp_path / "ckpt", converted)
    fresh = build()
    with torch.no_grad():  # other weights: loading must overwrite every one of them
        for p in fresh.parameters():
            p.add_(0.5)
    rebuilt = apply_transforms(fresh, load_meta(tmp_path / "ckpt")["transforms"])
    load_weights(rebuilt, tmp_path / "ckpt")
    rebuilt.eval().set_budget(0.5 if method == "moe" else 0.25)
    torch.testing.assert_close(outputs(rebuilt, x), want)



def test_converted_hf_directory_model_loads_in_full(tmp_path):
    import frugalnn

    pytest.importorskip("frugalnn.models.external")
    from frugalnn.models import create_model

    hf_llama().save_pretrained(tmp_path / "llama")
    model = create_model(f"hf:{tmp_path / 'llama'}")
    converted = convert_to_moe(model, num_experts=4, router_epochs=1, router_hidden=8,
                               loader=text_loader(1, "none"))
    converted.set_budget(0.25)
    x = text_input()
    want = outputs(converted, x)
    frugalnn.save(tmp_path / "ckpt", converted)
    back = frugalnn.load(tmp_path / "ckpt")
    back.set_budget(0.25)
    torch.testing.assert_close(outputs(back, x), want)
    assert all(m.gated for m in back.moe_layers())


# -- CLI ----------------------------------------------------------------------------------
FACTORY = '''
from torch import nn


def make():
    return nn.Sequential(
        nn.Flatten(), nn.Linear(64, 32),
        nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 32)),
        nn.Linear(32, 10),
    )
'''


def test_cli_ffn_pattern_on_a_user_model(tmp_path, capsys):
    import json

    from frugalnn.cli import main

    pytest.importorskip("frugalnn.models.external")
    (tmp_path / "mlp.py").write_text(FACTORY)
    model = f"{tmp_path / 'mlp.py'}:make"
    out = tmp_path / "run"
    argv = ["moe", "convert", model, "--data", "digits", "--experts", "4",
            "--router-epochs", "1", "--router-hidden", "8", "--train-limit", "64",
            "--eval-limit", "32", "--budgets", "0.5,1", "--latency-repeats", "1",
            "--no-progress", "--out", str(out)]
    assert main(argv) == 2  # not recognised without the pattern: one line naming the option
    err = capsys.readouterr().err
    assert "--ffn-pattern" in err and "Traceback" not in err
    assert not (out / "checkpoint").exists()
    assert main([*argv, "--ffn-pattern", "2", "--force"]) == 0
    meta = json.loads((out / "checkpoint" / "meta.json").read_text())
    moe = next(t for t in meta["transforms"] if t["name"] == "moe")
    assert moe["args"]["ffn_pattern"] == "2" and moe["args"]["sites"][0]["name"] == "2"
    ev = tmp_path / "eval"  # the checkpoint rebuilds (pattern included) in the shared command
    assert main(["evaluate", str(out), "--data", "digits", "--limit", "16", "--budgets", "1",
                 "--latency-batch-sizes", "1", "--latency-repeats", "1", "--no-progress",
                 "--out", str(ev)]) == 0
    sp = tmp_path / "sp"
    assert main(["sparsity", model, "--data", "digits", "--eval-limit", "20",
                 "--ffn-pattern", "2", "--out", str(sp)]) == 0
    data = json.loads((sp / "sparsity.json").read_text())
    assert [layer["layer"] for layer in data["layers"]] == ["2"]
