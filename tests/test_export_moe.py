"""Mixture-of-experts export: segments + experts (ONNX) or one gather-form graph, tau kept."""

from __future__ import annotations

import pytest
import torch
from forward_hooks import per_call

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


def _eager_rows(model, x):
    """Per MoE layer (in execution order), the rows each expert runs in the eager model."""
    from frugalnn.methods.moe.layer import MoEFFN

    def rows(layer, x2):
        mask = (torch.ones(x2.shape[0], layer.num_experts, dtype=torch.bool) if layer.is_full()
                else layer.select(layer.scores(x2)))
        return mask.sum(0).tolist()

    return per_call(model, MoEFFN, x, rows)


@needs_onnx
def test_moe_segments_route_the_rows_of_the_eager_model(tmp_path, moe):
    data = frugalnn.load_splits("digits", test_limit=32, seed=0).test
    result = export(moe, tmp_path / "moe", ExportConfig(format="onnx", layout="segments"),
                    check_data=data)
    graphs = result.manifest["graphs"]
    assert result.manifest["loop"]["layout"] == "segments"
    assert {"segment0", "segment1", "segment2", "parts0", "parts1"} <= set(graphs)
    assert "model" not in graphs
    runner = load_exported(tmp_path / "moe")
    x = torch.stack([data[i][0] for i in range(7)])  # another batch size than exported
    tokens = 7 * (4 * 4 + 1)
    totals = {}
    try:
        for tau in (0.0, 0.3, 0.8, 1.0):
            runner.set_budget(tau)
            moe.set_budget(tau)
            torch.testing.assert_close(runner(x), moe(x), atol=1e-4, rtol=1e-4)
            assert runner.last_rows == _eager_rows(moe, x)
            totals[tau] = sum(map(sum, runner.last_rows))
    finally:
        moe.set_budget(moe.full_budget())
    assert totals[1.0] == 2 * 4 * tokens  # every expert of both layers on every token
    assert totals[0.0] < totals[0.3] <= totals[0.8] < totals[1.0]
    # The loop over torch tensors (used where the graphs are not CPU ONNX Runtime
    # sessions) gives what the loop over ONNX Runtime values gives.
    runner.set_budget(0.3)
    on_values = runner(x)
    runner._ort = False
    torch.testing.assert_close(runner(x), on_values)


@needs_onnx
def test_moe_one_graph_layout_stays_available(tmp_path, moe):
    data = frugalnn.load_splits("digits", test_limit=16, seed=0).test
    result = export(moe, tmp_path / "moe", ExportConfig(format="onnx", layout="one-graph"),
                    check_data=data)
    assert result.manifest["graphs"] == {"model": "model.onnx"}
    assert result.manifest["loop"]["layout"] == "one-graph" and result.check["match"] == 1.0


def test_segments_layout_is_onnx_only(tmp_path, moe):
    data = frugalnn.load_splits("digits", test_limit=8, seed=0).test
    with pytest.raises(UserError, match="'segments' layout is made for ONNX"):
        export(moe, tmp_path / "moe", ExportConfig(format="torchscript", layout="segments"),
               check_data=data)
    with pytest.raises(UserError, match="unknown layout 'bogus'"):
        export(moe, tmp_path / "moe", ExportConfig(format="torchscript", layout="bogus"),
               check_data=data)
    assert not (tmp_path / "moe").exists()
