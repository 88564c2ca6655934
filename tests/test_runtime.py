"""The runtime layer: export of static and early-exit models, checks, runners, errors.

Formats that need no extra (exported program, TorchScript) always run; ONNX
and ONNX Runtime ones skip cleanly when the ``onnx`` extra is absent.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

import frugalnn
from frugalnn.cost.ledger import DynamicModule
from frugalnn.errors import UserError
from frugalnn.methods.early_exit.model import attach_heads
from frugalnn.runtime.deps import EXTRA_HINT, available, require
from frugalnn.runtime.export import ExportConfig, export
from frugalnn.runtime.graphs import graph_bytes
from frugalnn.runtime.measure import measure_on_runtime, on_runtime
from frugalnn.runtime.package import CHECK, MANIFEST, load_exported

HAVE_ORT = available("onnx") and available("onnxruntime")
needs_onnx = pytest.mark.skipif(not HAVE_ORT, reason="the onnx extra is not installed")
FORMATS = [pytest.param("onnx", marks=needs_onnx), "exported-program", "torchscript"]


@pytest.fixture(scope="module")
def digits():
    return frugalnn.load_splits("digits", test_limit=64, seed=0)


@pytest.fixture(scope="module")
def cnn(digits):
    torch.manual_seed(0)
    return frugalnn.create_model("cnn_small", num_classes=10).eval()


def _example(digits, n=8):
    return torch.stack([digits.test[i][0] for i in range(n)])


@pytest.mark.parametrize("fmt", FORMATS)
def test_static_export_matches_pytorch_and_records_the_check(tmp_path, digits, cnn, fmt):
    out = tmp_path / "exp"
    result = export(cnn, out, ExportConfig(format=fmt), check_data=digits.test)
    assert result.check["passed"] and result.check["match"] == 1.0
    check = json.loads((out / CHECK).read_text())
    assert check["examples"] == 64 and check["max_abs_diff"] < 1e-4
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["kind"] == "static" and manifest["format"] == fmt
    runner = load_exported(out)
    x = _example(digits, 5)  # another batch size than the one exported with
    torch.testing.assert_close(runner(x), cnn(x), atol=1e-4, rtol=1e-4)
    assert not list(tmp_path.glob(".exp.tmp-*"))


def _early_exit(cnn, digits, **kw):
    return attach_heads(cnn, "every", example_input=_example(digits, 1), **kw).eval()


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("kw", [{}, {"cascade": True, "ensemble": True, "final_ensemble": True},
                                {"policy": "patience"}], ids=["plain", "ztw", "patience"])
def test_early_exit_export_drops_exited_rows_and_keeps_its_knob(tmp_path, digits, cnn, fmt, kw):
    ee = _early_exit(cnn, digits, **kw)
    result = export(ee, tmp_path / "ee", ExportConfig(format=fmt), check_data=digits.test)
    assert result.manifest["kind"] == "early_exit"
    assert set(result.manifest["graphs"]) == {"segment0", "segment1", "final", "backbone"}
    assert result.check["match"] >= 0.99 and len(result.check["points"]) == len(
        ee.budget_values())
    runner = load_exported(tmp_path / "ee")
    x = _example(digits, 16)
    cheapest = ee.budget_values()[0]
    runner.set_budget(cheapest)  # every row leaves at the first head
    ee.set_budget(cheapest)
    torch.testing.assert_close(runner(x), ee(x), atol=1e-4, rtol=1e-4)
    assert runner.last_exits is not None and int(runner.last_exits.max()) == 0
    ee.set_budget(ee.full_budget())
    with pytest.raises(UserError, match="must"):
        runner.set_budget(7.5)  # a value this model was not built for


def test_runner_shrinks_the_batch_after_an_exit(digits, cnn, tmp_path):
    ee = _early_exit(cnn, digits)
    export(ee, tmp_path / "ee", ExportConfig(format="torchscript"), check_data=digits.test)
    runner = load_exported(tmp_path / "ee")
    seen = []
    final = runner.graphs["final"]
    runner.graphs["final"] = lambda s: (seen.append(len(s)), final(s))[1]
    ee.eval()
    with torch.no_grad():
        outs = ee.exit_outputs(_example(digits, 16))
    conf = [torch.softmax(o, 1).amax(1) for o in outs[:-1]]
    threshold = float(conf[0].median())
    runner.set_budget(threshold)
    runner(_example(digits, 16))
    reaching_final = int(((conf[0] <= threshold) & (conf[1] <= threshold)).sum())
    assert 0 < reaching_final < 16 and seen == [reaching_final]


def test_failed_check_writes_nothing(tmp_path, digits, cnn, monkeypatch):
    import frugalnn.runtime.export as mod

    real = mod.check_export

    def broken(*args, **kw):
        out = real(*args, **kw)
        out["match"] = 0.5
        return out

    monkeypatch.setattr(mod, "check_export", broken)
    with pytest.raises(UserError, match="does not match the PyTorch model"):
        export(cnn, tmp_path / "exp", ExportConfig(format="torchscript"), check_data=digits.test)
    assert list(tmp_path.iterdir()) == []


def test_existing_output_needs_force(tmp_path, digits, cnn):
    (tmp_path / "exp").mkdir()
    with pytest.raises(UserError, match="--force"):
        export(cnn, tmp_path / "exp", ExportConfig(format="torchscript"), check_data=digits.test)


class _Parts(nn.Module):
    def __init__(self, n: int) -> None:
        super().__init__()
        self.lins = nn.ModuleList(nn.Linear(6, 5) for _ in range(n))

    def forward(self, *xs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(torch.relu(lin(x)) for lin, x in zip(self.lins, xs))


@needs_onnx
@pytest.mark.parametrize("always", [0, 1])
def test_packed_parts_run_each_part_on_its_rows_only(always):
    """One parts graph: gather, run, scatter-add; an empty part and a part on every row."""
    from frugalnn.runtime.graphs import OrtGraph
    from frugalnn.runtime.sites import pack_parts, run_parts

    torch.manual_seed(0)
    parts = _Parts(3).eval()
    xs = tuple(torch.randn(2 + i, 6) for i in range(3))
    axes = {f"{p}{i}": f"rows{i}" for p in "xy" for i in range(3)}
    bias = torch.randn(5)
    raw = graph_bytes(parts, xs, "onnx", input_names=["x0", "x1", "x2"],
                      output_names=["y0", "y1", "y2"], num_outputs=3, row_axes=axes)
    graph = OrtGraph(pack_parts(raw, bias, always=always))
    x = torch.randn(9, 6)
    mask = torch.rand(9, 3) < 0.5
    mask[:, 1] = False  # a part with no rows
    if always:
        mask[:, 0] = True
    y, rows = run_parts(graph, x, mask, always)
    with torch.no_grad():
        want = bias.expand(9, 5).clone()
        for j, lin in enumerate(parts.lins):
            want += torch.relu(lin(x)) * mask[:, j:j + 1]
    torch.testing.assert_close(y, want, atol=1e-5, rtol=1e-5)
    assert rows == mask.sum(0).tolist() and rows[1] == 0


def test_static_model_refuses_a_method_layout(tmp_path, cnn, digits):
    with pytest.raises(UserError, match="layout 'segments' is for input-dependent models"):
        export(cnn, tmp_path / "x", ExportConfig(format="torchscript", layout="segments"),
               check_data=digits.test)
    assert not (tmp_path / "x").exists()


class _Dyn(DynamicModule):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[x.sum(1) > 0]


def test_input_dependent_model_without_exporter_is_refused(tmp_path):
    model = nn.Sequential(nn.Linear(4, 4), _Dyn())
    with pytest.raises(UserError, match="no exporter for the input-dependent layer '1'"):
        export(model, tmp_path / "x", ExportConfig(format="torchscript"),
               check_data=torch.randn(8, 4))


@needs_onnx
def test_unsupported_op_names_the_op_and_the_layer():
    class Odd(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.fft.fft(self.lin(x)).real

    net = nn.Sequential(nn.Linear(4, 4), Odd())
    with pytest.raises(UserError, match=r"aten::fft_fft in layer '1'$"):
        graph_bytes(net, (torch.randn(2, 4),), "onnx")


def test_missing_extra_names_it(monkeypatch):
    import importlib

    real = importlib.import_module

    def fake(name, *a, **k):
        if name == "onnxruntime":
            raise ModuleNotFoundError(name)
        return real(name, *a, **k)

    monkeypatch.setattr(importlib, "import_module", fake)
    with pytest.raises(UserError) as err:
        require("onnxruntime")
    assert "frugalnn[onnx]" in str(err.value) and EXTRA_HINT in str(err.value)


@pytest.mark.parametrize("runtime", ["eager", "torchscript",
                                     pytest.param("onnxruntime", marks=needs_onnx)])
def test_measure_on_runtime_records_latency_and_memory(digits, cnn, runtime):
    x = _example(digits, 4)
    fn = on_runtime(cnn, runtime, x)
    m = measure_on_runtime(fn, runtime, x, warmup=1, repeats=3, threads=1)
    d = m.to_dict()
    assert d["runtime"] == runtime and d["latency"]["repeats"] == 3
    assert d["latency"]["batch_size"] == 4
    if runtime == "onnxruntime":
        assert d["memory_method"] == "rss_high_water_fresh_session"
    else:
        assert d["memory_method"] == "tensor_storage_tracking" and d["peak_bytes"] > 0


def test_unknown_runtime_is_refused(cnn):
    with pytest.raises(UserError, match="unknown runtime"):
        on_runtime(cnn, "tvm", torch.zeros(2, 1, 8, 8))


def test_public_api_names():
    assert frugalnn.export is export and frugalnn.ExportConfig is ExportConfig
    assert frugalnn.load_exported is load_exported


def _run_dir(tmp_path: Path, cnn) -> Path:
    from frugalnn.train.checkpoint import save_checkpoint

    run = tmp_path / "run"
    run.mkdir()
    save_checkpoint(run / "checkpoint", cnn)
    (run / "config.json").write_text(json.dumps({"data": "digits"}))
    return run


def test_cli_export_writes_a_checked_export(tmp_path, cnn, capsys):
    from frugalnn.cli import main

    run = _run_dir(tmp_path, cnn)
    assert main(["export", str(run), "--format", "torchscript", "--check-limit", "32"]) == 0
    check = json.loads((run / "export" / "torchscript" / CHECK).read_text())
    assert check["passed"] and check["examples"] == 32
    assert "100.0% of rows within tolerance" in capsys.readouterr().out


def test_cli_export_times_eager_and_the_export_side_by_side(tmp_path, cnn):
    from frugalnn.cli import main

    run = _run_dir(tmp_path, cnn)
    assert main(["export", str(run), "--format", "torchscript", "--check-limit", "8",
                 "--time", "1,4", "--repeats", "2"]) == 0
    timing = json.loads((run / "export" / "torchscript" / "timing.json").read_text())
    assert [(r["batch_size"], r["runtime"]) for r in timing["rows"]] == [
        (1, "eager"), (1, "torchscript"), (4, "eager"), (4, "torchscript")]
    assert main(["export", str(run), "--format", "torchscript", "--force", "--time", "0"]) == 2


def test_cli_export_layout_flag_reaches_the_exporter(tmp_path, cnn, capsys):
    from frugalnn.cli import main

    run = _run_dir(tmp_path, cnn)
    # A static model has no layout to choose: asking for one is refused in one line.
    assert main(["export", str(run), "--format", "onnx", "--layout", "segments"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "layout" in err[0]
    assert not (run / "export").exists()


def test_cli_export_without_checkpoint_is_one_line(tmp_path, capsys):
    from frugalnn.cli import main

    (tmp_path / "run").mkdir()
    assert main(["export", str(tmp_path / "run"), "--format", "torchscript"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no checkpoint" in err[0]
    assert not (tmp_path / "run" / "export").exists()


def test_cli_profile_on_another_runtime(capsys):
    from frugalnn.cli import main

    assert main(["profile", "cnn_small", "--runtime", "torchscript", "--repeats", "2",
                 "--warmup", "1", "--batch-size", "4", "--depth", "0", "--threads", "1"]) == 0
    assert "runtime torchscript" in capsys.readouterr().out
