"""Adaptive computation modules: equivalence, grouped execution, costs, knob, checkpoints."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from frugalnn.budget import has_budget
from frugalnn.cost.count import count_flops
from frugalnn.cost.ledger import CostLedger
from frugalnn.errors import UserError
from frugalnn.methods.acm import (
    ACMFFN,
    ACMTrainConfig,
    convert_to_acm,
    gate_labels,
    learner_layout,
    train_acm,
)
from frugalnn.models import create_model


def _vit() -> nn.Module:
    torch.manual_seed(0)
    return create_model("vit_tiny", image_size=8, patch_size=2, in_channels=1, dim=32,
                        depth=2, heads=2, num_classes=10).eval()


def _x(n: int = 5) -> torch.Tensor:
    return torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(1))


def _layer(n: int = 4, hidden: int = 24) -> tuple[ACMFFN, nn.Module]:
    torch.manual_seed(0)
    fc1, fc2 = nn.Linear(12, hidden), nn.Linear(hidden, 12)
    dense = nn.Sequential(fc1, nn.GELU(), fc2)
    return ACMFFN.from_dense(fc1, nn.GELU(), fc2, n, gate_hidden=8), dense


def test_full_budget_reproduces_dense_model():
    model = _vit()
    x = _x()
    with torch.no_grad():
        ref = model(x)
        acm = convert_to_acm(model, num_learners=4)
        assert has_budget(acm) and acm.full_budget() == 1.0
        out = acm(x)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_prefix_sums_and_grouped_execution_agree():
    layer, dense = _layer()
    x = torch.randn(30, 12)
    with torch.no_grad():
        prefixes = layer.prefix_outputs(x)
        torch.testing.assert_close(prefixes[-1], dense(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(layer.dense(x), dense(x), rtol=1e-5, atol=1e-5)
        k = torch.randint(1, 5, (30,), generator=torch.Generator().manual_seed(3))
        got = layer.run_grouped(x, k)
        want = prefixes[k - 1, torch.arange(30)]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_uneven_split_pads_inert_neurons():
    assert learner_layout(10, 4) == 3
    layer, dense = _layer(n=4, hidden=10)
    x = torch.randn(7, 12)
    with torch.no_grad():
        torch.testing.assert_close(layer.dense(x), dense(x), rtol=1e-5, atol=1e-5)
    with pytest.raises(UserError):
        learner_layout(3, 4)


def test_costs_charged_per_token_equal_hand_counts():
    layer, _ = _layer()
    # One learner on one token: fc1 (12 -> 6) and fc2 (6 -> 12) = 2*(12*6 + 6*12) FLOPs.
    assert layer.learner_flops == 2 * (12 * 6 + 6 * 12)
    assert layer.gate_flops == 2 * (12 * 8 + 8 * 4)
    assert layer.gate_flops == count_flops(layer.gate, torch.zeros(1, 12))
    x = torch.randn(3, 5, 12)  # 3 examples of 5 tokens
    layer.set_q(0.5)
    layer.keep_counts = True
    ledger = CostLedger(3)
    with torch.no_grad(), ledger:
        layer(x)
    k = layer.last_counts.double()
    want = (layer.gate_flops + k * layer.learner_flops).sum(1)
    torch.testing.assert_close(ledger.flops, want)
    torch.testing.assert_close(ledger.decisions["learners_per_token/ffn"], k.mean(1))
    layer.set_q(1.0)
    ledger = CostLedger(3)
    with torch.no_grad(), ledger:
        layer(x)
    torch.testing.assert_close(ledger.flops, torch.full((3,), 5.0 * 4 * layer.learner_flops,
                                                        dtype=torch.float64))


def test_knob_is_monotone_and_validated():
    layer, _ = _layer()
    logits = torch.randn(50, 4)
    prev = torch.zeros(50, dtype=torch.long)
    for q in (0.0, 0.2, 0.5, 0.8, 1.0):
        layer.set_q(q)
        k = layer.choose(logits)
        assert ((k >= 1) & (k <= 4)).all() and (k >= prev).all()
        prev = k
    layer.set_q(0.0)
    assert (layer.choose(logits) == 1).all()
    with pytest.raises(UserError):
        layer.set_q(1.5)
    acm = convert_to_acm(_vit())
    with pytest.raises(UserError):
        acm.set_budget(-0.1)
    assert acm.budget_values()[-1] == 1.0


def test_gate_labels_follow_the_ratio_rule():
    target = torch.zeros(3, 1)
    # errors per k (rows) for 3 tokens (columns): squared prefix values.
    err = torch.tensor([[4.0, 4.0, 1.0], [3.9, 1.0, 0.9], [1.0, 0.5, 0.8], [0.9, 0.45, 0.7]])
    prefixes = err.sqrt().unsqueeze(-1)
    labels = gate_labels(prefixes, target, ratio=1.2)
    # token 0: 4/3.9 < 1.2 -> k=1; token 1: 4/1, 1/.5 no, .5/.45 yes -> k=3; token 2: k=1.
    assert labels.tolist() == [0, 2, 0]
    assert gate_labels(prefixes, target, ratio=1.0).tolist() == [3, 3, 3]


def test_checkpoint_round_trip(tmp_path):
    from frugalnn.train.checkpoint import load_model, save_checkpoint

    acm = convert_to_acm(_vit(), num_learners=2)
    with torch.no_grad():
        for layer in acm.acm_layers():
            layer.gate[2].bias.copy_(torch.tensor([0.3, -0.2]))
    acm.set_budget(0.5)
    x = _x()
    with torch.no_grad():
        ref = acm(x)
    save_checkpoint(tmp_path / "ckpt", acm, {})
    loaded = load_model(tmp_path / "ckpt").eval()
    loaded.set_budget(0.5)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), ref)


def test_models_without_ffn_are_refused():
    with pytest.raises(UserError, match="no feed-forward"):
        convert_to_acm(create_model("cnn_small", in_channels=1, image_size=8))


def test_training_stages_run_and_full_budget_matches_distilled_sum():
    model = _vit()
    teacher = copy.deepcopy(model)
    acm = convert_to_acm(model, num_learners=4)
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(48, 1, 8, 8, generator=g),
                         torch.randint(0, 10, (48,), generator=g))
    cfg = train_acm(acm, teacher, DataLoader(data, batch_size=16),
                    ACMTrainConfig(distill_epochs=1, gate_epochs=1, finetune_epochs=1))
    assert set(cfg.history) == {"distill", "gate", "finetune"}
    assert all(p.requires_grad for p in acm.parameters())
    x = _x()
    acm.set_budget(1.0)
    with torch.no_grad():
        full = acm(x)
        # Full budget = the sum of every learner (the distilled dense output).
        acm.set_budget(1.0 - 1e-9)
        for layer in acm.acm_layers():
            layer.choose = lambda logits, n=layer.num_learners: torch.full(  # type: ignore[method-assign]
                logits.shape[:1], n, dtype=torch.long)
        grouped = acm(x)
    torch.testing.assert_close(full, grouped, rtol=1e-5, atol=1e-5)


def test_language_model_tokens_are_charged_to_their_sequence():
    torch.manual_seed(0)
    model = create_model("lm_tiny", vocab_size=20, context=8, dim=16, depth=1, heads=2).eval()
    x = torch.randint(0, 20, (3, 8))
    with torch.no_grad():
        ref = model(x)
        acm = convert_to_acm(model, num_learners=2)
        torch.testing.assert_close(acm(x), ref, rtol=1e-5, atol=1e-5)
        acm.set_budget(0.5)
        acm.keep_counts(True)
        ledger = CostLedger(3)
        with ledger:
            acm(x)
    layer = acm.acm_layers()[0]
    k = layer.last_counts.double()
    assert k.shape == (3, 8)
    torch.testing.assert_close(ledger.decisions[f"learners_per_token/{layer.name}"], k.mean(1))


def test_stage_three_distillation_weight_one_ignores_the_labels():
    """kd_weight=1: stage III learns from the dense model's logits only, not the labels."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 1, 8, 8, generator=g)
    results = []
    for labels in (torch.zeros(32, dtype=torch.long), torch.full((32,), 7)):
        torch.manual_seed(0)
        model = _vit()
        teacher = copy.deepcopy(model)
        acm = convert_to_acm(model, num_learners=4)
        cfg = ACMTrainConfig(distill_epochs=0, gate_epochs=0, finetune_epochs=1, kd_weight=1.0,
                             finetune_lr=1e-2)
        train_acm(acm, teacher, DataLoader(TensorDataset(x, labels), batch_size=16), cfg, seed=0)
        results.append(torch.cat([p.detach().flatten() for p in acm.parameters()]))
    torch.testing.assert_close(results[0], results[1])


@pytest.mark.parametrize("field,value", [("kd_weight", 1.5), ("kd_weight", -0.1),
                                         ("kd_temperature", 0.0)])
def test_distillation_settings_are_validated(field, value):
    with pytest.raises(UserError, match="distillation"):
        ACMTrainConfig(**{field: value}).check()
