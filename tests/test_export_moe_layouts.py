"""The ``in-graph`` layout of MoE and ACM exports, and the ways a parts graph adds its outputs."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import frugalnn
from frugalnn.errors import UserError
from frugalnn.methods.acm.convert import convert_to_acm
from frugalnn.methods.moe.convert import convert_to_moe
from frugalnn.models import create_model
from frugalnn.runtime.deps import available
from frugalnn.runtime.export import ExportConfig, export
from frugalnn.runtime.package import load_exported

needs_onnx = pytest.mark.skipif(not (available("onnx") and available("onnxruntime")),
                                reason="the onnx extra is not installed")


def _vit(**kw):
    return create_model("vit_tiny", image_size=8, patch_size=2, in_channels=1, dim=16, depth=2,
                        heads=2, mlp_ratio=4, activation="relu", **kw).eval()


@pytest.fixture(scope="module")
def dense_and_moe():
    torch.manual_seed(0)
    vit = _vit()
    g = torch.Generator().manual_seed(1)
    loader = [(torch.randn(8, 1, 8, 8, generator=g), torch.randint(0, 10, (8,), generator=g))
              for _ in range(2)]
    moe = convert_to_moe(copy.deepcopy(vit), num_experts=4, loader=loader, router_epochs=1)
    return vit, moe.eval()


@pytest.fixture(scope="module")
def acm():
    torch.manual_seed(0)
    return convert_to_acm(_vit(), num_learners=4).eval()


@pytest.fixture(scope="module")
def digits():
    return frugalnn.load_splits("digits", test_limit=32, seed=0).test


def _images(data, n):
    return torch.stack([data[i][0] for i in range(n)])


@needs_onnx
def test_moe_in_graph_is_one_graph_with_the_knob_as_input(tmp_path, dense_and_moe, digits):
    import onnx

    vit, moe = dense_and_moe
    result = export(moe, tmp_path / "moe", ExportConfig(format="onnx", layout="in-graph"),
                    check_data=digits)
    assert result.manifest["graphs"] == {"model": "model.onnx"}
    assert result.manifest["loop"]["layout"] == "in-graph"
    assert [p["budget"] for p in result.check["points"]] == moe.budget_values()
    assert result.check["match"] == 1.0
    graph = onnx.load(str(tmp_path / "moe" / "model.onnx")).graph
    ops = [n.op_type for n in graph.node]
    assert [i.name for i in graph.input] == ["input", "tau"]
    assert not any(n.domain for n in graph.node)  # no site node is left
    # Each of the two layers chooses its rows in the graph and adds them back once.
    assert ops.count("NonZero") == 2 and ops.count("ScatterND") == 2
    runner = load_exported(tmp_path / "moe")
    x = _images(digits, 5)
    try:
        for tau in (0.0, 0.3):
            runner.set_budget(tau)
            moe.set_budget(tau)
            torch.testing.assert_close(runner(x), moe(x), atol=1e-5, rtol=1e-5)
    finally:
        moe.set_budget(moe.full_budget())
    # The full budget runs every expert on every token: the dense model's outputs.
    runner.set_budget(1.0)
    torch.testing.assert_close(runner(x), vit(x), atol=1e-5, rtol=1e-5)
    with pytest.raises(UserError, match="tau must be in"):
        runner.set_budget(1.5)


@needs_onnx
def test_in_graph_knob_is_read_per_example(tmp_path, dense_and_moe, digits):
    """One value of the knob per example, spread over that example's tokens."""
    vit, moe = dense_and_moe
    export(moe, tmp_path / "moe", ExportConfig(format="onnx", layout="in-graph"),
           check_data=digits)
    graph = load_exported(tmp_path / "moe").graph
    x = _images(digits, 4)
    got = graph(x, torch.tensor([0.0, 1.0, 0.0, 1.0]))
    try:
        moe.set_budget(0.0)
        low = moe(x)
    finally:
        moe.set_budget(moe.full_budget())
    assert not torch.allclose(low, vit(x), atol=1e-3)  # the two budgets differ here
    torch.testing.assert_close(got[0::2], low[0::2], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got[1::2], vit(x)[1::2], atol=1e-5, rtol=1e-5)


@needs_onnx
def test_acm_in_graph_matches_at_every_q(tmp_path, acm, digits):
    result = export(acm, tmp_path / "acm", ExportConfig(format="onnx", layout="in-graph"),
                    check_data=digits)
    assert result.manifest["graphs"] == {"model": "model.onnx"}
    assert [p["budget"] for p in result.check["points"]] == acm.budget_values()
    assert result.check["match"] == 1.0
    runner = load_exported(tmp_path / "acm")
    x = _images(digits, 5)
    try:
        runner.set_budget(0.4)
        acm.set_budget(0.4)
        torch.testing.assert_close(runner(x), acm(x), atol=1e-5, rtol=1e-5)
    finally:
        acm.set_budget(acm.full_budget())


def test_in_graph_layout_is_onnx_only(tmp_path, acm, digits):
    with pytest.raises(UserError, match="'in-graph' layout is made for ONNX"):
        export(acm, tmp_path / "acm", ExportConfig(format="torchscript", layout="in-graph"),
               check_data=digits)
    assert not (tmp_path / "acm").exists()


class _Scaled(nn.Module):
    """Part ``j``: ``x @ w[j]`` (its own rows)."""

    def __init__(self, n: int, dim: int, out: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(n, dim, out))

    def forward(self, *xs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(x @ self.w[j] for j, x in enumerate(xs))


@needs_onnx
@pytest.mark.parametrize("always", [0, 1])
def test_parts_graph_adds_the_same_sum_chained_or_concatenated(always):
    """Rows chosen by several parts get every part's output, whichever way they are added."""
    from frugalnn.runtime.graphs import OrtGraph, graph_bytes
    from frugalnn.runtime.sites import pack_parts, run_parts

    torch.manual_seed(0)
    n, dim, out, rows = 3, 4, 5, 7
    module = _Scaled(n, dim, out)
    bias = torch.randn(out)
    xs = tuple(torch.randn(2 + i, dim) for i in range(n))
    names, outs = [f"x{i}" for i in range(n)], [f"y{i}" for i in range(n)]
    axes = {v: f"rows{i}" for group in (names, outs) for i, v in enumerate(group)}
    raw = graph_bytes(module, xs, "onnx", input_names=names, output_names=outs, num_outputs=n,
                      row_axes=axes)
    x = torch.randn(rows, dim)
    mask = torch.rand(rows, n) > 0.4
    mask[0] = True  # a row every part runs on
    mask[1, always:] = False  # a row no chosen part runs on
    mask[:, :always] = True  # parts that run on every row
    with torch.no_grad():
        want = bias + sum(mask[:, j:j + 1] * (x @ module.w[j]) for j in range(n))
    for combine in ("chain", "concat"):
        graph = OrtGraph(pack_parts(raw, bias, always=always, combine=combine))
        got, counts = run_parts(graph, x, mask, always)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        assert counts == [rows] * always + mask[:, always:].sum(0).tolist()


@needs_onnx
def test_cli_exports_an_moe_run_in_graph_and_times_it(tmp_path, dense_and_moe, capsys):
    """A MoE run directory through ``frugalnn export --layout in-graph --time``."""
    import json

    from frugalnn.cli import main
    from frugalnn.train.checkpoint import save_checkpoint

    _vit_model, moe = dense_and_moe
    run = tmp_path / "run"
    run.mkdir()
    save_checkpoint(run / "checkpoint", moe)
    (run / "config.json").write_text(json.dumps({"data": "digits"}))
    assert main(["export", str(run), "--format", "onnx", "--layout", "in-graph",
                 "--check-limit", "16", "--time", "4", "--repeats", "2"]) == 0
    out = run / "export" / "onnx"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["loop"]["layout"] == "in-graph"
    check = json.loads((out / "check.json").read_text())
    assert check["passed"] and check["examples"] == 16
    timing = json.loads((out / "timing.json").read_text())
    runtimes = {r["runtime"] for r in timing["rows"]}
    assert {"eager", "onnxruntime"} <= runtimes
    assert {r["budget"] for r in timing["rows"]} == set(moe.budget_values())
