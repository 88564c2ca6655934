"""ACM export: one gather-form graph with q as an input."""

from __future__ import annotations

import pytest
import torch

import frugalnn
from frugalnn.errors import UserError
from frugalnn.methods.acm.convert import convert_to_acm
from frugalnn.models import create_model
from frugalnn.runtime.deps import available
from frugalnn.runtime.export import ExportConfig, export
from frugalnn.runtime.package import load_exported

needs_onnx = pytest.mark.skipif(not (available("onnx") and available("onnxruntime")),
                                reason="the onnx extra is not installed")


@pytest.fixture(scope="module")
def acm():
    torch.manual_seed(0)
    vit = create_model("vit_tiny", image_size=8, patch_size=2, in_channels=1, dim=32, depth=2,
                       heads=2, num_classes=10).eval()
    return convert_to_acm(vit, num_learners=4).eval()


@pytest.mark.parametrize("fmt", [pytest.param("onnx", marks=needs_onnx), "torchscript"])
def test_acm_export_matches_at_every_q_and_keeps_the_knob(tmp_path, acm, fmt):
    data = frugalnn.load_splits("digits", test_limit=32, seed=0).test
    result = export(acm, tmp_path / "acm", ExportConfig(format=fmt), check_data=data)
    assert result.manifest["kind"] == "acm"
    assert [p["budget"] for p in result.check["points"]] == acm.budget_values()
    assert result.check["match"] == 1.0
    runner = load_exported(tmp_path / "acm")
    x = torch.stack([data[i][0] for i in range(3)])
    runner.set_budget(0.4)
    acm.set_budget(0.4)
    try:
        torch.testing.assert_close(runner(x), acm(x), atol=1e-4, rtol=1e-4)
    finally:
        acm.set_budget(acm.full_budget())
    with pytest.raises(UserError, match=r"q must be in \[0, 1\]"):
        runner.set_budget(-0.1)
