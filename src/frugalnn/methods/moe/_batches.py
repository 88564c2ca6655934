"""Helpers shared by the MoE steps that stream a data loader through a model
(batches follow :mod:`frugalnn.utils.batch`)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch

from frugalnn.utils.batch import to_device


def inputs_of(batch: Any) -> Any:
    """The model input of a batch: ``x`` of ``(x, y)``, or the batch itself."""
    if isinstance(batch, (list, tuple)) and len(batch) >= 1:
        return batch[0]
    return batch


def iterate_inputs(
    loader: Iterable[Any], device: str | torch.device, max_batches: int | None = None
) -> Iterator[Any]:
    """Model inputs of the first ``max_batches`` batches, on ``device``."""
    for i, batch in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            return
        yield to_device(inputs_of(batch), device)


def replace_child(root: torch.nn.Module, old: torch.nn.Module, new: torch.nn.Module) -> bool:
    """Put ``new`` wherever ``old`` is a direct child of a module under ``root``."""
    done = False
    for parent in root.modules():
        for name, child in list(parent.named_children()):
            if child is old:
                setattr(parent, name, new)
                done = True
    return done


def task_and_distill_loss(
    out: torch.Tensor,
    x: Any,
    batch: Any,
    teacher: torch.nn.Module | None,
    *,
    objective: str,
    alpha: float,
    temperature: float,
) -> torch.Tensor:
    """The fidelity part of the MoE fine-tuning losses (sparsity enforcement, routed tuning).

    ``classification``: ``(1 - alpha) * CE(labels) + alpha * KD(teacher)`` (no KD
    term without a teacher or with ``alpha = 0``); ``embedding`` (sentence
    encoders, no labels): ``1 - cos(out, teacher(x))``.
    """
    import torch.nn.functional as F

    from frugalnn.train.distill import kd_loss
    from frugalnn.train.loop import cross_entropy

    if objective == "embedding":
        assert teacher is not None
        with torch.no_grad():
            target = teacher(x)
        return 1.0 - F.cosine_similarity(out, target, dim=-1).mean()
    loss = (1.0 - alpha) * cross_entropy(out, to_device(batch[1], out.device))
    if teacher is not None and alpha > 0:
        with torch.no_grad():
            t_logits = teacher(x)
        loss = loss + alpha * kd_loss(out, t_logits, temperature)
    return loss
