"""Tagged sentences from CoNLL-U files (gzip or plain), for part-of-speech tagging.

Each sentence is its word forms with the universal tags (column 4, UPOS) and the fine
tags (column 5, XPOS). Comment lines (``#``), multiword-token ranges (``1-2``) and empty
nodes (``1.1``) are skipped, as CoNLL-U prescribes for word-level tagging; a line that
does not have 10 tab-separated columns, or bytes that are not UTF-8, is an error naming
the file and the line.

``pos-turkish`` (``<data-dir>/text/pos-turkish-ud/web.conllu.gz``, the Turkish Web
Treebank) has no official split: ``test`` is a fixed 20 % of its sentences drawn with
seed 2017, ``train`` the rest (validation is carved from ``train`` by ``load_splits``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from frugalnn.data.base import DatasetInfo, read_file_bytes, subset_rows
from frugalnn.errors import UserError

__all__ = ["POS_INFO", "TaggedSentences", "load_pos_turkish", "read_conllu"]

POS_INFO = DatasetInfo(None, (), "tagging", "text", "Turkish Web Treebank (CoNLL-U), POS tags")
_LAYOUT = "expected <data-dir>/text/pos-turkish-ud/web.conllu.gz (CoNLL-U)"
#: Fraction of the sentences of the web treebank held out as the test split, and its seed.
TEST_FRACTION, TEST_SEED = 0.2, 2017


@dataclass
class Sentence:
    words: list[str]
    upos: list[str]
    xpos: list[str]


class TaggedSentences(Dataset):
    """Sentences; an item is ``(words, upos, xpos)`` (lists of strings)."""

    def __init__(self, sentences: list[Sentence], description: str = "") -> None:
        self.sentences = sentences
        self.info = POS_INFO if not description else DatasetInfo(
            None, (), "tagging", "text", description)

    def __len__(self) -> int:
        return len(self.sentences)

    def __getitem__(self, i: int) -> tuple[list[str], list[str], list[str]]:
        s = self.sentences[i]
        return s.words, s.upos, s.xpos


def read_conllu(path: Path) -> list[Sentence]:
    """The sentences of one CoNLL-U file."""
    if not path.is_file():
        raise UserError(f"{path} not found; {_LAYOUT}")
    raw = read_file_bytes(path, _LAYOUT)  # a damaged gzip stream is one UserError line
    sentences: list[Sentence] = []
    cur = Sentence([], [], [])
    for n, line in enumerate(raw.split(b"\n"), start=1):
        try:
            text = line.rstrip(b"\r").decode("utf-8")
        except UnicodeDecodeError as exc:
            raise UserError(f"{path}:{n}: not UTF-8 text ({exc.reason} at byte "
                            f"{exc.start})") from None
        if not text.strip():
            if cur.words:
                sentences.append(cur)
            cur = Sentence([], [], [])
            continue
        if text.startswith("#"):
            continue
        cols = text.split("\t")
        if len(cols) != 10:
            raise UserError(f"{path}:{n}: expected 10 tab-separated CoNLL-U columns, got "
                            f"{len(cols)}")
        if "-" in cols[0] or "." in cols[0]:
            continue  # multiword-token range or empty node
        if not cols[0].isdigit() or not cols[1] or not cols[3]:
            raise UserError(f"{path}:{n}: bad token line (id {cols[0]!r}, form {cols[1]!r}, "
                            f"upos {cols[3]!r})")
        cur.words.append(cols[1])
        cur.upos.append(cols[3])
        cur.xpos.append(cols[4])
    if cur.words:
        sentences.append(cur)
    if not sentences:
        raise UserError(f"{path} holds no sentences; {_LAYOUT}")
    return sentences


def _find(data_dir: Path, name: str) -> Path:
    for rel in ("text/pos-turkish-ud", "pos-turkish-ud", "."):
        if (data_dir / rel / name).is_file():
            return data_dir / rel / name
    raise UserError(f"{name} not found under {data_dir}; {_LAYOUT}")


def load_pos_turkish(data_dir: Path, split: str, limit: int | None = None,
                     source: str = "web") -> TaggedSentences:
    """Split ``train`` or ``test`` of the web treebank (``source="wiki"``: the whole wiki
    treebank as extra training data, for ``split="train"`` only)."""
    if split not in ("train", "test"):
        raise UserError(f"pos-turkish has splits train and test; got {split!r}")
    if source not in ("web", "wiki"):
        raise UserError(f"pos-turkish source must be web or wiki, got {source!r}")
    sentences = read_conllu(_find(data_dir, f"{source}.conllu.gz"))
    if source == "web":
        perm = np.random.default_rng(TEST_SEED).permutation(len(sentences))
        k = int(round(TEST_FRACTION * len(sentences)))
        keep = np.sort(perm[:k] if split == "test" else perm[k:])
        sentences = [sentences[int(i)] for i in keep]
    elif split == "test":
        raise UserError("the wiki treebank is extra training data; test on source web")
    rows = subset_rows(len(sentences), limit)
    sentences = sentences[rows] if isinstance(rows, slice) else [sentences[int(i)] for i in rows]
    return TaggedSentences(sentences, f"pos-turkish {source} {split}: {len(sentences)} sentences")
