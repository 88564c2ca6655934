"""Large reference models for the budgeted text models: what the budget is measured against.

* :class:`CharCNN`: a character CNN language identifier (code points bucketed into a
  table, convolutions of several widths, max over time, linear output), the reference for
  ``langid``;
* :class:`BiLSTMTagger`: a BiLSTM POS tagger over word embeddings (training vocabulary)
  concatenated with a character CNN of each word, the reference for ``pos``.

:func:`train_reference` trains either on the same splits as :func:`.recipe.ngram` (the
epoch kept is the one with the best *validation* accuracy) and returns a
:class:`Reference` with ``accuracy(data)``, ``predict`` and the exact float32 bytes.
Sizes are set by :class:`ReferenceConfig`; the defaults keep one training to a few
minutes on one thread (see ``docs/text.md`` for the figures).
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from frugalnn.errors import UserError
from frugalnn.methods.text.data import labelled_texts, tagged_sentences
from frugalnn.methods.text.features import normalise

__all__ = ["BiLSTMTagger", "CharCNN", "Reference", "ReferenceConfig", "char_ids",
           "train_reference"]


@dataclass
class ReferenceConfig:
    """Sizes and training of a reference model (``task``: ``langid`` or ``pos``)."""

    task: str = "langid"
    epochs: int = 4
    lr: float = 2e-3
    batch_size: int = 64
    seed: int = 0
    char_buckets: int = 4096  # code points bucketed modulo this (0 = padding)
    char_dim: int = 32
    max_chars: int = 256  # characters read per sentence (langid)
    widths: Sequence[int] = (2, 3, 4)  # langid convolution widths
    channels: int = 256  # langid channels per width
    word_dim: int = 64  # pos
    word_chars: int = 16  # characters read per word (pos)
    char_channels: int = 32  # pos character CNN
    hidden: int = 64  # pos LSTM units per direction
    dropout: float = 0.2
    tag_column: str = "upos"
    vocab: list[str] = field(default_factory=list)  # filled by training (pos)

    def validate(self) -> ReferenceConfig:
        if self.task not in ("langid", "pos"):
            raise UserError(f"unknown text task {self.task!r}; use langid or pos")
        for name in ("epochs", "batch_size", "char_buckets", "char_dim", "max_chars",
                     "channels", "word_dim", "word_chars", "char_channels", "hidden"):
            if getattr(self, name) < 1:
                raise UserError(f"{name.replace('_', '-')} must be positive, got "
                                f"{getattr(self, name)}")
        return self

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["widths"] = list(self.widths)
        out.pop("vocab")
        return out


def char_ids(texts: Sequence[str | bytes], length: int, buckets: int) -> torch.Tensor:
    """``[len(texts), length]`` bucketed code points of the lower-cased text (0 = padding)."""
    out = np.zeros((len(texts), length), dtype=np.int64)
    for i, t in enumerate(texts):
        cps = np.frombuffer(normalise(t)[:length].encode("utf-32-le"), dtype=np.uint32)
        out[i, :len(cps)] = cps.astype(np.int64) % (buckets - 1) + 1
    return torch.from_numpy(out)


class CharCNN(nn.Module):
    """Characters -> embeddings -> Conv1d of each width (ReLU, max over time) -> linear."""

    def __init__(self, buckets: int, dim: int, widths: Sequence[int], channels: int,
                 num_classes: int, dropout: float = 0.2) -> None:
        super().__init__()
        self.emb = nn.Embedding(buckets, dim, padding_idx=0)
        self.convs = nn.ModuleList(nn.Conv1d(dim, channels, w, padding=w - 1) for w in widths)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(channels * len(widths), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.emb(x).transpose(1, 2)  # [B, dim, L]
        pooled = [torch.relu(c(h)).amax(2) for c in self.convs]
        return self.out(self.drop(torch.cat(pooled, 1)))


class BiLSTMTagger(nn.Module):
    """Per token: word embedding ++ character CNN of the word -> BiLSTM -> linear."""

    def __init__(self, vocab: int, word_dim: int, buckets: int, char_dim: int,
                 char_channels: int, hidden: int, num_tags: int, dropout: float = 0.2) -> None:
        super().__init__()
        self.words = nn.Embedding(vocab, word_dim, padding_idx=0)
        self.chars = nn.Embedding(buckets, char_dim, padding_idx=0)
        self.conv = nn.Conv1d(char_dim, char_channels, 3, padding=1)
        self.lstm = nn.LSTM(word_dim + char_channels, hidden, batch_first=True,
                            bidirectional=True)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(2 * hidden, num_tags)

    def forward(self, words: torch.Tensor, chars: torch.Tensor) -> torch.Tensor:
        """``words [B, T]``, ``chars [B, T, L]`` -> logits ``[B, T, tags]``."""
        b, t, length = chars.shape
        c = self.chars(chars.reshape(b * t, length)).transpose(1, 2)
        c = torch.relu(self.conv(c)).amax(2).view(b, t, -1)
        h, _ = self.lstm(self.drop(torch.cat([self.words(words), c], 2)))
        return self.out(self.drop(h))


@dataclass
class Reference:
    """A trained reference model with its config, classes and training history."""

    net: nn.Module
    config: ReferenceConfig
    classes: list[str]
    history: list[dict[str, float]] = field(default_factory=list)
    chosen_epoch: int = 0

    def nbytes(self) -> int:
        """Exact float32 bytes of the parameters."""
        return 4 * sum(p.numel() for p in self.net.parameters())

    def encode(self, data: Any) -> _Encoded:
        """Tensors of a dataset (labels of classes the model lacks are -1)."""
        return _encode(self.config, data, self.classes)

    @torch.no_grad()
    def predictions(self, enc: _Encoded) -> np.ndarray:
        """Predicted class per sentence (langid) or per real token (pos), in order."""
        self.net.eval()
        preds = []
        for rows in _chunks(len(enc), 256):
            logits = enc.logits(self.net, rows)
            preds.append(logits.argmax(-1)[enc.mask(rows)].numpy())
        return np.concatenate(preds) if preds else np.zeros(0, dtype=np.int64)

    def accuracy(self, data: Any) -> float:
        """Sentence accuracy (langid) or token accuracy (pos) on ``data``."""
        enc = data if isinstance(data, _Encoded) else self.encode(data)
        gold = enc.gold()
        return float(np.mean(self.predictions(enc) == gold)) if len(gold) else 0.0

    def tag(self, sentences: Sequence[Sequence[str]]) -> list[list[str]]:
        """The tags of tokenised sentences (pos)."""
        from frugalnn.data.conllu import Sentence

        if self.config.task != "pos":
            raise UserError("tag() tags tokens; this is a sentence classifier")
        sents = [Sentence(list(s), ["_"] * len(s), ["_"] * len(s)) for s in sentences]
        if not any(s.words for s in sents):
            return [[] for _ in sents]
        flat = [self.classes[int(i)] for i in self.predictions(_encode(self.config, sents,
                                                                       self.classes))]
        out, start = [], 0
        for s in sents:
            out.append(flat[start:start + len(s.words)])
            start += len(s.words)
        return out

    def predict(self, texts: Sequence[str | bytes]) -> list[str]:
        """The language of each raw sentence (langid)."""
        if self.config.task != "langid":
            raise UserError("predict() classifies sentences; this is a tagger")
        enc = _Encoded(char_ids(texts, self.config.max_chars, self.config.char_buckets),
                       torch.zeros(len(texts), dtype=torch.long))
        return [self.classes[int(i)] for i in self.predictions(enc)]


class _Encoded:
    """Sentences as tensors: ``x`` ``[N, L]`` (langid) or ``(words, chars)`` (pos), ``y``."""

    def __init__(self, x: Any, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def logits(self, net: nn.Module, rows: np.ndarray) -> torch.Tensor:
        idx = torch.as_tensor(rows)
        if isinstance(self.x, tuple):
            words, chars = self.x[0][idx], self.x[1][idx]
            t = int((words != 0).sum(1).max()) if len(rows) else 0
            return net(words[:, :t], chars[:, :t])
        return net(self.x[idx])

    def targets(self, rows: np.ndarray) -> torch.Tensor:
        y = self.y[torch.as_tensor(rows)]
        if isinstance(self.x, tuple):
            t = int((self.x[0][torch.as_tensor(rows)] != 0).sum(1).max()) if len(rows) else 0
            return y[:, :t]
        return y

    def mask(self, rows: np.ndarray) -> torch.Tensor:
        """Which outputs are real (tokens of the sentence; every sentence for langid)."""
        if isinstance(self.x, tuple):
            words = self.x[0][torch.as_tensor(rows)]
            return (words != 0)[:, :int((words != 0).sum(1).max())]
        return torch.ones(len(rows), dtype=torch.bool)

    def gold(self) -> np.ndarray:
        if isinstance(self.x, tuple):
            return self.y[self.x[0] != 0].numpy()
        return self.y.numpy()


def _chunks(n: int, size: int, rng: np.random.Generator | None = None) -> list[np.ndarray]:
    order = rng.permutation(n) if rng is not None else np.arange(n)
    return [order[i:i + size] for i in range(0, n, size)]


def _encode(cfg: ReferenceConfig, data: Any, classes: Sequence[str]) -> _Encoded:
    index = {c: i for i, c in enumerate(classes)}
    if cfg.task == "langid":
        texts, labels, names = labelled_texts(data)
        y = torch.tensor([index.get(names[int(v)], -1) for v in labels], dtype=torch.long)
        return _Encoded(char_ids(texts, cfg.max_chars, cfg.char_buckets), y)
    sents = data if isinstance(data, list) else tagged_sentences(data)
    vocab = {w: i + 2 for i, w in enumerate(cfg.vocab)}  # 0 = padding, 1 = unknown
    t = max((len(s.words) for s in sents), default=1)
    words = torch.zeros(len(sents), t, dtype=torch.long)
    chars = torch.zeros(len(sents), t, cfg.word_chars, dtype=torch.long)
    y = torch.full((len(sents), t), -1, dtype=torch.long)
    for i, s in enumerate(sents):
        n = len(s.words)
        words[i, :n] = torch.tensor([vocab.get(normalise(w), 1) for w in s.words])
        chars[i, :n] = char_ids(s.words, cfg.word_chars, cfg.char_buckets)
        y[i, :n] = torch.tensor([index.get(g, -1) for g in getattr(s, cfg.tag_column)])
    return _Encoded((words, chars), y)


def _build(cfg: ReferenceConfig, num_classes: int) -> nn.Module:
    if cfg.task == "langid":
        return CharCNN(cfg.char_buckets, cfg.char_dim, cfg.widths, cfg.channels, num_classes,
                       cfg.dropout)
    return BiLSTMTagger(len(cfg.vocab) + 2, cfg.word_dim, cfg.char_buckets, cfg.char_dim,
                        cfg.char_channels, cfg.hidden, num_classes, cfg.dropout)


def train_reference(train_data: Any, config: ReferenceConfig | None = None, *,
                    val_data: Any = None, progress: bool = False) -> Reference:
    """Train the reference of ``config.task`` on ``train_data``; with ``val_data`` the epoch
    with the best validation accuracy is kept (``chosen_epoch``)."""
    cfg = copy.deepcopy(config or ReferenceConfig()).validate()
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    if cfg.task == "langid":
        classes = labelled_texts(train_data)[2]
    else:
        sents = tagged_sentences(train_data)
        classes = sorted({t for s in sents for t in getattr(s, cfg.tag_column)})
        counts = Counter(normalise(w) for s in sents for w in s.words)
        cfg.vocab = sorted(counts)
    train = _encode(cfg, train_data, classes)
    if len(train) == 0:
        raise UserError("no training examples")
    val = _encode(cfg, val_data, classes) if val_data is not None else None
    net = _build(cfg, len(classes))
    ref = Reference(net, cfg, list(classes))
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    loss_fn = nn.CrossEntropyLoss(ignore_index=-1)
    best, best_state = -1.0, None
    for epoch in range(1, cfg.epochs + 1):
        net.train()
        total = 0.0
        for rows in _chunks(len(train), cfg.batch_size, rng):
            logits = train.logits(net, rows)
            loss = loss_fn(logits.reshape(-1, logits.shape[-1]), train.targets(rows).reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(rows)
        row = {"epoch": epoch, "train_loss": total / len(train)}
        if val is not None:
            row["val_accuracy"] = ref.accuracy(val)
            if row["val_accuracy"] > best:
                best, best_state = row["val_accuracy"], copy.deepcopy(net.state_dict())
                ref.chosen_epoch = epoch
        ref.history.append(row)
        if progress:
            print(f"  epoch {epoch}: " + ", ".join(f"{k} {v:.4f}" for k, v in row.items()
                                                   if k != "epoch"), flush=True)
    if best_state is not None:
        net.load_state_dict(best_state)
    else:
        ref.chosen_epoch = cfg.epochs
    net.eval()
    return ref
