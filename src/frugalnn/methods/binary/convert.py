"""Swap a model's Conv2d / Linear layers for binary ones; the ``"binary"`` transformation.

:func:`binarize_layers` replaces, in place, the chosen layers by
:class:`~frugalnn.methods.binary.layers.BinaryConv2d` /
:class:`~frugalnn.methods.binary.layers.BinaryLinear` initialised from their
float weights, and records the ``"binary"`` transformation (layer names,
activations, word size, packed or not) so that
:func:`frugalnn.train.checkpoint.load_model` rebuilds the structure and then
loads the saved (packed) weights. By default the first and the last eligible
layer stay float, as in XNOR-Net and every binary network since: the input
layer sees few channels and the classifier decides the answer.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from frugalnn.errors import UserError
from frugalnn.methods.binary.layers import BinaryConv2d, BinaryLayer, BinaryLinear
from frugalnn.transforms import record_transform, register_transform
from frugalnn.utils.batch import call_model, inputs_of, to_device

__all__ = ["TRANSFORM", "binary_layers", "binarize_layers", "calibrate_thresholds",
           "eligible_layers", "pack_model"]

TRANSFORM = "binary"


def _eligible(module: nn.Module) -> bool:
    if isinstance(module, nn.Linear):
        return True
    return (isinstance(module, nn.Conv2d) and module.groups == 1
            and module.padding_mode == "zeros" and not isinstance(module.padding, str))


def _matches(name: str, patterns: Iterable[str] | None) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns or ())


def eligible_layers(model: nn.Module, *, include: list[str] | None = None,
                    exclude: list[str] | None = None, keep_first_last: bool = True) -> list[str]:
    """Names of the layers :func:`binarize_layers` would replace, in module order."""
    names = [n for n, m in model.named_modules() if n and _eligible(m)]
    if keep_first_last:
        names = names[1:-1]
    return [n for n in names
            if (include is None or _matches(n, include)) and not _matches(n, exclude)]


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, module)


def binary_layers(model: nn.Module) -> dict[str, BinaryLayer]:
    """The binary layers of ``model`` by name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, BinaryLayer)}


@register_transform(TRANSFORM)
def binarize_layers(model: nn.Module, layers: list[str], activations: bool = True,
                    word_bits: int = 64, packed: bool = False, kernel: str = "auto") -> nn.Module:
    """Replace the named layers by binary ones (in place); ``packed`` packs them too."""
    if not layers:
        raise UserError("no layer to binarise (the first and last layers stay float by "
                        "default); pass include patterns or keep_first_last=False")
    modules = dict(model.named_modules())
    for name in layers:
        module = modules.get(name)
        if module is None or not _eligible(module):
            raise UserError(f"{name!r} is not a Conv2d (groups=1) or Linear layer of this model")
        cls = BinaryLinear if isinstance(module, nn.Linear) else BinaryConv2d
        layer = cls(module, activations=activations, word_bits=word_bits, kernel=kernel,
                    name=name)
        layer.to(module.weight.device)
        if packed:
            layer.make_packed_shell()
        _set_module(model, name, layer)
    record_transform(model, TRANSFORM, {"layers": list(layers), "activations": activations,
                                        "word_bits": word_bits, "packed": packed,
                                        "kernel": kernel})
    return model


def pack_model(model: nn.Module) -> nn.Module:
    """Pack every binary layer of ``model`` (in place) and record it in its transformation."""
    for layer in binary_layers(model).values():
        layer.pack()
    history = list(getattr(model, "frugalnn_transforms", []))
    for spec in history:
        if spec["name"] == TRANSFORM:
            spec["args"] = {**spec["args"], "packed": True}
    model.frugalnn_transforms = history
    return model


@torch.no_grad()
def calibrate_thresholds(model: nn.Module, batch: Any, device: str | torch.device = "cpu") -> None:
    """Set every binary layer's input thresholds to its inputs' per-channel means on ``batch``.

    After a ReLU all inputs are >= 0, so a zero threshold would make every sign +1;
    the channel mean splits them.
    """
    layers = binary_layers(model)
    means: dict[str, torch.Tensor] = {}

    def hook(name: str):
        def fn(module: nn.Module, inputs: tuple[Any, ...]) -> None:
            x = inputs[0]
            dims = [d for d in range(x.dim()) if d != (1 if x.dim() == 4 else x.dim() - 1)]
            means[name] = x.mean(dim=dims)
        return fn

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in layers.items()
               if m.threshold is not None]
    x = inputs_of(batch)
    was_training = model.training
    try:
        model.eval()
        call_model(model, to_device(x, device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    for name, mean in means.items():
        layers[name].threshold.copy_(mean)
