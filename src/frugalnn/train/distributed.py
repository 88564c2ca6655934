"""torchrun support: process group, DDP wrapping, rank-0 helpers.

``fit`` calls :func:`setup` once; when the process was started by
``torchrun`` (``WORLD_SIZE`` > 1 in the environment) it joins the process
group (gloo on CPU, nccl on CUDA) and the model is wrapped in
DistributedDataParallel. Outside torchrun everything here is a no-op, so the
loop has one code path.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in the job; ``world_size == 1`` means not distributed."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # True if setup() created the process group

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(device: torch.device) -> DistEnv:
    """Join the torchrun process group if there is one; pick the local GPU on CUDA."""
    if dist.is_available() and dist.is_initialized():
        return DistEnv(
            dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), False
        )
    if not launched_by_torchrun():
        return DistEnv()
    backend = "nccl" if device.type == "cuda" else "gloo"
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=backend)
    return DistEnv(dist.get_rank(), dist.get_world_size(), local_rank, True)


def local_device(device: torch.device, env: DistEnv) -> torch.device:
    """Under torchrun with CUDA, each process uses the GPU of its ``LOCAL_RANK``."""
    if env.enabled and device.type == "cuda" and device.index is None:
        return torch.device("cuda", env.local_rank)
    return device


def wrap(model: nn.Module, env: DistEnv, device: torch.device) -> nn.Module:
    """Wrap in DDP when distributed; DDP broadcasts rank 0's weights at construction."""
    if not env.enabled:
        return model
    ids = [device.index] if device.type == "cuda" else None
    # Frozen parameters ("train only the new parts") are simply not reduced;
    # find_unused_parameters covers modules skipped by dynamic forward paths.
    return nn.parallel.DistributedDataParallel(
        model, device_ids=ids, find_unused_parameters=_has_unused_risk(model)
    )


def _has_unused_risk(model: nn.Module) -> bool:
    # Models with dynamic execution (early exits, routed experts) may leave
    # some trainable parameters without gradient in a step.
    from frugalnn.cost.ledger import DynamicModule

    return any(isinstance(m, DynamicModule) for m in model.modules())


def sync_buffers(model: nn.Module, env: DistEnv) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank.

    DDP broadcasts buffers at the start of each forward, so after the last
    step of an epoch each rank still holds statistics updated by its own
    shard; syncing makes evaluation and the returned model identical on all ranks.
    """
    if not env.enabled:
        return
    for buf in model.buffers():
        dist.broadcast(buf, src=0)


def barrier(env: DistEnv) -> None:
    if env.enabled:
        dist.barrier()


def all_reduce_sum(values: list[float], env: DistEnv, device: torch.device) -> list[float]:
    """Sum a few scalars over all ranks (epoch metrics); identity when not distributed."""
    if not env.enabled:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def teardown(env: DistEnv) -> None:
    if env.owns_group and dist.is_initialized():
        dist.destroy_process_group()
