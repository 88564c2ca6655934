"""BatchNorm folding: same outputs, hand-counted pairs, and the cases it must refuse or skip."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from frugalnn.errors import UserError
from frugalnn.methods.early_exit import attach_heads
from frugalnn.models import create_model
from frugalnn.models.fold import conv_bn_pairs, fold_batchnorm


def _with_random_statistics(model: nn.Module) -> nn.Module:
    """Non-trivial BatchNorm statistics, so that a wrong fold cannot pass by accident."""
    gen = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=gen) * 2 - 1)
            m.running_var.copy_(torch.rand(n, generator=gen) * 1.5 + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=gen) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=gen) - 0.5)
    return model.eval()


def test_resnet_fold_keeps_outputs_and_counts_every_pair():
    model = _with_random_statistics(create_model("resnet20"))
    folded = copy.deepcopy(model)
    # ResNet-20: the stem plus 9 blocks x 2 convolutions, each followed by its BatchNorm.
    assert fold_batchnorm(folded) == 1 + 9 * 2
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        ref, out = model(x), folded(x)
    assert torch.allclose(out, ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())
    assert conv_bn_pairs(folded) == []  # idempotent: nothing left to fold
    assert fold_batchnorm(folded) == 0


def test_folded_backbone_under_early_exits_gives_the_same_exits():
    backbone = _with_random_statistics(create_model("resnet20"))
    x = torch.randn(8, 3, 32, 32)
    ee = attach_heads(backbone, "every:3").eval()
    ee.set_budget(0.5)
    with torch.inference_mode():
        ref = ee(x)
        fold_batchnorm(backbone)  # in place: the exit model holds this very backbone
        out = ee(x)
    assert torch.allclose(out, ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())


def test_conv_with_a_second_use_is_not_folded():
    class TwoUses(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.bn = nn.BatchNorm2d(4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.conv(x)
            return self.bn(h) + h  # folding would change the un-normalised use of h

    model = _with_random_statistics(TwoUses())
    assert conv_bn_pairs(model) == []
    assert fold_batchnorm(model) == 0


def test_refuses_training_mode_and_untraceable_models():
    model = create_model("resnet20").train()
    with pytest.raises(UserError, match="eval-mode"):
        fold_batchnorm(model)

    class DataDependent(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1)
            self.bn = nn.BatchNorm2d(3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.bn(self.conv(x)) if x.sum() > 0 else x

    with pytest.raises(UserError, match="not traceable"):
        fold_batchnorm(DataDependent().eval())
