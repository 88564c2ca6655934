"""The named inputs of a graph: a tensor, or a dict of tensors whose keys become names.

A model is exported on one example input in the batch convention of
:mod:`frugalnn.utils.batch`: a tensor (one graph input, ``input``) or a dict of
tensors (Hugging Face style: ``{"input_ids", "attention_mask"}``, ``{"pixel_values"}``;
one graph input per key, named by the key). :class:`KeywordInputs` turns a model
that takes such a dict into a module of positional tensors, which every exporter
handles; runners take the dict back and feed its values by name.

Dynamic axes: the first axis of every input is the batch; a 2-D integer input of a
dict (token ids, attention masks) also has a dynamic second axis, the sequence.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from frugalnn.errors import UserError

__all__ = ["TENSOR_INPUT", "KeywordInputs", "describe_inputs", "dynamic_axes", "input_names",
           "ordered"]

#: The graph input of a model that takes one tensor.
TENSOR_INPUT = "input"


def input_names(example: Any) -> list[str]:
    """Graph input names of ``example``: ``["input"]`` for a tensor, the keys of a dict of
    tensors; anything else is refused in one line."""
    if isinstance(example, torch.Tensor):
        return [TENSOR_INPUT]
    if isinstance(example, dict):
        bad = sorted(str(k) for k, v in example.items()
                     if not isinstance(k, str) or not isinstance(v, torch.Tensor))
        if not example or bad:
            what = f"keys {', '.join(bad)} do not hold tensors" if bad else "it is empty"
            raise UserError(f"cannot infer the graph inputs of this dict input ({what}); "
                            "export takes a tensor or a dict of tensors (keys become input "
                            "names)")
        return list(example)
    raise UserError(f"cannot infer the graph inputs of an input of type "
                    f"{type(example).__name__}; export takes a tensor or a dict of tensors "
                    "(keys become input names)")


def ordered(x: Any, names: list[str]) -> tuple[Any, ...]:
    """The tensors of ``x`` in the order of the graph inputs ``names`` (a dict must hold
    exactly those keys)."""
    if not isinstance(x, dict):
        if names != [TENSOR_INPUT]:
            raise UserError(f"this export takes a dict with keys {', '.join(names)}; "
                            f"got a {type(x).__name__}")
        return (x,)
    if set(x) != set(names):
        missing = sorted(set(names) - set(x))
        extra = sorted(set(x) - set(names))
        parts = ([f"missing {', '.join(missing)}"] if missing else []) + (
            [f"unexpected {', '.join(map(str, extra))}"] if extra else [])
        raise UserError(f"this export takes inputs {', '.join(names)}; the dict given has "
                        f"{'; '.join(parts)}")
    return tuple(x[n] for n in names)


def dynamic_axes(example: Any) -> dict[str, dict[int, str]]:
    """Per graph input, its dynamic axes: the batch, and the sequence of 2-D integer
    inputs of a dict."""
    if not isinstance(example, dict):
        return {TENSOR_INPUT: {0: "batch"}}
    out = {}
    for name, t in example.items():
        axes = {0: "batch"}
        if t.dim() == 2 and not t.is_floating_point():
            axes[1] = "sequence"
        out[name] = axes
    return out


def describe_inputs(example: Any) -> list[dict[str, Any]]:
    """Name, per-example shape (``None`` on a dynamic axis) and dtype of each graph input."""
    tensors = dict(zip(input_names(example), ordered(example, input_names(example))))
    axes = dynamic_axes(example)
    return [{"name": n, "shape": [None if i + 1 in axes[n] else int(s)
                                  for i, s in enumerate(t.shape[1:])],
             "example_shape": [int(s) for s in t.shape[1:]], "dtype": str(t.dtype)}
            for n, t in tensors.items()]


class KeywordInputs(nn.Module):
    """``model`` called on a dict, seen as a module of positional tensors that returns the
    logits: ``forward(*tensors) = logits_of(call_model(model, dict(zip(names, tensors))))``
    (Hugging Face models get the dict as keyword arguments)."""

    def __init__(self, model: Any, names: list[str]) -> None:
        super().__init__()
        self.model = model
        self.names = list(names)
        self.train(model.training)  # a fresh module is in training mode: take the model's

    def forward(self, *tensors: Any) -> Any:
        from frugalnn.utils.batch import call_model, logits_of

        return logits_of(call_model(self.model, dict(zip(self.names, tensors))))
