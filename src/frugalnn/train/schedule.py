"""Optimizers and learning-rate schedules, built from names.

Schedules are plain ``LambdaLR`` multipliers so their state is two numbers
(``last_epoch`` and the base rates), which makes resuming exact and the
checkpoint loadable with ``weights_only=True``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch.optim.lr_scheduler import LambdaLR

from frugalnn.errors import UserError

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "step", "none")
SCHEDULE_UNITS = ("step", "epoch")


def build_optimizer(
    params: Iterable[torch.nn.Parameter],
    name: str,
    *,
    lr: float,
    weight_decay: float = 0.0,
    momentum: float = 0.9,
    nesterov: bool = False,
    betas: tuple[float, float] = (0.9, 0.999),
) -> torch.optim.Optimizer:
    """``sgd`` (with momentum, optionally Nesterov) or ``adamw`` (decoupled decay)."""
    params = list(params)
    if lr <= 0:
        raise UserError(f"learning rate must be > 0, got {lr}")
    if weight_decay < 0:
        raise UserError(f"weight decay must be >= 0, got {weight_decay}")
    name = name.lower()
    if name == "sgd":
        if nesterov and momentum <= 0:
            raise UserError("nesterov SGD needs momentum > 0; set --momentum 0.9")
        return torch.optim.SGD(
            params, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay
        )
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=weight_decay)
    raise UserError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")


def lr_multiplier(
    name: str,
    total: int,
    *,
    warmup: int = 0,
    step_size: int | None = None,
    gamma: float = 0.1,
) -> Callable[[int], float]:
    """The factor applied to the base learning rate after ``t`` scheduler steps.

    ``cosine``: linear warm-up over ``warmup`` steps, then half a cosine from 1
    to 0 at ``total``. ``step``: multiply by ``gamma`` every ``step_size``
    steps (default a third of ``total``). ``none``: constant 1.
    """
    name = name.lower()
    if name not in SCHEDULES:
        raise UserError(f"unknown schedule {name!r}; choose one of {', '.join(SCHEDULES)}")
    if warmup < 0 or (name == "cosine" and 0 < total <= warmup):
        raise UserError(f"warm-up ({warmup}) must be >= 0 and shorter than training ({total})")
    if name == "none":
        return _constant
    if name == "step":
        size = step_size if step_size is not None else max(1, total // 3)
        if size <= 0:
            raise UserError(f"step_size must be > 0, got {size}")
        return lambda t: gamma ** (t // size)

    def cosine(t: int) -> float:
        if t < warmup:
            return (t + 1) / warmup
        span = max(1, total - warmup)
        progress = min(1.0, (t - warmup) / span)
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return cosine


def _constant(_t: int) -> float:
    return 1.0


def build_scheduler(
    optimizer: torch.optim.Optimizer, multiplier: Callable[[int], float]
) -> LambdaLR:
    return LambdaLR(optimizer, multiplier)
