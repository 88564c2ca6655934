"""Raw text datasets -> hashed feature tensors (for training, evaluation and timing).

:class:`HashedText` holds the ragged character n-gram hashes of labelled sentences;
:class:`HashedTokens` the token features of tagged sentences, with the gold previous tags
as two more groups (teacher forcing). Both accept the loaders' datasets or ``Subset`` s of
them (as :func:`frugalnn.data.splits.load_splits` returns).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from frugalnn.errors import UserError
from frugalnn.methods.text.features import char_ngrams, pad_ragged, token_features

__all__ = ["HashedText", "HashedTokens", "labelled_texts", "tagged_sentences"]


def _unwrap(ds: Any) -> tuple[Any, list[int] | None]:
    """The base dataset under ``Subset`` s and the indices into it (``None``: all)."""
    idx: list[int] | None = None
    while hasattr(ds, "dataset") and hasattr(ds, "indices"):
        inner = [int(i) for i in ds.indices]
        idx = inner if idx is None else [inner[i] for i in idx]
        ds = ds.dataset
    return ds, idx


def labelled_texts(ds: Any) -> tuple[list[str], np.ndarray, list[str]]:
    """``(texts, labels, classes)`` of a labelled-text dataset (or a Subset of one)."""
    base, idx = _unwrap(ds)
    if not hasattr(base, "texts"):
        raise UserError(f"expected labelled sentences (e.g. --data langid), got "
                        f"{type(base).__name__}")
    texts, labels = base.texts, np.asarray(base.labels)
    if idx is not None:
        texts, labels = [texts[i] for i in idx], labels[idx]
    return list(texts), labels, list(base.classes)


def tagged_sentences(ds: Any) -> list[Any]:
    """The sentences of a tagged dataset (or a Subset of one)."""
    base, idx = _unwrap(ds)
    if not hasattr(base, "sentences"):
        raise UserError(f"expected tagged sentences (e.g. --data pos-turkish), got "
                        f"{type(base).__name__}")
    return list(base.sentences) if idx is None else [base.sentences[i] for i in idx]


class HashedText(Dataset):
    """Hashed character n-grams of labelled sentences; items ``(LongTensor[G, K], label)``
    padded with -1 to ``K = max_chars + 2`` (the most n-grams a sentence can have)."""

    def __init__(self, texts: Sequence[str], labels: Sequence[int] | np.ndarray,
                 orders: Sequence[int], max_chars: int) -> None:
        self.groups = char_ngrams(texts, orders, max_chars)
        self.labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)
        self.width = max_chars + 2

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return pad_ragged(self.groups, np.array([i]), self.width)[0], self.labels[i]

    def batch(self, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows ``rows`` padded to their longest row (faster than item by item)."""
        return pad_ragged(self.groups, rows), self.labels[torch.as_tensor(rows)]


class HashedTokens:
    """Token features of tagged sentences plus the previous tags as two groups.

    ``tags`` maps tag names to indices (from the training sentences); a tag it lacks
    is -1 (never predicted, so always counted wrong). The previous-tag groups hold index
    ``len(tags)`` at the start of a sentence.
    """

    def __init__(self, sentences: Sequence[Any], tags: dict[str, int], column: str, *,
                 window: int, affixes: Sequence[int], orders: Sequence[int],
                 prev_tags: int) -> None:
        words = [s.words for s in sentences]
        self.groups, self.sentence = token_features(words, window=window, affixes=affixes,
                                                    orders=orders)
        gold = [t for s in sentences for t in getattr(s, column)]
        self.labels = np.array([tags.get(t, -1) for t in gold], dtype=np.int64)
        self.start = len(tags)
        self.prev_tags = prev_tags
        n = len(self.labels)
        self.position = np.arange(n) - np.repeat(
            np.concatenate([[0], np.cumsum([len(w) for w in words])[:-1]]).astype(np.int64),
            [len(w) for w in words])
        prev = []
        for k in range(1, prev_tags + 1):
            shifted = np.full(n, self.start, dtype=np.int64)
            shifted[k:] = self.labels[:-k] if n > k else shifted[k:]
            shifted[self.position < k] = self.start
            prev.append(np.where(shifted < 0, self.start, shifted))
        self.prev = prev

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, rows: np.ndarray, prev: Sequence[np.ndarray] | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """Features of tokens ``rows`` with previous tags ``prev`` (default: the gold ones)."""
        rows = np.asarray(rows, dtype=np.int64)
        one = np.arange(len(rows) + 1, dtype=np.int64)
        prev = [p[rows] for p in self.prev] if prev is None else list(prev)
        x = pad_ragged([(v, o) for v, o in self.groups], rows)
        extra = torch.full((len(rows), len(prev), x.shape[2]), -1, dtype=torch.long)
        for k, p in enumerate(prev):
            extra[:, k] = pad_ragged([(np.asarray(p, dtype=np.int64), one)],
                                     np.arange(len(rows)), x.shape[2])[:, 0]
        return torch.cat([x, extra], dim=1), torch.from_numpy(self.labels[rows])
