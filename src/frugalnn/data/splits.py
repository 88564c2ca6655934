"""Train / validation / test splits and seeded subsets, the same for every caller.

Operating points (exit thresholds, tau, budgets, "lowest cost within X pt")
are chosen on a **validation** split and only scored on the test split. The
validation split is carved from the training data with a fixed seed, before
any ``--train-limit`` is applied, so the same ``val_fraction`` and ``seed`` give
the same validation examples in the CLI, the demo and every benchmark, and no
validation example is ever trained on.

Subsets are drawn at random (seeded), never "the first N": image folders are
sorted by class, so their first examples would all share one label.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import Dataset, Subset

from frugalnn.errors import UserError

__all__ = [
    "Splits",
    "carve_validation",
    "load_splits",
    "load_test_split",
    "random_subset",
    "seeded_loader",
    "subset",
]

#: Seed offsets, so the three draws of one ``seed`` are independent of each other.
_VAL_OFFSET, _TRAIN_OFFSET, _TEST_OFFSET = 7919, 0, 1


@dataclass
class Splits:
    """The three splits of one dataset and its info (``val`` may be ``None``)."""

    train: Dataset
    val: Dataset | None
    test: Dataset | None  # None only when asked for no test split
    info: Any
    #: How ``val`` was made: ``{"source": "train", "fraction": f, "seed": s, "examples": n}``.
    val_spec: dict[str, Any] | None = None


def subset(dataset: Dataset, indices: list[int]) -> Dataset:
    """``Subset`` of ``dataset`` at ``indices`` that keeps the dataset's ``info``."""
    out = Subset(dataset, list(indices))
    out.info = getattr(dataset, "info", None)  # type: ignore[attr-defined]
    return out


def random_subset(dataset: Dataset, limit: int | None, seed: int) -> Dataset:
    """``limit`` examples drawn at random (seeded, kept in dataset order), or the whole set."""
    if limit is not None and limit < 1:
        raise UserError(f"limits must be positive, got {limit}")
    if limit is None or limit >= len(dataset):  # type: ignore[arg-type]
        return dataset
    n = len(dataset)  # type: ignore[arg-type]
    idx = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:limit]
    return subset(dataset, sorted(idx.tolist()))


def carve_validation(n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices ``(train, val)`` of ``n`` training examples: ``round(fraction * n)`` of them,
    drawn with ``seed``, go to validation (at least one when ``fraction > 0``)."""
    if not 0.0 <= fraction < 1.0:
        raise UserError(f"the validation fraction must be in [0, 1), got {fraction}")
    k = 0 if fraction == 0 else max(1, round(fraction * n))
    if k >= n:
        raise UserError(f"a validation fraction of {fraction} leaves no training examples "
                        f"out of {n}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed + _VAL_OFFSET))
    val = sorted(perm[:k].tolist())
    train = sorted(perm[k:].tolist())
    return train, val


def load_test_split(name: str, data_dir: str | None = None, *, split: str = "test",
                    limit: int | None = None, seed: int = 0) -> Dataset:
    """The evaluated split of ``name``: ``limit`` random examples of ``split`` drawn with
    ``seed`` (the same examples :func:`load_splits` gives as ``test``)."""
    from frugalnn.data.catalog import get_dataset

    return random_subset(get_dataset(name, split, data_dir), limit, seed + _TEST_OFFSET)


def load_splits(
    name: str,
    data_dir: str | None = None,
    *,
    val_fraction: float = 0.1,
    train_limit: int | None = None,
    val_limit: int | None = None,
    test_limit: int | None = None,
    test_split: str | None = "test",
    seed: int = 0,
    train_split: str = "train",
    **train_options: Any,
) -> Splits:
    """Train, validation and test sets of dataset ``name``.

    The validation set is ``val_fraction`` of ``train_split`` (no
    augmentation), carved with ``seed`` before ``train_limit`` draws the
    training subset from the rest; ``val_limit`` / ``test_limit`` draw random
    subsets of those. ``train_options`` (e.g. ``augment=True``) apply to the
    training set only; its augmentation is seeded with ``seed``.
    ``val_fraction=0`` gives no validation set, ``test_split=None`` no test set.
    """
    from frugalnn.data.catalog import get_dataset

    train_full = get_dataset(name, train_split, data_dir, seed=seed, **train_options)
    info = getattr(train_full, "info", None)
    train_idx, val_idx = carve_validation(len(train_full), val_fraction, seed)
    val = None
    spec = None
    if val_idx:
        plain = train_full if not train_options else get_dataset(name, train_split, data_dir)
        val = random_subset(subset(plain, val_idx), val_limit, seed + _VAL_OFFSET + 1)
        spec = {"source": train_split, "fraction": val_fraction, "seed": seed,
                "examples": len(val)}  # type: ignore[arg-type]
    train = subset(train_full, train_idx) if val_idx else train_full
    train = random_subset(train, train_limit, seed + _TRAIN_OFFSET)
    test = None
    if test_split is not None:
        test = load_test_split(name, data_dir, split=test_split, limit=test_limit, seed=seed)
    return Splits(train, val, test, info, spec)


def seeded_loader(data: Any, batch_size: int, seed: int, *, shuffle: bool = True) -> Any:
    """A dataset becomes a ``DataLoader`` whose shuffling order is fixed by ``seed``
    (in dataset order when ``shuffle`` is false); an iterable of batches (a
    ``DataLoader``, a list of ``(x, y)``) is returned as it is."""
    from torch.utils.data import DataLoader

    if not isinstance(data, Dataset):
        return data
    gen = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(data, batch_size=batch_size, shuffle=shuffle, generator=gen)
