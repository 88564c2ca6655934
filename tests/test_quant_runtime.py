"""ONNX Runtime's QDQ int8 as an execution path: ``export(..., ExportConfig(int8=True))`` and
``frugalnn export --int8``, checked against the float PyTorch model, run by ``load_exported``
and ``frugalnn profile``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import frugalnn
from frugalnn.errors import UserError
from frugalnn.runtime.deps import available
from frugalnn.runtime.export import ExportConfig, export
from frugalnn.runtime.package import CHECK, MANIFEST, load_exported

pytestmark = pytest.mark.skipif(not (available("onnx") and available("onnxruntime")),
                                reason="the onnx extra is not installed")


@pytest.fixture(scope="module")
def digits():
    return frugalnn.load_splits("digits", val_fraction=0.1, test_limit=200, seed=0)


@pytest.fixture(scope="module")
def cnn(digits):
    """cnn_small trained a little on digits, so that its top-1 predictions mean something."""
    torch.manual_seed(0)
    model = frugalnn.create_model("cnn_small", num_classes=10)
    loader = torch.utils.data.DataLoader(digits.train, batch_size=64, shuffle=True)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny batches: more threads only contend for the cores
    try:
        for _ in range(2):
            for x, y in loader:
                opt.zero_grad()
                torch.nn.functional.cross_entropy(model(x), y).backward()
                opt.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval()


def _weight_bytes(export_dir: Path) -> int:
    """Bytes of the graph's weight tensors (initialisers of two or more dimensions)."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(export_dir / "model.onnx")).graph
    return sum(numpy_helper.to_array(t).nbytes for t in graph.initializer if len(t.dims) >= 2)


def _int8(**kw) -> ExportConfig:
    return ExportConfig(format="onnx", int8=True, calibration_size=128, **kw)


def test_int8_export_is_smaller_agrees_and_records_its_check(tmp_path, digits, cnn):
    f32 = export(cnn, tmp_path / "f32", ExportConfig(format="onnx"), check_data=digits.test)
    q = export(cnn, tmp_path / "int8", _int8(), check_data=digits.test,
               calibration_data=digits.train)
    float_file = (tmp_path / "f32" / "model.onnx").stat().st_size
    int8_file = (tmp_path / "int8" / "model.onnx").stat().st_size
    # Conv and Linear weights: 4 bytes each in the float graph, 1 in the int8 one.
    weights = sum(m.weight.numel() for m in cnn.modules()
                  if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)))
    assert _weight_bytes(tmp_path / "f32") == 4 * weights
    assert _weight_bytes(tmp_path / "int8") == weights
    # The whole file shrinks less (per-channel scales, int32 biases, QDQ nodes and names).
    assert int8_file < float_file / 2
    manifest = json.loads((tmp_path / "int8" / MANIFEST).read_text())
    info = manifest["int8"]
    assert info["format"] == "QDQ" and info["calibration_examples"] == 128
    assert info["graph_bytes"] == int8_file and info["float_graph_bytes"] == float_file
    assert manifest["config"]["int8"] is True
    check = json.loads((tmp_path / "int8" / CHECK).read_text())
    assert check == q.check and check["passed"] and check["criterion"] == "argmax_agreement"
    assert check["examples"] == 200 and check["argmax_agreement"] >= 0.95
    assert 0 < check["max_abs_diff"] < 1.0  # int8 changes the logits, but not by much
    # The graph really is int8: QDQ pairs around int8 initialisers.
    import onnx

    graph = onnx.load(str(tmp_path / "int8" / "model.onnx")).graph
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in graph.node}
    assert any(t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 4
               for t in graph.initializer)
    runner = load_exported(tmp_path / "int8")
    x = torch.stack([digits.test[i][0] for i in range(7)])
    out = runner(x)
    assert out.shape == (7, 10)
    f32_out = load_exported(tmp_path / "f32")(x)
    assert not torch.allclose(out, f32_out, atol=1e-5) and f32.check["match"] == 1.0


def test_int8_export_refusals_write_nothing(tmp_path, digits, cnn):
    from frugalnn.methods.early_exit.model import attach_heads

    with pytest.raises(UserError, match="format onnx"):
        export(cnn, tmp_path / "a", ExportConfig(format="torchscript", int8=True),
               check_data=digits.test, calibration_data=digits.train)
    with pytest.raises(UserError, match="calibrat"):
        export(cnn, tmp_path / "b", _int8(), check_data=digits.test)
    ee = attach_heads(cnn, "every", example_input=digits.test[0][0][None]).eval()
    with pytest.raises(UserError, match="static models.*early_exit"):
        export(ee, tmp_path / "c", _int8(), check_data=digits.test,
               calibration_data=digits.train)
    # An agreement no int8 graph reaches here: refused, and nothing is left behind.
    with pytest.raises(UserError, match=r"top-1 predictions \(needed 100.0%"):
        export(cnn, tmp_path / "d", _int8(int8_min_agreement=1.0, check_limit=None),
               check_data=torch.randn(64, 1, 8, 8), calibration_data=digits.train)
    assert list(tmp_path.iterdir()) == []


def test_cli_export_int8_then_profile_runs_it(tmp_path, cnn, capsys):
    from frugalnn.cli import main
    from frugalnn.train.checkpoint import save_checkpoint

    run = tmp_path / "run"
    save_checkpoint(run / "checkpoint", cnn)
    (run / "config.json").write_text(json.dumps({"data": "digits"}))
    assert main(["export", str(run), "--format", "torchscript", "--int8"]) == 2
    assert "--format onnx" in capsys.readouterr().err
    assert main(["export", str(run), "--int8", "--calibration-size", "64",
                 "--check-limit", "128"]) == 0
    out = capsys.readouterr().out
    assert "QDQ int8" in out and "calibrated on 64 digits training examples" in out
    export_dir = run / "export" / "onnx"
    check = json.loads((export_dir / CHECK).read_text())
    assert check["passed"] and check["examples"] == 128 and check["argmax_agreement"] >= 0.95
    assert main(["profile", str(export_dir), "--repeats", "2", "--batch-size", "4"]) == 0
    out = capsys.readouterr().out
    assert "latency" in out and "FLOPs by precision: int8" in out  # QDQ nodes run in int8


def test_int8_config_is_validated() -> None:
    frugalnn.ExportConfig(int8=True).validate()
    with pytest.raises(UserError, match="calibration_size"):
        ExportConfig(int8=True, calibration_size=0).validate()
    with pytest.raises(UserError, match="between 0 and 1"):
        ExportConfig(int8=True, int8_min_agreement=95).validate()
