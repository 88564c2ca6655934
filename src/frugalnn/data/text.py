"""Text corpora as fixed-length token windows for language modelling.

A corpus is read once, mapped to integer ids with a vocabulary taken from the
text itself, and cut into windows of ``context + 1`` tokens; each window gives
``(x, y) = (tokens[:-1], tokens[1:])``, the next-token targets.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from frugalnn.data.base import DatasetInfo, subset_rows
from frugalnn.errors import UserError


class TokenWindows(Dataset):
    """Windows of ``context + 1`` tokens taken every ``stride`` tokens from one id stream."""

    def __init__(
        self,
        ids: np.ndarray,
        context: int,
        vocab: list[str],
        stride: int | None = None,
        limit: int | None = None,
        description: str = "",
    ) -> None:
        if context < 1:
            raise UserError(f"context must be a positive number of tokens, got {context}")
        stride = context if stride is None else stride
        if stride < 1:
            raise UserError(f"stride must be positive, got {stride}")
        if len(ids) < context + 1:
            raise UserError(
                f"text of {len(ids)} tokens is shorter than context + 1 = {context + 1}"
            )
        self.ids = torch.from_numpy(np.asarray(ids, dtype=np.int64))
        self.context, self.stride, self.vocab = context, stride, vocab
        n = (len(ids) - context - 1) // stride + 1
        self.starts = np.arange(n)[subset_rows(n, limit)] * stride
        self.info = DatasetInfo(len(vocab), (context,), "lm", "long", description)

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        s = int(self.starts[i])
        w = self.ids[s : s + self.context + 1]
        return w[:-1], w[1:]

    def decode(self, ids: torch.Tensor | list[int]) -> str:
        """Ids back to text (characters joined, words joined by spaces)."""
        toks = [self.vocab[int(i)] for i in ids]
        return "".join(toks) if all(len(t) == 1 for t in self.vocab) else " ".join(toks)


def _read_text(path: Path, layout: str) -> str:
    if not path.is_file():
        raise UserError(f"{path} not found; {layout}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read {path} as UTF-8 text ({exc}); {layout}") from None
    if not text.strip():
        raise UserError(f"{path} is empty; {layout}")
    return text


def _find_file(data_dir: Path, rels: tuple[str, ...], name: str, layout: str) -> Path:
    for rel in rels:
        if (data_dir / rel / name).is_file():
            return data_dir / rel / name
    raise UserError(f"{name} not found under {data_dir}; {layout}")


_SHAKESPEARE_LAYOUT = "expected <data-dir>/text/tinyshakespeare/input.txt (plain text)"


def load_tinyshakespeare(
    data_dir: Path,
    split: str,
    context: int = 128,
    stride: int | None = None,
    limit: int | None = None,
) -> TokenWindows:
    """Character-level tiny-shakespeare: vocabulary = sorted characters; 90 % train, 10 % val."""
    if split not in ("train", "val", "test"):
        raise UserError(f"tinyshakespeare has splits train and val (test = val); got {split!r}")
    path = _find_file(
        data_dir,
        ("text/tinyshakespeare", "tinyshakespeare", "."),
        "input.txt",
        _SHAKESPEARE_LAYOUT,
    )
    text = _read_text(path, _SHAKESPEARE_LAYOUT)
    vocab = sorted(set(text))
    lookup = {c: i for i, c in enumerate(vocab)}
    ids = np.fromiter((lookup[c] for c in text), dtype=np.int64, count=len(text))
    cut = int(0.9 * len(ids))
    part = ids[:cut] if split == "train" else ids[cut:]
    return TokenWindows(part, context, vocab, stride, limit, "tiny-shakespeare characters")


_WIKITEXT_LAYOUT = "expected <data-dir>/text/wikitext-2/{valid,test}.txt (tokenised WikiText-2)"


def _words(text: str) -> list[str]:
    # One <eos> per line, as the usual WikiText word-level setup does.
    out: list[str] = []
    for line in text.splitlines():
        out.extend(line.split())
        out.append("<eos>")
    return out


def load_wikitext2(
    data_dir: Path,
    split: str,
    context: int = 64,
    stride: int | None = None,
    limit: int | None = None,
) -> TokenWindows:
    """Word-level WikiText-2 on its valid/test files (the train split is not available).

    The vocabulary is the sorted union of words in both files, so the two splits
    share ids.
    """
    split = {"val": "valid"}.get(split, split)
    if split == "train":
        raise UserError(
            "wikitext2 has no train split here (only valid.txt and test.txt); "
            "use split 'valid' or 'test'"
        )
    if split not in ("valid", "test"):
        raise UserError(f"wikitext2 has splits valid and test; got {split!r}")
    rels = ("text/wikitext-2", "wikitext-2", ".")
    words = {
        s: _words(
            _read_text(_find_file(data_dir, rels, f"{s}.txt", _WIKITEXT_LAYOUT), _WIKITEXT_LAYOUT)
        )
        for s in ("valid", "test")
    }
    vocab = sorted(set(words["valid"]) | set(words["test"]))
    lookup = {w: i for i, w in enumerate(vocab)}
    ids = np.array([lookup[w] for w in words[split]], dtype=np.int64)
    return TokenWindows(ids, context, vocab, stride, limit, "WikiText-2 words")
