"""One batch convention for every layer.

A data loader yields ``(inputs, labels)`` pairs or a dict holding ``"labels"``
(Hugging Face style); inputs are a tensor, a tuple/list of tensors or a dict of
tensors. These helpers move, count, slice and join such inputs, and call a model
on them (:func:`call_model`: dicts as keyword arguments for Hugging Face models).
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

from frugalnn.errors import UserError

__all__ = [
    "batch_len", "call_model", "cat", "example_inputs", "expand_batch", "inputs_of", "logits_of",
    "slice_batch", "split_batch", "take", "to_device",
]


def to_device(x: Any, device: torch.device) -> Any:
    if isinstance(x, torch.Tensor):
        return x.to(device, non_blocking=True)
    if isinstance(x, dict):
        return {k: to_device(v, device) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(to_device(v, device) for v in x)
    return x


def batch_len(x: Any) -> int:
    if isinstance(x, torch.Tensor):
        return int(x.shape[0])
    if isinstance(x, dict):
        return batch_len(next(iter(x.values())))
    if isinstance(x, (list, tuple)):
        return batch_len(x[0])
    raise UserError(f"cannot tell the batch size of an input of type {type(x).__name__}")


def take(x: Any, n: int) -> Any:
    if isinstance(x, torch.Tensor):
        return x[:n]
    if isinstance(x, dict):
        return {k: take(v, n) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(take(v, n) for v in x)
    return x


def expand_batch(x: Any, n: int) -> Any:
    """A batch of ``n`` copies of the first example of ``x`` (tensors, dicts, lists)."""
    if isinstance(x, torch.Tensor):
        return x[:1].expand(n, *x.shape[1:]).contiguous()
    if isinstance(x, dict):
        return {k: expand_batch(v, n) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(expand_batch(v, n) for v in x)
    return x


def cat(parts: list[Any]) -> Any:
    first = parts[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(parts)
    if isinstance(first, dict):
        return {k: cat([p[k] for p in parts]) for k in first}
    if isinstance(first, (list, tuple)):
        return type(first)(cat([p[i] for p in parts]) for i in range(len(first)))
    raise UserError(f"cannot concatenate inputs of type {type(first).__name__}")


def split_batch(batch: Any) -> tuple[Any, torch.Tensor]:
    if isinstance(batch, (list, tuple)) and len(batch) == 2:
        return batch[0], batch[1]
    if isinstance(batch, dict) and "labels" in batch:
        x = {k: v for k, v in batch.items() if k != "labels"}
        return x, batch["labels"]
    raise UserError(
        "the data loader must yield (inputs, labels) pairs; got "
        f"{type(batch).__name__}"
    )


def inputs_of(batch: Any) -> Any:
    """The model inputs of one batch, for steps that need no labels (calibration,
    timing): an ``(inputs, labels)`` pair, a one-element ``(inputs,)`` (a
    ``TensorDataset`` of inputs alone), a dict of inputs (``labels`` dropped) or a
    bare tensor."""
    if isinstance(batch, (list, tuple)) and len(batch) in (1, 2):
        return batch[0]
    if isinstance(batch, dict):
        return {k: v for k, v in batch.items() if k != "labels"}
    if isinstance(batch, torch.Tensor):
        return batch
    size = f" of {len(batch)}" if isinstance(batch, (list, tuple)) else ""
    raise UserError("the data loader must yield inputs or (inputs, labels) pairs; got "
                    f"{type(batch).__name__}{size}")


def logits_of(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    logits = getattr(out, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(out, dict) and isinstance(out.get("logits"), torch.Tensor):
        return out["logits"]
    if isinstance(out, (list, tuple)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise UserError(f"the model returned {type(out).__name__}; expected a logits tensor")


def slice_batch(x: Any, start: int, stop: int) -> Any:
    if isinstance(x, torch.Tensor):
        return x[start:stop]
    if isinstance(x, dict):
        return {k: slice_batch(v, start, stop) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(slice_batch(v, start, stop) for v in x)
    return x


def _takes_keywords(model: Any, keys: Any) -> bool:
    """True when ``model.forward`` takes the dict's keys as keyword arguments (HF style)."""
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError, AttributeError):
        return False
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    required = [n for n, p in params.items() if p.kind in named and p.default is p.empty]
    var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    return all(r in keys for r in required) and (var_kw or all(k in params for k in keys))


def call_model(model: Any, x: Any) -> Any:
    """``model(**x)`` for a dict input whose keys ``model.forward`` names (Hugging Face
    models: ``input_ids``, ``attention_mask``, ``pixel_values``), else ``model(x)``."""
    if isinstance(x, dict) and _takes_keywords(model, x):
        return model(**x)
    return model(x)


def example_inputs(data: Any, n: int = 1) -> Any:
    """The inputs of the first ``n`` examples of a dataset as one batch (labels dropped,
    as :func:`inputs_of` drops them): a tensor, or a dict of tensors for Hugging Face
    style examples."""
    from torch.utils.data import default_collate

    return inputs_of(default_collate([data[i] for i in range(min(n, len(data)))]))
