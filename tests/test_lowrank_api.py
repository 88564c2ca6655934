"""``frugalnn.lowrank`` / ``frugalnn.LowRankConfig``: the public Python API of the recipe."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import frugalnn


def _low_rank_mlp(rank: int) -> nn.Module:
    """An MLP whose every Linear weight has rank ``rank`` (its full rank)."""
    torch.manual_seed(0)
    model = frugalnn.create_model("mlp", input_shape=(1, 8, 8), hidden=64, depth=2).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Linear):
                out_f, in_f = m.weight.shape
                m.weight.copy_(torch.randn(out_f, rank) @ torch.randn(rank, in_f) / in_f)
    return model


def test_public_lowrank_at_full_rank_reproduces_the_original() -> None:
    model = _low_rank_mlp(4)
    x = torch.randn(5, 1, 8, 8)
    ref = model(x)
    config = frugalnn.LowRankConfig(method="svd", target="rank=4", finetune_epochs=0)
    cheaper = frugalnn.lowrank(model, config, example_input=x)
    assert cheaper is not model
    kinds = [type(m).__name__ for m in cheaper.modules()]
    assert kinds.count("SVDLinear") == 3  # every Linear of the MLP, factorised
    assert "SVDLinear" not in [type(m).__name__ for m in model.modules()]  # original kept
    assert sum(p.numel() for p in cheaper.parameters()) < sum(p.numel()
                                                              for p in model.parameters())
    torch.testing.assert_close(cheaper(x), ref, atol=1e-5, rtol=1e-4)


def test_public_lowrank_fine_tunes_with_data_and_leaves_the_original_alone() -> None:
    model = _low_rank_mlp(8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(64, 1, 8, 8, generator=g), torch.randint(0, 10, (64,),
                                                                            generator=g))
    config = frugalnn.LowRankConfig(method="svd", target="params=2", finetune_epochs=1,
                                    batch_size=16)
    cheaper = frugalnn.lowrank(model, config, train_data=data, val_data=data)
    assert cheaper.budget_name == "rank_fraction"
    assert all(p.requires_grad for p in model.parameters())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize("kwargs, match", [
    ({"method": "qr"}, "unknown low-rank method"),
    ({"target": "flops=0.5"}, "must be > 1"),
    ({"finetune_epochs": -1}, "--finetune-epochs"),
    ({"optimizer": "lion"}, "unknown optimizer"),
    ({"latency_batch_sizes": (0,)}, "--latency-batch-sizes"),
])
def test_config_validation_is_a_user_error(kwargs, match) -> None:
    with pytest.raises(frugalnn.UserError, match=match):
        frugalnn.LowRankConfig(**kwargs).validate()


def test_distill_finetune_is_the_recipe_fine_tuning_and_serves_as_the_dense_control() -> None:
    """The same function fine-tunes the low-rank copy and a dense same-training control:
    the dense student moves, the teacher stays as it was (and trainable again after)."""
    from torch.utils.data import DataLoader

    from frugalnn.methods.lowrank.pipeline import distill_finetune

    teacher = _low_rank_mlp(4)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student = frugalnn.create_model("mlp", input_shape=(1, 8, 8), hidden=64, depth=2)
    student.load_state_dict(teacher.state_dict())
    data = TensorDataset(torch.randn(32, 1, 8, 8), torch.randint(0, 10, (32,)))
    history = distill_finetune(student, teacher, DataLoader(data, batch_size=16), epochs=1,
                               lr=0.05)
    assert len(history) == 1
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert all(p.requires_grad for p in teacher.parameters())
    assert any(not torch.equal(before[k], v) for k, v in student.state_dict().items())
