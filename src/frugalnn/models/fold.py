"""Fold inference-mode BatchNorm into the convolution before it.

Why: in eval mode a ``BatchNorm2d`` is a fixed per-channel affine map, so it
can be merged into the preceding convolution's weights and bias at no cost in
accuracy (up to float rounding). On a CPU the unfolded BatchNorm is not free:
it is one more full read and write of the activation, and in a narrow network
(ResNet-56's first stage has 16 channels at 32x32) those memory-bound passes
take a large share of the time while adding no FLOPs. A speed-up quoted for
an early-exit or factorised model should be measured on models prepared the
same way, so both sides of the ratio pay only for the work they really do.

The pairs are found by tracing the model's ``forward`` with ``torch.fx`` (a
BatchNorm whose input is a convolution that feeds nothing else), and the
modules are then replaced *in place* on the original model: its own methods
(``embed``, ``blocks``, ``classify``), which early exits call block by block,
keep working, and so do any wrappers that hold the model.
"""

from __future__ import annotations

import torch
from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from frugalnn.errors import UserError

__all__ = ["conv_bn_pairs", "fold_batchnorm"]


def conv_bn_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """``(conv name, batchnorm name)`` for every BatchNorm2d applied straight to a Conv2d.

    A convolution whose output is also used elsewhere (e.g. returned, or fed
    to a second branch) is left alone: folding would change that other use.
    """
    try:
        graph = fx.symbolic_trace(model).graph
    except Exception as exc:  # fx raises many types for untraceable code
        raise UserError(
            f"cannot fold BatchNorm in {type(model).__name__}: its forward is not traceable by "
            f"torch.fx ({type(exc).__name__}); fold a traceable sub-module instead"
        ) from None
    modules = dict(model.named_modules())
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), nn.BatchNorm2d):
            continue
        src = node.args[0] if node.args else None
        if (isinstance(src, fx.Node) and src.op == "call_module"
                and isinstance(modules.get(src.target), nn.Conv2d) and len(src.users) == 1):
            pairs.append((str(src.target), str(node.target)))
    return pairs


def fold_batchnorm(model: nn.Module) -> int:
    """Fold every Conv2d -> BatchNorm2d pair of an eval-mode ``model`` in place.

    Each convolution gets the BatchNorm's scale and shift in its weight and
    bias, and the BatchNorm becomes ``nn.Identity``. Returns the number of
    pairs folded. Refuses a model in training mode: there BatchNorm uses the
    batch statistics, which no fixed weight can reproduce.
    """
    if model.training:
        raise UserError("fold_batchnorm needs an eval-mode model; call model.eval() first")
    pairs = conv_bn_pairs(model)
    with torch.no_grad():
        for conv_name, bn_name in pairs:
            conv, bn = model.get_submodule(conv_name), model.get_submodule(bn_name)
            model.set_submodule(conv_name, fuse_conv_bn_eval(conv, bn))
            model.set_submodule(bn_name, nn.Identity())
    return len(pairs)
