"""Labelled sentences from a gzip (or plain) TSV file: ``label<TAB>sentence`` per line.

Used for language identification (``<data-dir>/text/langid-manpages/{train,test}.tsv.gz``).
The label set is the one of the *training* file, sorted; a test line whose label the
training file does not have is skipped and counted in ``dataset.skipped_labels`` (the
model cannot predict it). Empty lines are skipped; a line without a tab, with an empty
label, or with bytes that are not UTF-8 is an error naming the file and the line.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import torch
from torch.utils.data import Dataset

from frugalnn.data.base import DatasetInfo, read_file_bytes, subset_rows
from frugalnn.errors import UserError

__all__ = ["LANGID_INFO", "LabelledText", "load_langid", "read_tsv"]

LANGID_INFO = DatasetInfo(None, (), "classification", "text",
                          "language identification: label<TAB>sentence (gzip TSV)")
_LAYOUT = "expected <data-dir>/text/langid-manpages/{train,test}.tsv.gz (label<TAB>sentence)"


class LabelledText(Dataset):
    """Raw sentences with integer labels; items are ``(sentence, label_index)``."""

    def __init__(self, texts: Sequence[str], labels: Sequence[int], classes: Sequence[str],
                 description: str = "", skipped_labels: dict[str, int] | None = None) -> None:
        if len(texts) != len(labels):
            raise ValueError("texts and labels differ in length")
        self.texts = list(texts)
        self.labels = torch.as_tensor(list(labels), dtype=torch.long)
        self.classes = list(classes)
        self.skipped_labels = dict(skipped_labels or {})
        self.info = DatasetInfo(len(self.classes), (), "classification", "text", description)

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, i: int) -> tuple[str, int]:
        return self.texts[i], int(self.labels[i])


def read_tsv(path: Path) -> list[tuple[str, str]]:
    """``(label, sentence)`` pairs of a TSV file (gzip when the name ends in ``.gz``)."""
    if not path.is_file():
        raise UserError(f"{path} not found; {_LAYOUT}")
    raw = read_file_bytes(path, _LAYOUT)  # a damaged gzip stream is one UserError line
    pairs = []
    for n, line in enumerate(raw.split(b"\n"), start=1):
        line = line.rstrip(b"\r")
        if not line.strip():
            continue
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise UserError(f"{path}:{n}: not UTF-8 text ({exc.reason} at byte "
                            f"{exc.start})") from None
        label, tab, sentence = text.partition("\t")
        if not tab or not label.strip():
            raise UserError(f"{path}:{n}: expected label<TAB>sentence, got {text[:60]!r}")
        pairs.append((label.strip(), sentence))
    if not pairs:
        raise UserError(f"{path} holds no labelled sentences; {_LAYOUT}")
    return pairs


def _find(data_dir: Path, split: str) -> Path:
    for rel in ("text/langid-manpages", "langid-manpages", "."):
        for name in (f"{split}.tsv.gz", f"{split}.tsv"):
            if (data_dir / rel / name).is_file():
                return data_dir / rel / name
    raise UserError(f"{split}.tsv.gz not found under {data_dir}; {_LAYOUT}")


def load_langid(data_dir: Path, split: str, limit: int | None = None) -> LabelledText:
    """Split ``train`` or ``test`` of the language-identification TSV files."""
    if split not in ("train", "test"):
        raise UserError(f"langid has splits train and test; got {split!r}")
    train_pairs = read_tsv(_find(data_dir, "train"))
    classes = sorted({label for label, _ in train_pairs})
    pairs = train_pairs if split == "train" else read_tsv(_find(data_dir, split))
    index = {c: i for i, c in enumerate(classes)}
    skipped = Counter(label for label, _ in pairs if label not in index)
    pairs = [(label, s) for label, s in pairs if label in index]
    rows = subset_rows(len(pairs), limit)
    pairs = pairs[rows] if isinstance(rows, slice) else [pairs[int(i)] for i in rows]
    return LabelledText([s for _, s in pairs], [index[label] for label, _ in pairs], classes,
                        f"langid {split}: {len(classes)} languages", dict(skipped))
