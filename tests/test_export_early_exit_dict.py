"""Early exits of a model that takes a dict and passes a dict state (Hugging Face BERT).

The segments take the model's own inputs by name (``input_ids``, ``attention_mask``)
and pass the state ``{"hidden", "mask"}`` as the named tensors ``state_in.hidden`` /
``state_in.mask``; the runner drops exited rows from every tensor of the state. The
exported runner equals the PyTorch model at every threshold, on padded rows and on other
batch sizes and sequence lengths than the export's.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
import torch
from tiny_hf import tiny_bert
from torch import nn

from frugalnn.errors import UserError
from frugalnn.methods.early_exit import attach_heads
from frugalnn.models.base import StagedModel
from frugalnn.runtime.deps import available
from frugalnn.runtime.export import ExportConfig, export
from frugalnn.runtime.package import CHECK, MANIFEST, load_exported

pytest.importorskip("transformers")

needs_onnx = pytest.mark.skipif(not (available("onnx") and available("onnxruntime")),
                                reason="the onnx extra is not installed")
#: Thresholds where every row exits at the first head, some rows exit, none exits.
CHEAPEST, MIXED, NEVER = 0.0, 0.6, 1.0


def _tokens(n: int, length: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 50, (n, length), generator=g)
    mask = torch.ones_like(ids)
    mask[1::3, length - 3:] = 0  # padded rows, as a tokenizer pads short texts
    ids[mask == 0] = 0
    return {"input_ids": ids, "attention_mask": mask}


@pytest.fixture(scope="module")
def bert_ee() -> nn.Module:
    x = _tokens(1, 9, 0)
    return attach_heads(tiny_bert(layers=3), "every", example_input=x).eval()


class _Spy:
    """An ONNX Runtime session that records the row count of every input it is fed."""

    def __init__(self, session: Any, seen: list[dict[str, int]]) -> None:
        self.session, self.seen = session, seen

    def run(self, outputs: Any, feeds: dict[str, Any]) -> Any:
        self.seen.append({k: int(v.shape[0]) for k, v in feeds.items()})
        return self.session.run(outputs, feeds)


@needs_onnx
def test_onnx_bert_early_exits_equal_pytorch_at_every_threshold(tmp_path, bert_ee):
    data = _tokens(24, 9, 1)
    result = export(bert_ee, tmp_path / "ee", ExportConfig(format="onnx"), check_data=data)
    check = json.loads((tmp_path / "ee" / CHECK).read_text())
    assert check["passed"] and check["match"] == 1.0
    assert [p["budget"] for p in check["points"]] == bert_ee.budget_values()
    manifest = json.loads((tmp_path / "ee" / MANIFEST).read_text())
    assert [i["name"] for i in manifest["inputs"]] == ["input_ids", "attention_mask"]
    loop = manifest["loop"]
    assert loop["state_keys"] == ["hidden", "mask"]
    assert loop["state_inputs"] == ["state_in.hidden", "state_in.mask"]
    assert result.manifest["graphs"].keys() == {"segment0", "segment1", "final", "backbone"}

    runner = load_exported(tmp_path / "ee")
    assert runner.graphs["segment0"].input_names == ["input_ids", "attention_mask"]
    assert runner.graphs["segment1"].input_names == ["state_in.hidden", "state_in.mask"]
    assert runner.graphs["segment1"].output_names == ["state_out.hidden", "state_out.mask",
                                                      "logits"]
    # Another batch size and sequence length than the export's, padded rows included.
    x = _tokens(10, 7, 2)
    with torch.no_grad():
        plain = bert_ee.backbone(x)  # the Hugging Face model's own logits
        for b in bert_ee.budget_values():
            bert_ee.set_budget(b)
            runner.set_budget(b)
            torch.testing.assert_close(runner(x), bert_ee(x), atol=1e-5, rtol=1e-5)
        bert_ee.set_budget(bert_ee.full_budget())
    runner.set_budget(NEVER)
    torch.testing.assert_close(runner(x), plain, atol=1e-5, rtol=1e-5)
    assert int(runner.last_exits.min()) == 2  # nobody leaves early

    # Some rows leave early; those are cut from every tensor of the state, mask included.
    seen: list[dict[str, int]] = []
    for name in ("segment1", "final"):
        graph = runner.graphs[name]
        graph.session = _Spy(graph.session, seen)
    runner.set_budget(MIXED)
    runner(x)
    exits = runner.last_exits
    assert 0 < int((exits < 2).sum()) < len(exits)
    still_in = len(exits) - int((exits == 0).sum())
    assert seen[0] == {"state_in.hidden": still_in, "state_in.mask": still_in}
    assert all(len(set(feed.values())) == 1 for feed in seen)
    assert seen[-1]["state_in.hidden"] == int((exits == 2).sum())


@needs_onnx
def test_cascaded_ensembled_bert_exits_feed_prev_and_state_by_name(tmp_path):
    """ZTW heads (cascade, geometric and final ensembles) on a dict state."""
    ee = attach_heads(tiny_bert(layers=3), "every", cascade=True, ensemble=True,
                      final_ensemble=True, example_input=_tokens(1, 9, 0)).eval()
    with torch.no_grad():  # ensembles start as identity-like weights: make them matter
        for p in [*ee.ensemble.parameters(), *ee.final_ensemble.parameters()]:
            p.add_(0.1 * torch.randn_like(p))
    export(ee, tmp_path / "ee", ExportConfig(format="onnx"), check_data=_tokens(16, 9, 6))
    runner = load_exported(tmp_path / "ee")
    assert runner.graphs["segment1"].input_names == ["state_in.hidden", "state_in.mask", "prev"]
    x = _tokens(11, 5, 7)
    mixed = 0
    with torch.no_grad():
        for b in ee.budget_values():
            ee.set_budget(b)
            runner.set_budget(b)
            torch.testing.assert_close(runner(x), ee(x), atol=1e-5, rtol=1e-5)
            mixed += len(set(runner.last_exits.tolist())) > 1
    assert mixed  # some threshold splits the batch between exits


@pytest.mark.parametrize("fmt", ["torchscript",
                                 pytest.param("exported-program", marks=pytest.mark.slow)])
def test_bert_early_exits_in_pytorch_formats(tmp_path, bert_ee, fmt):
    data, x = _tokens(12, 9, 3), _tokens(7, 6, 4)
    budgets = [CHEAPEST, MIXED, NEVER]
    with torch.no_grad():  # the model as a run leaves it: already run on the data
        before = {(b, i): (bert_ee.set_budget(b), bert_ee(inp))[1]
                  for b in budgets for i, inp in enumerate((data, x))}
    export(bert_ee, tmp_path / "ee", ExportConfig(format=fmt, budgets=budgets),
           check_data=data)
    # Exporting leaves every module of the model in eval mode (no dropout).
    assert not any(m.training for m in bert_ee.modules())
    runner = load_exported(tmp_path / "ee")
    with torch.no_grad():
        for b in budgets:
            bert_ee.set_budget(b)
            runner.set_budget(b)
            torch.testing.assert_close(bert_ee(x), before[b, 1])
            torch.testing.assert_close(runner(x), before[b, 1], atol=1e-5, rtol=1e-5)
    bert_ee.set_budget(bert_ee.full_budget())


def test_ids_only_bert_early_exits_export_with_a_dict_state(tmp_path, bert_ee):
    """One input key: exported on the ids tensor; the state is still a dict."""
    ids = _tokens(12, 9, 5)["input_ids"].clamp_min(5)
    result = export(bert_ee, tmp_path / "ee", ExportConfig(format="torchscript",
                                                           budgets=[MIXED, NEVER]),
                    check_data={"input_ids": ids})
    assert result.check["passed"] and result.manifest["input_key"] == "input_ids"
    assert result.manifest["loop"]["state_inputs"] == ["state_in.hidden", "state_in.mask"]


class _NestedState(StagedModel):
    """A state holding a dict inside its dict: not a flat dict of tensors."""

    feature_kind = "tokens"

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 8)
        self.blocks = nn.ModuleList([_NestedBlock(), _NestedBlock()])
        self.head = nn.Linear(8, 3)

    def embed(self, x: Any) -> Any:
        h = self.proj(x)
        return {"hidden": h, "extra": {"scale": h.new_ones(h.shape[0])}}

    def classify(self, state: Any) -> torch.Tensor:
        return self.head(state["hidden"].mean(1))


class _NestedBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, state: Any) -> Any:
        return {**state, "hidden": torch.relu(self.fc(state["hidden"]))}


def test_a_state_that_is_not_a_flat_dict_of_tensors_is_refused_in_one_line(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(6, 5, 4)
    ee = attach_heads(copy.deepcopy(_NestedState()), [0], example_input=x[:1]).eval()
    with pytest.raises(UserError) as err:
        export(ee, tmp_path / "ee", ExportConfig(format="torchscript"), check_data=x)
    message = str(err.value)
    assert "flat dict of tensors" in message and "after the embedding" in message
    assert "\n" not in message
    assert not (tmp_path / "ee").exists()


@needs_onnx
def test_cli_exports_an_early_exit_run_of_a_hf_text_model(tmp_path):
    """``frugalnn early-exit train`` on a tokenised text file, then ``frugalnn export``."""
    import transformers

    from frugalnn.cli import main

    model_dir = tmp_path / "bert"
    model_dir.mkdir()
    words = ["the", "movie", "is", "good", "great", "bad", "awful"]
    vocab = model_dir / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    transformers.BertTokenizer(str(vocab)).save_pretrained(model_dir)
    tiny_bert(layers=2, labels=2).save_pretrained(model_dir)
    csv_file = tmp_path / "reviews.csv"
    rows = ["the movie is good,pos", "the movie is awful,neg", "great,pos", "bad bad,neg",
            "the movie,pos", "awful movie,neg"]
    csv_file.write_text("text,label\n" + "\n".join(rows) + "\n")
    run = tmp_path / "run"
    data = ["--data", "textfile", "--data-dir", str(csv_file), "--val-fraction", "0"]
    assert main(["early-exit", "train", "--model", f"hf:{model_dir}", *data, "--epochs", "1",
                 "--budgets", "0", "1", "--latency-batch-sizes", "none", "--no-progress",
                 "--threads", "1", "--out", str(run)]) == 0
    assert main(["export", str(run), "--format", "onnx", "--data-dir", str(csv_file),
                 "--check-limit", "6"]) == 0
    out = run / "export" / "onnx"
    check = json.loads((out / CHECK).read_text())
    assert check["passed"] and check["match"] == 1.0 and check["examples"] == 6
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["kind"] == "early_exit"
    assert [i["name"] for i in manifest["inputs"]] == ["input_ids", "token_type_ids",
                                                      "attention_mask"]
    assert manifest["loop"]["state_inputs"] == ["state_in.hidden", "state_in.mask"]
