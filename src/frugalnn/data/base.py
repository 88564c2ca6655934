"""Shared pieces of the data layer: dataset descriptions, the data directory,
in-memory array datasets and atomic cache files.

Every loader decodes its source once into arrays held in memory (uint8 images,
integer labels); the datasets below turn one row into the model's input on
access, so that augmentation stays per-example and seeded.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from frugalnn.data.augment import random_crop_flip_one
from frugalnn.errors import UserError


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about a dataset.

    ``input_shape`` is one example's shape (no batch); ``task`` is
    ``"classification"`` or ``"lm"``; for language modelling ``num_classes`` is
    the vocabulary size (``None`` when it depends on a corpus not yet read).
    ``classes`` names class ids ``0..num_classes-1`` where the data names them.
    """

    num_classes: int | None
    input_shape: tuple[int, ...]
    task: str = "classification"
    input_dtype: str = "float"
    description: str = ""
    classes: tuple[str, ...] | None = None


def read_file_bytes(path: Path, layout: str = "") -> bytes:
    """All bytes of ``path``, gunzipped when it ends in ``.gz``; any damage (truncation,
    a corrupted deflate stream, a bad CRC or length) is one ``UserError`` line."""
    import gzip
    import zlib

    try:
        raw = path.read_bytes()
        return gzip.decompress(raw) if path.suffix == ".gz" else raw
    except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError
        hint = f"; {layout}" if layout else ""
        raise UserError(f"cannot read {path}: it is corrupt or truncated ({exc}){hint}") from None


def resolve_data_dir(path: str | os.PathLike | None = None) -> Path:
    """The data directory: ``path`` if given, else ``$FRUGALNN_DATA``, else a UserError."""
    if path is None:
        env = os.environ.get("FRUGALNN_DATA")
        if not env:
            raise UserError(
                "no data directory given; pass --data-dir PATH or set FRUGALNN_DATA "
                "(see docs/data.md for the expected layout)"
            )
        path = env
    p = Path(path).expanduser()
    if not p.exists():
        raise UserError(f"data path {p} does not exist; pass an existing directory or file")
    return p


def cache_dir() -> Path:
    """Where decoded datasets are cached: ``$FRUGALNN_CACHE`` or ``~/.cache/frugalnn``."""
    env = os.environ.get("FRUGALNN_CACHE")
    path = Path(env).expanduser() if env else Path.home() / ".cache" / "frugalnn"
    path.mkdir(parents=True, exist_ok=True)
    return path


def save_npz_atomic(path: Path, **arrays: np.ndarray) -> None:
    """Write an ``.npz`` to a temporary file beside ``path``, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class ImageArrayDataset(Dataset):
    """Images ``(N, C, H, W)`` uint8 (or float) with labels, normalised on access.

    ``augment`` applies a seeded random crop (``pad`` pixels of zero padding) and
    horizontal flip; the randomness of example ``i`` depends only on
    ``(seed, epoch, i)``, so it is reproducible under any loader order or worker
    count. Call :meth:`set_epoch` between epochs to draw new augmentations.
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        info: DatasetInfo,
        *,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        scale: float = 255.0,
        augment: bool = False,
        pad: int = 4,
        flip: bool = True,
        seed: int = 0,
        classes: list[str] | None = None,
    ) -> None:
        if len(images) != len(labels):
            raise UserError(f"{len(images)} images but {len(labels)} labels; the data is corrupt")
        images = np.ascontiguousarray(images)
        if not images.flags.writeable:  # e.g. arrays viewing a read-only buffer
            images = images.copy()
        self.images = torch.from_numpy(images)
        self.labels = torch.from_numpy(np.asarray(labels, dtype=np.int64))
        self.info = info
        self.mean, self.std, self.scale = tuple(mean), tuple(std), scale
        self.augment, self.pad, self.flip, self.seed = augment, pad, flip, seed
        self.classes = classes
        self.epoch = 0
        # Built once: creating them per example costs more than the arithmetic.
        self._mean_t = torch.tensor(self.mean, dtype=torch.float32).view(-1, 1, 1)
        self._std_t = torch.tensor(self.std, dtype=torch.float32).view(-1, 1, 1)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.labels)

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() / self.scale - self._mean_t) / self._std_t

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self._prepare(self.images[i])
        if self.augment:
            g = torch.Generator().manual_seed(example_seed(self.seed, self.epoch, int(i)))
            x = random_crop_flip_one(x, self.pad, g, flip=self.flip)
        return x, self.labels[i]

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All examples at once, normalised, without augmentation (fast evaluation)."""
        return self._prepare(self.images), self.labels


def channel_stats(x: np.ndarray, chunk: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of ``(N, C, H, W)`` 0..255 images, as fractions of 255.

    Accumulated in chunks so a 50k-image uint8 array is never copied to float whole.
    """
    c = x.shape[1]
    s, s2, n = np.zeros(c), np.zeros(c), 0
    for i in range(0, len(x), chunk):
        part = x[i : i + chunk].astype(np.float64) / 255.0
        s += part.sum(axis=(0, 2, 3))
        s2 += (part**2).sum(axis=(0, 2, 3))
        n += part.shape[0] * part.shape[2] * part.shape[3]
    mean = s / n
    std = np.sqrt(np.maximum(s2 / n - mean**2, 1e-12))
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def example_seed(seed: int, epoch: int, index: int) -> int:
    """A seed fixed by (seed, epoch, index) alone, independent of process and order."""
    return ((seed * 1_000_003 + epoch) * 1_000_003 + index) % (2**63 - 1)


def subset_rows(n: int, limit: int | None, *, spread: bool = False) -> slice | np.ndarray:
    """Rows kept by ``limit`` (all when ``None``); a bad limit is a UserError.

    Text windows keep the first ``limit`` rows. Image sets pass ``spread=True``:
    their files are often sorted by class, so the first rows would be a single
    class; they keep a fixed pseudo-random subset instead (seed 0, independent
    of the training seed, returned in the original order) so ``limit`` gives a
    representative, reproducible sample.
    """
    if limit is None:
        return slice(0, n)
    if int(limit) <= 0:
        raise UserError(f"limit must be a positive number of examples, got {limit}")
    if not spread or int(limit) >= n:
        return slice(0, min(n, int(limit)))
    rng = np.random.default_rng(0)
    return np.sort(rng.choice(n, size=int(limit), replace=False))


Loader = Callable[..., Dataset]


def _hash_arrays(h: Any, *arrays: Any) -> None:
    for a in arrays:
        a = a.numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(np.ascontiguousarray(a).tobytes())


def dataset_fingerprint(dataset: Any) -> dict[str, Any]:
    """Counts and a SHA-256 of what a dataset holds, to recognise the same data later.

    Covers :class:`ImageArrayDataset` (images and labels), token windows (ids
    and window starts) and ``Subset`` views of either (their indices too).
    Other datasets get their length and class count only (``sha256`` None).
    """
    import hashlib

    from torch.utils.data import Subset

    h = hashlib.sha256()
    base, rows = dataset, None
    while isinstance(base, Subset):
        rows = np.asarray(base.indices) if rows is None else np.asarray(base.indices)[rows]
        base = base.dataset
    known = True
    if isinstance(base, ImageArrayDataset):
        _hash_arrays(h, base.images, base.labels)
    elif hasattr(base, "ids") and hasattr(base, "starts"):
        _hash_arrays(h, base.ids, base.starts)
    else:
        known = False
    if rows is not None:
        _hash_arrays(h, rows)
    info = getattr(dataset, "info", None) or getattr(base, "info", None)
    labels = getattr(base, "labels", None)
    counts: dict[str, int] = {}
    if isinstance(labels, torch.Tensor):
        picked = labels if rows is None else labels[torch.as_tensor(rows, dtype=torch.long)]
        values, n = torch.unique(picked, return_counts=True)
        counts = {str(int(v)): int(c) for v, c in zip(values, n, strict=True)}
    return {
        "examples": len(dataset),
        "num_classes": getattr(info, "num_classes", None),
        "input_shape": list(getattr(info, "input_shape", ()) or ()),
        "class_counts": counts,
        "sha256": h.hexdigest() if known else None,
    }


def arrays_digest(arrays: dict[str, np.ndarray]) -> str:
    """SHA-256 over named arrays (names, dtypes, shapes and bytes), in name order."""
    import hashlib

    h = hashlib.sha256()
    for name in sorted(arrays):
        h.update(name.encode())
        _hash_arrays(h, arrays[name])
    return h.hexdigest()


def set_data_epoch(dataset: Any, epoch: int) -> None:
    """Tell an augmenting dataset (maybe inside ``Subset`` wrappers) the epoch, so that
    every epoch draws new augmentations, still a function of (seed, epoch, example).
    Datasets without ``set_epoch`` are left alone."""
    for _ in range(8):  # Subset of Subset of ...; a cycle cannot loop forever
        if dataset is None:
            return
        if callable(getattr(dataset, "set_epoch", None)):
            dataset.set_epoch(epoch)
            return
        dataset = getattr(dataset, "dataset", None)
