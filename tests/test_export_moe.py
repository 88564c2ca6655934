"""Mixture-of-experts export: one gather-form graph with tau as an input."""

from __future__ import annotations

import pytest
import torch

import frugalnn
from frugalnn.errors import UserError
from frugalnn.methods.moe.convert import convert_to_moe
from frugalnn.models import create_model
from frugalnn.runtime.deps import available
from frugalnn.runtime.export import ExportConfig, export
from frugalnn.runtime.package import load_exported

needs_onnx = pytest.mark.skipif(not (available("onnx") and available("onnxruntime")),
                                reason="the onnx extra is not installed")


@pytest.fixture(scope="module")
def moe():
    torch.manual_seed(0)
    vit = create_model("vit_tiny", image_size=8, patch_size=2, in_channels=1, dim=16, depth=2,
                       heads=2, mlp_ratio=4, activation="relu").eval()
    g = torch.Generator().manual_seed(1)
    loader = [(torch.randn(8, 1, 8, 8, generator=g), torch.randint(0, 10, (8,), generator=g))
              for _ in range(2)]
    return convert_to_moe(vit, num_experts=4, loader=loader, router_epochs=1).eval()


@pytest.mark.parametrize("fmt", [pytest.param("onnx", marks=needs_onnx), "torchscript"])
def test_moe_export_matches_at_every_tau_and_keeps_the_knob(tmp_path, moe, fmt):
    data = frugalnn.load_splits("digits", test_limit=32, seed=0).test
    result = export(moe, tmp_path / "moe", ExportConfig(format=fmt), check_data=data)
    assert result.manifest["kind"] == "moe"
    assert [p["budget"] for p in result.check["points"]] == moe.budget_values()
    assert result.check["match"] == 1.0
    runner = load_exported(tmp_path / "moe")
    x = torch.stack([data[i][0] for i in range(3)])
    runner.set_budget(0.3)
    moe.set_budget(0.3)
    try:
        torch.testing.assert_close(runner(x), moe(x), atol=1e-4, rtol=1e-4)
    finally:
        moe.set_budget(moe.full_budget())
    with pytest.raises(UserError, match="tau must be in"):
        runner.set_budget(1.5)
