"""Cost of exported ONNX graphs: the same FLOPs as the PyTorch model, int8 graphs included,
from Python (``measure_onnx``) and ``frugalnn profile model.onnx``."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

pytest.importorskip("onnx")

from frugalnn.cli import main  # noqa: E402
from frugalnn.cost.count import UncountedOpWarning, measure  # noqa: E402
from frugalnn.errors import UserError  # noqa: E402
from frugalnn.runtime.graphs import graph_bytes  # noqa: E402
from frugalnn.runtime.onnx_cost import measure_onnx  # noqa: E402


class Cnn(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, groups=8),
            nn.ConvTranspose2d(8, 4, 2, stride=2))
        self.head = nn.Linear(4 * 10 * 10, 10)

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


class Tokens(nn.Module):
    """Attention by hand (split by ``chunk``: shapes only known by running), einsum, LSTM."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(16, 48)
        self.rnn = nn.LSTM(16, 8, batch_first=True)

    def forward(self, x):
        q, k, v = self.qkv(x).chunk(3, -1)
        a = torch.softmax(q @ k.transpose(1, 2), -1) @ v
        a = torch.einsum("btd,bsd->bts", a, v) @ v
        return self.rnn(a)[0]


def _export(model: nn.Module, x: torch.Tensor, path: Path) -> Path:
    path.write_bytes(graph_bytes(model.eval(), (x,), "onnx"))
    return path


@pytest.mark.parametrize("make,shape", [(Cnn, (3, 7, 7)), (Tokens, (5, 16))],
                         ids=["cnn", "tokens"])
def test_onnx_graph_counts_what_pytorch_counts(tmp_path, make, shape):
    torch.manual_seed(0)
    model = make().eval()
    file = _export(model, torch.randn(1, *shape), tmp_path / "m.onnx")
    for batch in (1, 3):
        ref = measure(model, torch.randn(batch, *shape))
        got = measure_onnx(file, batch)
        assert got.flops == ref.flops > 0
        assert got.params == ref.params > 0
        assert got.unknown_ops == {} and got.batch_size == batch
        assert got.model_bytes == file.stat().st_size
        assert got.activation_bytes > 0


def test_int8_onnx_graph_keeps_its_flops_and_params(tmp_path):
    quantization = pytest.importorskip("onnxruntime.quantization")
    torch.manual_seed(0)
    model = Cnn().eval()
    dense = _export(model, torch.randn(1, 3, 7, 7), tmp_path / "dense.onnx")
    q = tmp_path / "int8.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantization.quantize_dynamic(str(dense), str(q),
                                      weight_type=quantization.QuantType.QInt8)
    ref, got = measure_onnx(dense), measure_onnx(q)
    assert got.flops == ref.flops > 0 and got.params == ref.params
    assert got.flops_by_op.keys() >= {"ConvInteger", "MatMulInteger"}
    conv_t = 2 * 8 * 5 * 5 * 4 * 2 * 2  # ConvTranspose (on 5x5) stays float
    assert got.flops_by_precision == {"int8": ref.flops - conv_t, "fp32": conv_t}
    assert got.params_by_precision["int8"] > 0
    assert got.model_bytes < ref.model_bytes


def test_symbolic_sequence_length_needs_a_shape(tmp_path):
    import onnx

    file = _export(Tokens(), torch.randn(1, 5, 16), tmp_path / "t.onnx")
    model = onnx.load(str(file))
    model.graph.input[0].type.tensor_type.shape.dim[1].dim_param = "seq"
    onnx.save(model, str(file))
    with pytest.raises(UserError, match="symbolic dimension"):
        measure_onnx(file)
    assert measure_onnx(file, input_shapes={"input": (5, 16)}).flops == measure(
        Tokens().eval(), torch.randn(1, 5, 16)).flops


def test_unknown_node_warns(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    node = helper.make_node("DFT", ["x"], ["y"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, [1, 8, 1])], [helper.make_tensor_value_info(
            "y", TensorProto.FLOAT, [1, 8, 2])])
    file = tmp_path / "dft.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)]), str(file))
    with pytest.warns(UncountedOpWarning, match="DFT"):
        report = measure_onnx(file)
    assert report.unknown_ops == {"DFT": 1} and "WARNING" in report.summary()


def test_not_a_graph_is_one_line(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(UserError, match="not a readable ONNX model"):
        measure_onnx(bad)
    with pytest.raises(UserError, match="neither"):
        measure_onnx(tmp_path / "missing.onnx")
    with pytest.raises(UserError, match="measure_onnx"):
        measure(str(bad), torch.zeros(1))  # type: ignore[arg-type]


def test_cli_profile_of_an_onnx_file(tmp_path, capsys):
    torch.manual_seed(0)
    model = Cnn().eval()
    file = _export(model, torch.randn(1, 3, 7, 7), tmp_path / "cnn.onnx")
    out = tmp_path / "p.json"
    assert main(["profile", str(file), "--batch-size", "4", "--repeats", "2", "--warmup", "1",
                 "--json", str(out)]) == 0
    text = capsys.readouterr().out
    ref = measure(model, torch.randn(1, 3, 7, 7))
    assert f"parameters:        {ref.params:,}" in text and "onnxruntime" in text
    saved = json.loads(out.read_text())
    assert saved["flops_per_example"] == ref.flops and set(saved["latency"]) == {"1", "4"}
    assert main(["profile", str(file), "--no-timing", "--runtime", "compile"]) == 2
    assert "runs on onnxruntime" in capsys.readouterr().err


def test_cli_profile_prints_a_warning_line_for_uncounted_ops(monkeypatch, capsys):
    import frugalnn.cli.profile as cli_profile

    spectral = nn.Sequential(nn.Linear(8, 8))
    spectral.register_forward_hook(lambda _m, _i, out: torch.fft.rfft(out).abs())
    monkeypatch.setattr(cli_profile, "_load", lambda args: (
        spectral, "mlp", _info(), None))
    with pytest.warns(UncountedOpWarning):
        assert main(["profile", "mlp", "--input-shape", "8", "--no-timing"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("WARNING: FLOPs undercounted") and "_fft_r2c" in line
               for line in lines)


def _info():
    from frugalnn.models import model_info

    return model_info("mlp")


def test_export_directory_is_counted_and_profiled(tmp_path, capsys):
    from frugalnn.runtime.export import ExportConfig, export

    torch.manual_seed(0)
    model = Cnn().eval()
    export(model, tmp_path / "exp", ExportConfig(format="onnx"),
           check_data=torch.randn(4, 3, 7, 7))
    ref = measure(model, torch.randn(1, 3, 7, 7))
    got = measure_onnx(tmp_path / "exp")
    assert (got.flops, got.params) == (ref.flops, ref.params)
    assert main(["profile", str(tmp_path / "exp"), "--no-timing"]) == 0
    assert f"{ref.params:,}" in capsys.readouterr().out
