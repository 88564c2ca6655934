"""Helpers shared by the MoE steps that stream a data loader through a model
(batches follow :mod:`frugalnn.utils.batch`)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch

from frugalnn.utils.batch import call_model, logits_of, split_batch, to_device


def inputs_of(batch: Any) -> Any:
    """The model input of a batch: ``x`` of ``(x, y)``, a dict batch without its
    ``"labels"`` (Hugging Face style), or the batch itself."""
    if isinstance(batch, (list, tuple)) and len(batch) >= 1:
        return batch[0]
    if isinstance(batch, dict) and "labels" in batch:
        return {k: v for k, v in batch.items() if k != "labels"}
    return batch


def model_inputs(batch: Any, device: str | torch.device) -> Any:
    """The model input of ``batch`` (see :func:`inputs_of`) on ``device``."""
    return to_device(inputs_of(batch), device)


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
    out: Any,
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
    encoders, no labels): ``1 - cos(out, teacher(x))``. Outputs may be Hugging
    Face output objects (their ``logits`` are used); dict inputs reach the
    teacher as keyword arguments.
    """
    import torch.nn.functional as F

    from frugalnn.train.distill import kd_loss
    from frugalnn.train.loop import cross_entropy

    out = logits_of(out)
    if objective == "embedding":
        assert teacher is not None
        with torch.no_grad():
            target = logits_of(call_model(teacher, x))
        return 1.0 - F.cosine_similarity(out, target, dim=-1).mean()
    labels = split_batch(batch)[1]
    loss = (1.0 - alpha) * cross_entropy(out, to_device(labels, out.device))
    if teacher is not None and alpha > 0:
        with torch.no_grad():
            t_logits = logits_of(call_model(teacher, x))
        loss = loss + alpha * kd_loss(out, t_logits, temperature)
    return loss
