"""Activation-sparsity analysis: counts against hand-made activations, any model kind."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from frugalnn.analysis.sparsity import activation_sparsity
from frugalnn.errors import UserError
from frugalnn.models import create_model


class Known(nn.Module):
    """Activations chosen by hand: a functional relu on a fixed pattern."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x) + 0.0


def test_counts_match_hand_computed():
    # 2 examples x 3 tokens x 4 neurons; neuron 3 never fires, neuron 0 always fires.
    x = torch.tensor(
        [
            [[1.0, -1, 2e-4, -1], [1, 1, -1, -1], [2, -1, -1, -1]],
            [[1, 1, 1, -1], [1, -1, -1, -1], [3, 1, 1, -1]],
        ]
    )
    rep = activation_sparsity(Known(), [(x, None)], eps=1e-3)
    (layer,) = rep.layers
    s = layer.summary()
    zeros = int((x <= 0).sum())
    assert s["values"] == 24 and layer.zeros == zeros
    assert s["zero_fraction"] == pytest.approx(zeros / 24)
    assert s["near_zero_fraction"] == pytest.approx((zeros + 1) / 24)  # 2e-4 is near zero
    assert layer.example_fractions().tolist() == pytest.approx([7 / 12, 5 / 12])
    assert layer.token_fractions().tolist() == pytest.approx([0.5, 0.5, 0.75, 0.25, 0.75, 0.25])
    assert s["neurons"] == 4 and s["dead"] == 1 and s["always_active"] == 1
    assert s["dead_eps"] == 1
    assert s["layer"] == "model:relu"


def test_resnet_functional_relus_are_found():
    model = create_model("resnet20")
    rep = activation_sparsity(model, [(torch.randn(2, 3, 32, 32), 0)])
    # Stem ReLU + two per basic block (9 blocks).
    assert len(rep.layers) == 1 + 2 * 9
    for layer in rep.layers:
        assert 0.0 < layer.zero_fraction < 1.0


def test_transformer_reports_ffn_sites_and_saves(tmp_path):
    model = create_model(
        "vit_tiny", image_size=8, patch_size=2, in_channels=1, dim=16, depth=2, heads=2
    )
    rep = activation_sparsity(model, [(torch.randn(3, 1, 8, 8), 0)], meta={"model": "vit"})
    assert [layer.name for layer in rep.layers] == ["blocks.0.mlp", "blocks.1.mlp"]
    # GELU: essentially no exact zeros.
    assert rep.layers[0].zero_fraction < 0.01
    files = rep.save(tmp_path)
    assert {f.name for f in files} >= {"sparsity.json", "sparsity.md", "sparsity_per_layer.png"}
    data = json.loads((tmp_path / "sparsity.json").read_text())
    assert data["examples"] == 3 and data["model"] == "vit"
    assert len(data["layers"]) == 2


def test_bad_input():
    with pytest.raises(UserError):
        activation_sparsity(Known(), [(torch.randn(2, 3), None)], eps=-1)
    with pytest.raises(UserError, match="no activation"):
        activation_sparsity(nn.Linear(3, 3), [(torch.randn(2, 3), None)])
