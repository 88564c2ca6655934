"""ACM export: segments + learners (ONNX) or one gather-form graph, q kept."""

from __future__ import annotations

import pytest
import torch
from forward_hooks import per_call

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


def _eager_rows(model, x):
    """Per ACM layer (in execution order), the rows each learner runs in the eager model."""
    from frugalnn.methods.acm.module import ACMFFN

    def rows(layer, x2):
        n = layer.num_learners
        k = (torch.full((x2.shape[0],), n) if layer.q >= 1.0
             else layer.choose(layer.gate(x2)))
        return [int((k > j).sum()) for j in range(n)]

    return per_call(model, ACMFFN, x, rows)


@needs_onnx
def test_acm_segments_run_each_learner_on_its_rows(tmp_path, acm):
    data = frugalnn.load_splits("digits", test_limit=32, seed=0).test
    result = export(acm, tmp_path / "acm", ExportConfig(format="onnx", layout="segments"),
                    check_data=data)
    assert result.manifest["loop"]["layout"] == "segments"
    assert {"segment0", "parts0", "parts1"} <= set(result.manifest["graphs"])
    runner = load_exported(tmp_path / "acm")
    x = torch.stack([data[i][0] for i in range(5)])
    tokens = 5 * (4 * 4 + 1)
    totals = {}
    try:
        for q in (0.0, 0.5, 0.9, 1.0):
            runner.set_budget(q)
            acm.set_budget(q)
            torch.testing.assert_close(runner(x), acm(x), atol=1e-4, rtol=1e-4)
            assert runner.last_rows == _eager_rows(acm, x)
            assert all(r[0] == tokens for r in runner.last_rows)  # learner 1: every token
            totals[q] = sum(map(sum, runner.last_rows))
    finally:
        acm.set_budget(acm.full_budget())
    assert totals[0.0] == 2 * tokens and totals[1.0] == 2 * 4 * tokens
    assert totals[0.0] < totals[0.5] <= totals[0.9] <= totals[1.0]


@needs_onnx
def test_acm_one_graph_layout_stays_available(tmp_path, acm):
    data = frugalnn.load_splits("digits", test_limit=16, seed=0).test
    result = export(acm, tmp_path / "acm", ExportConfig(format="onnx", layout="one-graph"),
                    check_data=data)
    assert result.manifest["graphs"] == {"model": "model.onnx"}
    assert result.check["match"] == 1.0
