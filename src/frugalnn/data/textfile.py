"""Labelled text from the user's own CSV, TSV or JSONL file (dataset ``textfile``).

``data_dir`` is one file, or a directory holding one file per split
(``train.csv``, ``test.jsonl``, ``val.tsv``, ...). One file serves every split,
unless it has a ``split`` column, whose values then pick the rows of each split.
Columns ``text`` and ``label`` by default (``text_column`` / ``label_column``).

Labels that are all integers are class ids; otherwise the sorted label names
become ids ``0..K-1``, the same in every split (all files are read for them), and
``info.classes`` records the names. Items are ``(text, label)`` pairs, or, with a
Hugging Face ``tokenizer`` directory, dicts ``{"input_ids", "attention_mask",
"labels"}`` padded to ``max_length`` tokens (the batch convention of
:mod:`frugalnn.utils.batch`).
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from frugalnn.data.base import DatasetInfo, subset_rows
from frugalnn.errors import UserError

__all__ = ["OPTIONS", "TextFileDataset", "load_textfile"]

SUFFIXES = (".csv", ".tsv", ".jsonl", ".json")
#: Options of :func:`load_textfile` (given to ``get_dataset`` or in ``--data textfile:...``).
OPTIONS = ("text_column", "label_column", "tokenizer", "max_length")
_SPLIT_NAMES = {"val": ("val", "valid", "validation"), "valid": ("valid", "val", "validation"),
                "validation": ("validation", "val", "valid"), "test": ("test",),
                "train": ("train",)}
_LAYOUT = ("expected a .csv/.tsv/.jsonl file with columns text,label, or a directory of "
           "{train,test,val}.csv|.tsv|.jsonl")


def _read_rows(file: Path) -> list[dict[str, Any]]:
    """Rows of a CSV/TSV (header line) or JSON-lines file as dicts."""
    try:
        text = file.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read {file} as UTF-8 text ({exc}); {_LAYOUT}") from None
    if file.suffix in (".jsonl", ".json"):
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UserError(f"{file} line {n} is not JSON ({exc.msg}); {_LAYOUT}") from None
            if not isinstance(row, dict):
                raise UserError(f"{file} line {n} is not a JSON object; {_LAYOUT}")
            rows.append(row)
        return rows
    delimiter = "\t" if file.suffix == ".tsv" else ","
    try:
        return list(csv.DictReader(text.splitlines(), delimiter=delimiter))
    except csv.Error as exc:
        raise UserError(f"{file} is not valid CSV ({exc}); {_LAYOUT}") from None


def _split_files(path: Path) -> dict[str, Path]:
    """``{split stem: file}`` of a directory (or ``{"": path}`` for one file)."""
    if path.is_file():
        if path.suffix not in SUFFIXES:
            raise UserError(f"{path} is not a {'/'.join(SUFFIXES)} file; {_LAYOUT}")
        return {"": path}
    found = {p.stem: p for p in sorted(path.iterdir()) if p.suffix in SUFFIXES}
    if not found:
        raise UserError(f"no {'/'.join(SUFFIXES)} files in {path}; {_LAYOUT}")
    return found


def _label_ids(values: list[Any]) -> tuple[dict[str, int], tuple[str, ...]]:
    """Label text -> id and the class names: integers as they are, else sorted names."""
    texts = [str(v).strip() for v in values]
    if all(t.lstrip("-").isdigit() for t in texts):
        ids = [int(t) for t in texts]
        if min(ids) < 0:
            raise UserError(f"integer labels must be >= 0, got {min(ids)}")
        return {t: int(t) for t in set(texts)}, tuple(str(i) for i in range(max(ids) + 1))
    names = tuple(sorted(set(texts)))
    return {n: i for i, n in enumerate(names)}, names


class TextFileDataset(Dataset):
    """Texts and integer labels; tokenised tensors instead of texts when ``encoded`` is given."""

    def __init__(self, texts: list[str], labels: list[int], info: DatasetInfo,
                 encoded: dict[str, torch.Tensor] | None = None) -> None:
        self.texts = texts
        self.labels = torch.tensor(labels, dtype=torch.long)
        self.info = info
        self.classes = list(info.classes or ())
        self.encoded = encoded

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, i: int) -> Any:
        if self.encoded is None:
            return self.texts[i], self.labels[i]
        item = {k: v[i] for k, v in self.encoded.items()}
        item["labels"] = self.labels[i]
        return item


def _tokenize(tokenizer: str | os.PathLike, texts: list[str], max_length: int
              ) -> dict[str, torch.Tensor]:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    directory = Path(tokenizer).expanduser()
    if not directory.is_dir():
        raise UserError(f"tokenizer {directory} is not a directory; pass a Hugging Face "
                        "model or tokenizer directory (saved with save_pretrained)")
    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - missing files, unknown tokenizer type
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"cannot load a tokenizer from {directory} ({first})") from None
    if tok.pad_token is None:  # decoder LMs ship without one
        tok.pad_token = tok.eos_token
    enc = tok(texts, padding="max_length", truncation=True, max_length=max_length,
              return_tensors="pt")
    return {k: v for k, v in enc.items() if isinstance(v, torch.Tensor)}


def load_textfile(
    path: Path,
    split: str,
    limit: int | None = None,
    *,
    text_column: str = "text",
    label_column: str = "label",
    tokenizer: str | os.PathLike | None = None,
    max_length: int = 128,
) -> TextFileDataset:
    """Split ``split`` of the text file(s) at ``path`` (see the module docstring)."""
    max_length = int(max_length)
    if max_length < 1:
        raise UserError(f"max_length must be positive, got {max_length}")
    files = _split_files(path)
    tables = {stem: _read_rows(file) for stem, file in files.items()}
    for stem, rows in tables.items():
        if not rows:
            raise UserError(f"{files[stem]} holds no rows; {_LAYOUT}")
        have = list(rows[0])
        for column in (text_column, label_column):
            if column not in have:
                option = "text_column" if column == text_column else "label_column"
                raise UserError(f"{files[stem]} has no column {column!r} (columns: "
                                f"{', '.join(map(str, have))}); name it with {option}=...")
    all_rows = [r for rows in tables.values() for r in rows]
    empty = [i for i, r in enumerate(all_rows) if r.get(label_column) in (None, "")]
    if empty:
        raise UserError(f"{len(empty)} row(s) in {path} have no {label_column!r}")
    lookup, classes = _label_ids([r[label_column] for r in all_rows])
    rows = _rows_of(tables, files, split, path)
    rows = [rows[i] for i in _indices(len(rows), limit)]
    texts = [str(r.get(text_column) or "") for r in rows]
    labels = [lookup[str(r[label_column]).strip()] for r in rows]
    encoded = _tokenize(tokenizer, texts, max_length) if tokenizer is not None else None
    info = DatasetInfo(len(classes), (max_length,) if encoded else (), "classification",
                       "long" if encoded else "text", f"text file {path}", classes)
    return TextFileDataset(texts, labels, info, encoded)


def _rows_of(tables: dict[str, list[dict[str, Any]]], files: dict[str, Path], split: str,
             path: Path) -> list[dict[str, Any]]:
    if "" in tables:  # one file: its split column, else every row
        rows = tables[""]
        if "split" not in rows[0]:
            return rows
        names = _SPLIT_NAMES.get(split, (split,))
        picked = [r for r in rows if str(r.get("split")) in names]
        if not picked:
            have = sorted({str(r.get("split")) for r in rows})
            raise UserError(f"{path} has no rows of split {split!r} (its split column holds "
                            f"{', '.join(have)})")
        return picked
    for name in _SPLIT_NAMES.get(split, (split,)):
        if name in tables:
            return tables[name]
    raise UserError(f"{path} has no file for split {split!r} (found "
                    f"{', '.join(str(files[s].name) for s in tables)})")


def _indices(n: int, limit: int | None) -> list[int]:
    rows = subset_rows(n, limit, spread=True)
    return list(range(n))[rows] if isinstance(rows, slice) else [int(i) for i in rows]
