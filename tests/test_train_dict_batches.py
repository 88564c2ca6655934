"""Training on Hugging Face dict batches: ``frugalnn.fit`` and ``frugalnn train``.

A dict batch holding ``"labels"`` reaches the model as keyword arguments; a model
that takes ``labels`` (Hugging Face) is trained on its own loss, so a causal LM
shifts its targets itself.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

import frugalnn
from frugalnn.cli import main
from frugalnn.errors import UserError
from frugalnn.train.checkpoint import load_model
from frugalnn.train.distill import DistillConfig, frozen_copy
from frugalnn.train.loop import _forward_loss

transformers = pytest.importorskip("transformers")

WORDS = ["the", "movie", "is", "good", "great", "fine", "bad", "awful", "boring"]


def _bert(num_labels: int = 2, vocab: int = 14) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=2, intermediate_size=64,
                                  max_position_embeddings=32, num_labels=num_labels)
    return transformers.BertForSequenceClassification(cfg)


class _Reviews(Dataset):
    """Token ids whose label is whether a "positive" token (id 5..7) occurs."""

    def __init__(self, n: int = 16) -> None:
        g = torch.Generator().manual_seed(0)
        self.labels = torch.arange(n) % 2
        words = torch.where(self.labels[:, None] == 1, torch.randint(5, 8, (n, 3), generator=g),
                            torch.randint(8, 11, (n, 3), generator=g))
        self.ids = torch.cat([torch.full((n, 1), 2), words, torch.full((n, 1), 3)], 1)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "attention_mask": torch.ones_like(self.ids[i]),
                "labels": self.labels[i]}


def test_dict_batches_train_on_the_models_own_loss() -> None:
    model = _bert().eval()
    batch = next(iter(DataLoader(_Reviews(8), batch_size=8)))
    loss, logits = _forward_loss(model, batch, None, 0.0)
    with torch.no_grad():
        want = model(**batch)
    torch.testing.assert_close(loss, want.loss)
    torch.testing.assert_close(logits, want.logits)
    assert torch.allclose(loss, torch.nn.functional.cross_entropy(logits, batch["labels"]))
    # Label smoothing is frugalnn's cross-entropy on the logits.
    smooth, _ = _forward_loss(model, batch, None, 0.1)
    want_smooth = torch.nn.functional.cross_entropy(want.logits, batch["labels"],
                                                    label_smoothing=0.1)
    torch.testing.assert_close(smooth, want_smooth)
    with pytest.raises(UserError, match='dicts holding "labels"'):
        _forward_loss(model, {"input_ids": batch["input_ids"]}, None, 0.0)


def test_causal_lm_dict_batches_shift_inside_the_model() -> None:
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=40, hidden_size=32, intermediate_size=64,
                                   num_hidden_layers=1, num_attention_heads=2,
                                   num_key_value_heads=2)
    lm = transformers.LlamaForCausalLM(cfg).eval()
    ids = torch.randint(0, 40, (2, 9))
    loss, logits = _forward_loss(lm, {"input_ids": ids, "labels": ids}, None, 0.0)
    shifted = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 40),
                                                ids[:, 1:].reshape(-1))
    torch.testing.assert_close(loss, shifted)


def test_fit_on_dict_batches_lowers_the_loss_and_distils() -> None:
    data = _Reviews(16)
    model = _bert()
    result = frugalnn.fit(model, DataLoader(data, batch_size=8, shuffle=True), epochs=5,
                          optimizer="adamw", lr=3e-3, schedule="none", progress=False,
                          eval_loader=DataLoader(data, batch_size=16))
    losses = [row["eval_loss"] for row in result.history]
    assert losses[-1] < losses[0] - 0.05, losses
    assert "train_acc" in result.history[-1]
    # Distillation: the teacher is called on the batch's inputs (keywords, no labels).
    student = _bert()
    out = frugalnn.fit(student, DataLoader(data, batch_size=8), epochs=1, optimizer="adamw",
                       lr=1e-3, progress=False, teacher=frozen_copy(model),
                       distill=DistillConfig(alpha=0.5))
    assert torch.isfinite(torch.tensor(out.history[-1]["train_loss"]))


@pytest.fixture
def bert_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "bert"
    directory.mkdir()
    (directory / "vocab.txt").write_text(
        "\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    transformers.BertTokenizer(str(directory / "vocab.txt")).save_pretrained(directory)
    _bert().save_pretrained(directory)
    return directory


def test_cli_trains_an_hf_directory_on_a_tokenised_csv(bert_dir: Path, tmp_path: Path) -> None:
    rng = random.Random(0)
    rows = []
    for i in range(32):
        pos = i % 2 == 0
        words = rng.sample(["good", "great", "fine"] if pos else ["bad", "awful", "boring"], 2)
        rows.append((" ".join(["the", "movie", "is", *words]), "pos" if pos else "neg"))
    csv_file = tmp_path / "reviews.csv"
    csv_file.write_text("text,label\n" + "".join(f"{t},{label}\n" for t, label in rows))
    out = tmp_path / "run"
    assert main(["train", "--model", f"hf:{bert_dir}", "--data",
                 f"textfile:tokenizer={bert_dir}", "--data-dir", str(csv_file),
                 "--epochs", "6", "--batch-size", "8", "--optimizer", "adamw", "--lr", "3e-3",
                 "--schedule", "none", "--weight-decay", "0", "--val-fraction", "0",
                 "--threads", "1", "--no-progress", "--out", str(out)]) == 0
    history = json.loads((out / "train_history.json").read_text())
    assert history[-1]["eval_loss"] < history[0]["eval_loss"] - 0.1, history
    assert history[-1]["eval_acc"] == 1.0
    # The named tokenizer is capped at the model's positions, and the run records it.
    config = json.loads((out / "config.json").read_text())
    assert config["options"]["data"] == f"textfile:tokenizer={bert_dir},max_length=32"
    trained = load_model(out / "checkpoint")
    assert type(trained) is transformers.BertForSequenceClassification


def test_a_loss_function_may_return_the_models_output_object() -> None:
    # A custom loss_fn (MoE's routed fine-tune) can hand back a Hugging Face output
    # object instead of logits: training goes on and scores its logits.
    from transformers.modeling_outputs import CausalLMOutputWithPast

    from frugalnn.train.loop import _accuracy_counts

    logits = torch.tensor([[[0.0, 2.0], [3.0, 0.0]]])
    out = CausalLMOutputWithPast(logits=logits)
    assert _accuracy_counts(out, (torch.zeros(1, 2), torch.tensor([[1, 1]]))) == (1.0, 2.0)
    assert _accuracy_counts(object(), (torch.zeros(1, 2), torch.tensor([[1, 1]]))) == (0.0, 0.0)
