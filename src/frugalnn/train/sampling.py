"""Data order that depends only on (seed, epoch, rank), so runs can resume exactly.

``fit`` rebuilds the user's DataLoader around a :class:`ResumableSampler`: a
``DistributedSampler`` (also used with one process) whose permutation for an
epoch is fixed by ``seed + epoch`` and which can skip the batches a resumed
run has already seen. Under torchrun the same sampler shards the data.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import (
    DataLoader,
    DistributedSampler,
    IterableDataset,
    RandomSampler,
    SequentialSampler,
)

from frugalnn.errors import UserError


class ResumableSampler(DistributedSampler):
    """``DistributedSampler`` that can start ``offset`` samples into the epoch."""

    def __init__(self, dataset, num_replicas: int, rank: int, shuffle: bool, seed: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed)
        self.offset = 0

    def set_offset(self, offset: int) -> None:
        self.offset = int(offset)

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(super().__iter__(), self.offset, None)

    def __len__(self) -> int:
        return max(0, self.num_samples - self.offset)


class ShardSampler(torch.utils.data.Sampler[int]):
    """Every ``world``-th example starting at ``rank``, in order, no padding (evaluation)."""

    def __init__(self, n: int, rank: int, world: int) -> None:
        self.indices = list(range(rank, n, world))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def derived_seed(*parts: int) -> int:
    """A 63-bit seed mixed from several integers (seed, rank, epoch, step)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint64)[0] >> 1)


def rebuild_train_loader(
    loader: DataLoader, *, rank: int, world: int, seed: int
) -> tuple[DataLoader, ResumableSampler | None, torch.Generator | None]:
    """A copy of ``loader`` whose order is a seeded, resumable function of the epoch.

    Loaders with a custom sampler/batch sampler or an iterable dataset are
    returned unchanged (order then is the caller's business; mid-epoch
    resume is refused), except under torchrun, where data must be sharded.
    """
    rebuildable = (
        not isinstance(loader.dataset, IterableDataset)
        and loader.batch_size is not None
        and isinstance(loader.sampler, RandomSampler | SequentialSampler)
    )
    if not rebuildable:
        if world > 1:
            raise UserError(
                "distributed training needs a DataLoader built with batch_size= and "
                "shuffle=True/False (no custom sampler) so fit() can shard it"
            )
        return loader, None, None
    shuffle = isinstance(loader.sampler, RandomSampler)
    sampler = ResumableSampler(
        loader.dataset, num_replicas=world, rank=rank, shuffle=shuffle, seed=seed
    )
    generator = torch.Generator()  # seeds the workers; reseeded every epoch
    new = DataLoader(
        loader.dataset,
        batch_size=loader.batch_size,
        sampler=sampler,
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        drop_last=loader.drop_last,
        timeout=loader.timeout,
        worker_init_fn=loader.worker_init_fn,
        generator=generator,
        prefetch_factor=loader.prefetch_factor if loader.num_workers > 0 else None,
    )
    return new, sampler, generator


def rebuild_eval_loader(loader: DataLoader, *, rank: int, world: int) -> DataLoader:
    """The rank's shard of an evaluation loader (unchanged with one process)."""
    if world == 1:
        return loader
    if isinstance(loader.dataset, IterableDataset) or loader.batch_size is None:
        raise UserError(
            "distributed evaluation needs a map-style DataLoader built with batch_size="
        )
    return DataLoader(
        loader.dataset,
        batch_size=loader.batch_size,
        sampler=ShardSampler(len(loader.dataset), rank, world),
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
    )
