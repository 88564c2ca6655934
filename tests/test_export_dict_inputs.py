"""Export of models that take a dict (Hugging Face BERT and ViT built from tiny configs).

Each key becomes a named graph input with a dynamic batch (and token sequence) axis;
the export equals the PyTorch model on other batch sizes and sequence lengths than the
one it was exported on; runtimes are fed by name. ONNX cases skip without the extra.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from frugalnn.errors import UserError
from frugalnn.runtime.deps import available
from frugalnn.runtime.export import ExportConfig, export
from frugalnn.runtime.package import CHECK, MANIFEST, load_exported
from frugalnn.utils.batch import call_model, logits_of

transformers = pytest.importorskip("transformers")

HAVE_ORT = available("onnx") and available("onnxruntime")
needs_onnx = pytest.mark.skipif(not HAVE_ORT, reason="the onnx extra is not installed")
FORMATS = [pytest.param("onnx", marks=needs_onnx), "exported-program", "torchscript"]


def _bert() -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=30, hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=2, intermediate_size=64,
                                  max_position_embeddings=32, num_labels=3)
    return transformers.BertForSequenceClassification(cfg).eval()


def _vit() -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = transformers.ViTConfig(image_size=8, patch_size=4, num_channels=1, hidden_size=32,
                                 num_hidden_layers=2, num_attention_heads=2,
                                 intermediate_size=64, num_labels=10)
    return transformers.ViTForImageClassification(cfg).eval()


def _tokens(n: int = 24, length: int = 9) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 30, (n, length), generator=g)
    mask = torch.ones_like(ids)
    mask[1::3, 6:] = 0  # padded rows, as a tokenizer pads short texts
    ids[mask == 0] = 0
    return {"input_ids": ids, "attention_mask": mask}


@pytest.fixture(scope="module")
def bert():
    return _bert()


@pytest.fixture(scope="module")
def vit():
    return _vit()


@pytest.mark.parametrize("fmt", FORMATS)
def test_bert_dict_export_names_its_inputs_and_equals_pytorch(tmp_path, bert, fmt):
    data = _tokens()
    result = export(bert, tmp_path / "exp", ExportConfig(format=fmt), check_data=data)
    check = json.loads((tmp_path / "exp" / CHECK).read_text())
    assert check["passed"] and check["match"] == 1.0 and check["examples"] == 24
    manifest = json.loads((tmp_path / "exp" / MANIFEST).read_text())
    assert [i["name"] for i in manifest["inputs"]] == ["input_ids", "attention_mask"]
    assert manifest["inputs"][0]["shape"] == [None]  # the sequence axis is dynamic
    assert result.manifest["kind"] == "static"
    runner = load_exported(tmp_path / "exp")
    # Another batch size and sequence length than the export's, padding included.
    x = {k: v[3:8, :7] for k, v in _tokens(length=12).items()}
    with torch.no_grad():
        want = bert(**x).logits
    torch.testing.assert_close(runner(x), want, atol=1e-5, rtol=1e-5)
    with pytest.raises(UserError, match="missing attention_mask"):
        runner({"input_ids": x["input_ids"]})


@pytest.mark.parametrize("fmt", FORMATS)
def test_vit_pixel_values_export_equals_pytorch(tmp_path, vit, fmt):
    g = torch.Generator().manual_seed(2)
    data = {"pixel_values": torch.randn(20, 1, 8, 8, generator=g)}
    export(vit, tmp_path / "exp", ExportConfig(format=fmt), check_data=data)
    manifest = json.loads((tmp_path / "exp" / MANIFEST).read_text())
    assert manifest["inputs"] == [{"name": "pixel_values", "shape": [1, 8, 8],
                                   "example_shape": [1, 8, 8], "dtype": "torch.float32"}]
    runner = load_exported(tmp_path / "exp")
    x = {"pixel_values": torch.randn(3, 1, 8, 8, generator=g)}
    with torch.no_grad():
        want = vit(**x).logits
    torch.testing.assert_close(runner(x), want, atol=1e-5, rtol=1e-5)


@needs_onnx
def test_low_rank_bert_exports_to_onnx(tmp_path, bert):
    from frugalnn.methods.lowrank.compress import compress_model

    data = _tokens()
    low, plan = compress_model(copy.deepcopy(bert), "svd", "flops=2",
                               {k: v[:2] for k, v in data.items()})
    assert plan
    result = export(low.eval(), tmp_path / "exp", ExportConfig(format="onnx"), check_data=data)
    assert result.check["match"] == 1.0


@needs_onnx
def test_onnxruntime_is_fed_by_name(tmp_path, bert):
    from frugalnn.runtime.graphs import OrtGraph
    from frugalnn.runtime.measure import measure_on_runtime, on_runtime
    from frugalnn.runtime.onnx_cost import example_feeds, measure_onnx

    data = _tokens()
    export(bert, tmp_path / "exp", ExportConfig(format="onnx"), check_data=data)
    fn = on_runtime(tmp_path / "exp", "onnxruntime", data)
    graph = fn.graph
    assert isinstance(graph, OrtGraph) and graph.input_names == ["input_ids", "attention_mask"]
    # A dict in another key order is fed by name, not by position.
    x = {"attention_mask": data["attention_mask"][:4], "input_ids": data["input_ids"][:4]}
    with torch.no_grad():
        want = bert(**x).logits
    torch.testing.assert_close(graph(x), want, atol=1e-5, rtol=1e-5)
    m = measure_on_runtime(fn, "onnxruntime", x, warmup=1, repeats=2, threads=1).to_dict()
    assert m["latency"]["batch_size"] == 4 and m["memory_method"].startswith("rss")
    # Eager PyTorch gets the same dict as keyword arguments.
    eager = measure_on_runtime(bert, "eager", x, warmup=0, repeats=1, threads=1).to_dict()
    assert eager["peak_bytes"] > 0
    # Counting and example batches: one sequence length serves both inputs.
    cost = measure_onnx(tmp_path / "exp", 2, input_shapes={"input_ids": (5,)})
    assert cost.input_shape == [2, 5] and cost.flops > 0
    feeds = example_feeds(tmp_path / "exp", 3, {"input_ids": (5,)})
    assert {k: tuple(v.shape) for k, v in feeds.items()} == {"input_ids": (3, 5),
                                                             "attention_mask": (3, 5)}
    torch.testing.assert_close(graph(feeds), bert(**feeds).logits, atol=1e-5, rtol=1e-5)


def test_hf_vit_early_exits_export_as_segments(tmp_path, vit):
    from frugalnn.methods.early_exit.model import attach_heads

    g = torch.Generator().manual_seed(3)
    data = {"pixel_values": torch.randn(16, 1, 8, 8, generator=g)}
    ee = attach_heads(copy.deepcopy(vit), "every",
                      example_input={"pixel_values": data["pixel_values"][:1]}).eval()
    result = export(ee, tmp_path / "ee", ExportConfig(format="torchscript"), check_data=data)
    assert result.manifest["kind"] == "early_exit" and "segment0" in result.manifest["graphs"]
    assert result.manifest["inputs"][0]["name"] == "pixel_values"
    assert len(result.check["points"]) == len(ee.budget_values())
    runner = load_exported(tmp_path / "ee")
    cheapest = ee.budget_values()[0]
    runner.set_budget(cheapest)  # every row leaves at the first head
    ee.set_budget(cheapest)
    with torch.no_grad():
        want = ee(data)
    torch.testing.assert_close(runner(data), want, atol=1e-5, rtol=1e-5)
    assert int(runner.last_exits.max()) == 0


def test_hf_text_early_exits_export_by_input_name(tmp_path, bert):
    from frugalnn.methods.early_exit.model import attach_heads

    data = _tokens(8)
    ee = attach_heads(copy.deepcopy(bert), "every",
                      example_input={k: v[:1] for k, v in data.items()}).eval()
    result = export(ee, tmp_path / "ee", ExportConfig(format="torchscript"), check_data=data)
    assert result.check["passed"] and result.manifest["kind"] == "early_exit"
    assert [i["name"] for i in result.manifest["inputs"]] == ["input_ids", "attention_mask"]
    assert "input_key" not in result.manifest  # the whole dict, not one tensor of it


@pytest.mark.parametrize("bad, needle", [
    ({"input_ids": torch.zeros(4, 3, dtype=torch.long), "lengths": [3, 3, 3, 3]},
     "keys lengths do not hold tensors"),
    ({}, "it is empty"),
    ([torch.zeros(4, 3)], "an input of type list"),
])
def test_inputs_whose_names_cannot_be_inferred_are_refused(tmp_path, bert, bad, needle):
    with pytest.raises(UserError, match=needle):
        export(bert, tmp_path / "x", ExportConfig(format="torchscript"), check_data=_tokens(4),
               example_input=bad)
    assert not (tmp_path / "x").exists()


def test_int8_graph_of_a_dict_model_is_refused(tmp_path, bert):
    data = _tokens(4)
    with pytest.raises(UserError, match="takes a dict"):
        export(bert, tmp_path / "x", ExportConfig(format="onnx", int8=True), check_data=data,
               calibration_data=data)


# ------------------------------------------------------------------ command line


@pytest.fixture(scope="module")
def hf_run(tmp_path_factory) -> Path:
    """``frugalnn evaluate --model hf:DIR --data textfile``: a run of a tiny BERT whose
    batches are tokenised dicts."""
    from frugalnn.cli import main

    root = tmp_path_factory.mktemp("hf")
    directory = root / "bert"
    directory.mkdir()
    words = ["the", "movie", "is", "good", "great", "bad", "awful"]
    (directory / "vocab.txt").write_text(
        "\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    transformers.BertTokenizer(str(directory / "vocab.txt")).save_pretrained(directory)
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=12, hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=2, intermediate_size=64,
                                  max_position_embeddings=32, num_labels=2)
    transformers.BertForSequenceClassification(cfg).save_pretrained(directory)
    csv_file = root / "reviews.csv"
    rows = ["the movie is good,pos", "the movie is awful,neg", "great,pos", "bad bad,neg",
            "the movie,pos", "awful movie,neg"]
    csv_file.write_text("text,label\n" + "\n".join(rows) + "\n")
    run = root / "run"
    assert main(["evaluate", "--model", f"hf:{directory}", "--data", "textfile",
                 "--data-dir", str(csv_file), "--val-fraction", "0", "--latency-batch-sizes",
                 "none", "--no-progress", "--threads", "1", "--out", str(run)]) == 0
    run.joinpath("csv").write_text(str(csv_file))
    return run


@needs_onnx
def test_cli_exports_and_times_an_hf_run_by_name(hf_run, capsys):
    from frugalnn.cli import main

    csv_file = hf_run.joinpath("csv").read_text()
    assert main(["export", str(hf_run), "--format", "onnx", "--data-dir", csv_file,
                 "--check-limit", "6", "--time", "1,2", "--repeats", "2", "--force"]) == 0
    out = hf_run / "export" / "onnx"
    assert json.loads((out / CHECK).read_text())["passed"]
    manifest = json.loads((out / MANIFEST).read_text())  # the tokenizer's three keys
    assert [i["name"] for i in manifest["inputs"]] == ["input_ids", "token_type_ids",
                                                      "attention_mask"]
    timing = json.loads((out / "timing.json").read_text())
    assert [(r["batch_size"], r["platform"]) for r in timing["rows"]] == [
        (1, "eager"), (1, "onnxruntime"), (2, "eager"), (2, "onnxruntime")]
    capsys.readouterr()
    # frugalnn profile on the export: both inputs fed by name, no --input-shape needed.
    assert main(["profile", str(out), "--runtime", "onnxruntime", "--repeats", "2",
                 "--warmup", "1", "--batch-size", "2", "--threads", "1"]) == 0
    assert "runtime onnxruntime" in capsys.readouterr().out


@pytest.mark.parametrize("argv, needle", [
    (["--format", "tflite"], "unknown export format 'tflite'"),
    (["--format", "torchscript", "--time", "1", "--time-runtime", "onnxruntime"],
     "a torchscript export runs on torchscript, not onnxruntime"),
])
def test_cli_bad_export_requests_are_one_line(hf_run, capsys, argv, needle):
    from frugalnn.cli import main

    capsys.readouterr()
    assert main(["export", str(hf_run), *argv, "--out", str(hf_run / "bad")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0]
    assert not (hf_run / "bad").exists()


def _routed(kind: str, bert: torch.nn.Module, data: dict[str, torch.Tensor]) -> Any:
    import frugalnn

    class Labelled(torch.utils.data.Dataset):  # Hugging Face examples: dicts with labels
        def __len__(self) -> int:
            return len(data["input_ids"])

        def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
            return {**{k: v[i] for k, v in data.items()}, "labels": torch.tensor(i % 3)}

    labelled = Labelled()
    if kind == "moe":
        return frugalnn.moe(copy.deepcopy(bert), frugalnn.MoEConfig(
            experts=4, router_epochs=1, batch_size=8), train_data=labelled).eval()
    return frugalnn.acm(copy.deepcopy(bert), frugalnn.ACMConfig(
        learners=4, distill_epochs=1, gate_epochs=1, batch_size=8), train_data=labelled).eval()


@needs_onnx
@pytest.mark.parametrize("kind", ["moe", "acm"])
def test_hf_text_moe_and_acm_export_in_graph_by_input_name(tmp_path, bert, kind):
    """Routing on a dict input: one ONNX graph taking ``input_ids`` and ``attention_mask``
    by name plus the knob; equal to PyTorch at every budget, also on another batch size
    and sequence length than the export's; the other layouts are refused in one line."""
    data = _tokens(24)
    model = _routed(kind, bert, data)
    result = export(model, tmp_path / kind, ExportConfig(format="onnx"), check_data=data)
    assert result.check["passed"] and result.manifest["loop"]["layout"] == "in-graph"
    assert [i["name"] for i in result.manifest["inputs"]] == ["input_ids", "attention_mask"]
    runner = load_exported(tmp_path / kind)
    other = {k: v[:5, :7] for k, v in _tokens(12, 7).items()}
    lowest = min(model.budget_values())
    for budget in (lowest, model.full_budget()):
        model.set_budget(budget)
        runner.set_budget(budget)
        with torch.no_grad():
            want = logits_of(call_model(model, other))
        torch.testing.assert_close(runner({"attention_mask": other["attention_mask"],
                                           "input_ids": other["input_ids"]}), want,
                                   atol=1e-4, rtol=1e-4)
    for layout in ("segments", "one-graph"):
        with pytest.raises(UserError, match="exported in the 'in-graph' layout to ONNX only"):
            export(model, tmp_path / layout, ExportConfig(format="onnx", layout=layout),
                   check_data=data)
        assert not (tmp_path / layout).exists()
