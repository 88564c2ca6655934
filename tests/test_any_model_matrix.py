"""Every method, through its public entry point, on three models nobody here wrote.

A Hugging Face ``ViTForImageClassification`` and ``BertForSequenceClassification``
built from tiny configs and loaded as ``hf:DIR``, and a torchvision-style ResNet
from a factory file (``resnet.py:make``), so that every checkpoint rebuilds. BERT
gets Hugging Face examples: dicts of ``input_ids`` / ``attention_mask`` /
``labels``. Each cell checks the method's invariant (full budget reproduces the
original), that its cost is measured, and that ``frugalnn.save`` / ``frugalnn.load``
give the same outputs; FFN methods on the ResNet, which has no FFN, are one line.
"""

from __future__ import annotations

import copy
import dataclasses
import fnmatch
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from tiny_hf import tiny_bert, tiny_vit
from torch import nn
from torch.utils.data import DataLoader, Dataset

import frugalnn
from frugalnn.analysis.sparsity import activation_sparsity
from frugalnn.cost.count import CostReport
from frugalnn.errors import UserError
from frugalnn.methods.prune.structure import ATTENTION_PROJECTIONS
from frugalnn.models.adapters.ffn import find_ffn_sites
from frugalnn.utils.batch import call_model, logits_of

transformers = pytest.importorskip("transformers")

RESNET = '''
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
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    def __init__(self, num_classes=4):
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
        x = self.layer2(self.layer1(x))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


def make(num_classes=4):
    torch.manual_seed(0)
    model = ResNet(num_classes)
    g = torch.Generator().manual_seed(1)
    for m in model.modules():  # running statistics that are not the identity
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1, generator=g)
            m.running_var.uniform_(0.5, 1.5, generator=g)
    return model


make.input_shape = (3, 16, 16)
'''


class _Images(Dataset):
    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 3, 16, 16, generator=g)
        self.y = torch.randint(0, 4, (n,), generator=g)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[i], self.y[i]


class _Texts(Dataset):
    """Hugging Face examples: token ids, a mask with padding, and ``labels``."""

    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(1, 50, (n, 10), generator=g)
        self.mask = torch.ones(n, 10, dtype=torch.long)
        self.mask[::3, 6:] = 0
        self.y = torch.randint(0, 4, (n,), generator=g)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "attention_mask": self.mask[i], "labels": self.y[i]}


@dataclass
class Case:
    spec: str
    text: bool
    has_ffn: bool
    lowrank: tuple[str, str, int]  # method, layers to factorise, their rank

    def build(self) -> nn.Module:
        return frugalnn.create_model(self.spec).eval()

    def data(self, n: int = 16, seed: int = 0) -> Dataset:
        return _Texts(n, seed) if self.text else _Images(n, seed)

    def probe(self) -> Any:
        d = self.data(6, seed=5)
        return {"input_ids": d.ids, "attention_mask": d.mask} if self.text else d.x


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Case]:
    root = tmp_path_factory.mktemp("models")
    tiny_vit(layers=2, labels=4).save_pretrained(root / "vit")
    tiny_bert(layers=2, labels=4, positions=32).save_pretrained(root / "bert")
    (root / "resnet.py").write_text(RESNET)
    return {
        "vit": Case(f"hf:{root / 'vit'}", False, True, ("svd", "vit.layers.*", 8)),
        "bert": Case(f"hf:{root / 'bert'}", True, True, ("svd", "bert.encoder.*", 8)),
        "resnet": Case(f"{root / 'resnet.py'}:make", False, False, ("tucker", "layer*.conv*", 4)),
    }


MODELS = ("vit", "bert", "resnet")


def _out(model: nn.Module, x: Any) -> torch.Tensor:
    with torch.no_grad():
        return logits_of(call_model(model, x))


def _reloads(model: nn.Module, x: Any, directory: Path, budget: float | None = None) -> None:
    """``frugalnn.save`` then ``frugalnn.load`` (a new model built from its record)
    gives the same outputs (at ``budget`` on both, for a model with a knob)."""
    frugalnn.save(directory, model)
    again = frugalnn.load(directory)
    assert again is not model
    if budget is not None:
        model.set_budget(budget)
        again.set_budget(budget)
    torch.testing.assert_close(_out(again, x), _out(model, x), rtol=0, atol=1e-6)


def _cost(model: nn.Module, x: Any) -> CostReport:
    report = frugalnn.measure(model, x)
    assert report.params > 0 and report.flops > 0, (report.params, report.flops)
    return report


def _no_ffn(case: Case, call: Callable[[], Any]) -> None:
    with pytest.raises(UserError, match="has no feed-forward") as err:
        call()
    assert "\n" not in str(err.value) and "--ffn-pattern" in str(err.value)


# ---------------------------------------------------------------- dynamic methods


@pytest.mark.parametrize("name", MODELS)
def test_early_exit_never_exit_threshold_is_the_original(cases, name, tmp_path) -> None:
    case = cases[name]
    model, x = case.build(), case.probe()
    want, dense = _out(model, x), _cost(model, x)
    ee = frugalnn.early_exit(model, frugalnn.EarlyExitConfig(epochs=1, batch_size=8),
                             train_data=case.data())
    assert len(ee.exit_points()) >= 2 and ee.exit_points()[-1] == "final"
    ee.set_budget(1.0)  # maxprob: exit only above 100 % confidence, i.e. never
    assert torch.equal(_out(ee, x), want)
    assert _cost(ee, x).flops == dense.flops  # no head runs at the full budget
    ee.set_budget(0.0)  # every row leaves at the first exit
    assert _cost(ee, x).flops < dense.flops
    _reloads(ee, x, tmp_path / "ee", budget=0.5)  # the heads reload too


@pytest.mark.parametrize("name", MODELS)
def test_moe_tau_1_is_the_original(cases, name, tmp_path) -> None:
    case = cases[name]
    model, x = case.build(), case.probe()
    config = frugalnn.MoEConfig(experts=4, router_epochs=1, router_hidden=8, batch_size=8)
    if not case.has_ffn:
        return _no_ffn(case, lambda: frugalnn.moe(model, config, train_data=case.data()))
    want, dense = _out(model, x), _cost(model, x)
    moe = frugalnn.moe(copy.deepcopy(model), config, train_data=case.data())
    assert moe.budget_values()[-1] == 1.0
    moe.set_budget(1.0)
    torch.testing.assert_close(_out(moe, x), want, rtol=1e-5, atol=1e-5)
    assert _cost(moe, x).flops > 0 and dense.flops > 0
    _reloads(moe, x, tmp_path / "moe", budget=0.5)  # the routers reload too


@pytest.mark.parametrize("name", MODELS)
def test_acm_q_1_is_the_original(cases, name, tmp_path) -> None:
    case = cases[name]
    model, x = case.build(), case.probe()
    # Gate training only: the learners keep the dense FFN's neurons.
    config = frugalnn.ACMConfig(learners=4, distill_epochs=0, gate_epochs=1,
                                finetune_epochs=0, batch_size=8)
    if not case.has_ffn:
        return _no_ffn(case, lambda: frugalnn.acm(model, config, train_data=case.data()))
    want = _out(model, x)
    acm = frugalnn.acm(copy.deepcopy(model), config, train_data=case.data())
    acm.set_budget(acm.full_budget())
    torch.testing.assert_close(_out(acm, x), want, rtol=1e-5, atol=1e-5)
    _cost(acm, x)
    _reloads(acm, x, tmp_path / "acm", budget=0.5)


# ---------------------------------------------------------------- static methods


def _make_low_rank_(model: nn.Module, pattern: str, rank: int) -> list[str]:
    """Give the matching Linear / Conv2d layers weights of exactly ``rank`` (matrix rank,
    or Tucker-2 ranks ``(rank, rank)``); return their names."""
    names = []
    with torch.no_grad():
        for name, m in model.named_modules():
            if not fnmatch.fnmatchcase(name, pattern):
                continue
            if isinstance(m, nn.Linear):
                u, s, vh = torch.linalg.svd(m.weight, full_matrices=False)
                m.weight.copy_((u[:, :rank] * s[:rank]) @ vh[:rank])
            elif isinstance(m, nn.Conv2d) and m.kernel_size != (1, 1):
                w = m.weight
                out_basis = torch.linalg.svd(w.flatten(1), full_matrices=False)[0][:, :rank]
                in_basis = torch.linalg.svd(w.transpose(0, 1).flatten(1),
                                            full_matrices=False)[0][:, :rank]
                w = torch.einsum("oikl,op,pq->qikl", w, out_basis, out_basis.T)
                w = torch.einsum("oikl,ip,pj->ojkl", w, in_basis, in_basis.T)
                m.weight.copy_(w)
            else:
                continue
            names.append(name)
    return names


@pytest.mark.parametrize("name", MODELS)
def test_lowrank_at_the_weights_rank_is_the_original(cases, name, tmp_path) -> None:
    case = cases[name]
    method, pattern, rank = case.lowrank
    model, x = case.build(), case.probe()
    layers = _make_low_rank_(model, pattern, rank)
    want, dense = _out(model, x), _cost(model, x)
    config = frugalnn.LowRankConfig(method=method, target=f"rank={rank}", include=[pattern],
                                    finetune_epochs=0)
    small = frugalnn.lowrank(model, config, train_data=case.data())
    torch.testing.assert_close(_out(small, x), want, rtol=1e-4, atol=1e-4)
    assert _cost(small, x).flops < dense.flops
    for layer in layers:  # callers still read what the replaced layer had
        new, old = small.get_submodule(layer), model.get_submodule(layer)
        assert type(new) is not type(old)
        assert new.weight.dtype == old.weight.dtype and new.weight.device == old.weight.device
        for attr in ("in_features", "out_features", "in_channels", "out_channels", "stride",
                     "padding", "kernel_size"):
            assert getattr(new, attr, None) == getattr(old, attr, None), attr
    _reloads(small, x, tmp_path / "lowrank")
    if method == "svd":  # data-aware SVD calibrates on the model's own batches (BERT: dicts)
        aware = frugalnn.lowrank(model, dataclasses.replace(
            config, data_aware=True, calibration_examples=8), train_data=case.data())
        torch.testing.assert_close(_out(aware, x), want, rtol=1e-4, atol=1e-4)
    # One epoch of fine-tuning with distillation runs on the model's own batches.
    tuned = frugalnn.lowrank(model, frugalnn.LowRankConfig(
        method=method, target=f"rank={rank}", include=[pattern], finetune_epochs=1, lr=1e-3,
        batch_size=8), train_data=case.data())
    assert torch.isfinite(_out(tuned, x)).all()


@pytest.mark.parametrize("name", MODELS)
def test_int8_dynamic_quantisation_is_close_and_measured(cases, name, tmp_path) -> None:
    case = cases[name]
    model, x = case.build(), case.probe()
    want, dense = _out(model, x), _cost(model, x)
    q = frugalnn.quantize(model, frugalnn.QuantConfig(mode="dynamic"),
                          calibration_data=case.data())
    got = _out(q, x)
    assert (got - want).abs().max() <= 0.05 * want.abs().max()
    report = _cost(q, x)
    assert report.flops == dense.flops  # the same multiply-adds, in int8
    assert report.model_bytes < dense.model_bytes
    _reloads(q, x, tmp_path / "quant")


@pytest.mark.filterwarnings("ignore:Unwrapped parameters detected")  # ViT's cls/pos tokens
@pytest.mark.parametrize("name", MODELS)
def test_pruning_runs_and_costs_less(cases, name, tmp_path) -> None:
    case = cases[name]
    model, x = case.build(), case.probe()
    dense = _cost(model, x)
    small = frugalnn.prune(model, frugalnn.PruneConfig(target="flops=1.3", epochs=1, lr=1e-3,
                                                       batch_size=8), train_data=case.data())
    assert _out(small, x).shape == _out(model, x).shape
    assert _cost(small, x).flops < dense.flops
    # Attention heads keep their size: query/key/value projections lose no outputs.
    projections = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)
                   and n.rsplit(".", 1)[-1] in ATTENTION_PROJECTIONS]
    assert len(projections) == (6 if case.has_ffn else 0)
    for n in projections:
        assert small.get_submodule(n).out_features == model.get_submodule(n).out_features
    _reloads(small, x, tmp_path / "prune")


@pytest.mark.parametrize("name", MODELS)
def test_binarisation_runs_and_is_measured(cases, name, tmp_path) -> None:
    case = cases[name]
    model, x = case.build(), case.probe()
    dense = _cost(model, x)
    binary = frugalnn.binarize(model, frugalnn.BinaryConfig(word_bits=8, epochs=1, batch_size=8),
                               train_data=case.data())
    assert torch.isfinite(_out(binary, x)).all()
    report = _cost(binary, x)
    assert report.model_bytes < dense.model_bytes
    _reloads(binary, x, tmp_path / "binary")


@pytest.mark.parametrize("name", MODELS)
def test_sparsity_analysis_reads_the_models_activations(cases, name) -> None:
    case = cases[name]
    model, data = case.build(), case.data()
    report = activation_sparsity(model, DataLoader(data, batch_size=8))
    assert report.examples == len(data)
    if case.has_ffn:
        assert [layer.name for layer in report.layers] == [s.name for s in find_ffn_sites(model)]
        return
    # The stem ReLU, counted by hand.
    first = report.layers[0]
    assert first.name == "relu:relu"
    with torch.no_grad():
        stem = torch.relu(model.bn1(model.conv1(data.x)))
    assert first.zeros == int((stem == 0).sum()) and first.numel == stem.numel()
