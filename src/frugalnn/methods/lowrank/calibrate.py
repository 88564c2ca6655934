"""Data-aware SVD: the second moment of each layer's inputs on calibration data.

A truncated SVD of a weight keeps the directions of largest weight energy,
whether or not the layer's inputs ever point that way. Weighting by the inputs
keeps what the layer's *outputs* need: with ``C = E[x x^T]`` over the inputs a
layer really sees and ``C = L L^T``, the best rank-``r`` layer in output error
``E||W x - W' x||^2`` is the truncated SVD of ``W L`` mapped back by ``L^-1``
(:func:`frugalnn.methods.lowrank.decompose.svd_factors`). Its discarded
singular values are output energy lost on the data, so rank selection and the
whole-model allocation (:mod:`frugalnn.methods.lowrank.allocate`) use them
too. Linear layers and 1x1 convolutions (``--method svd``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from torch import nn

from frugalnn.errors import UserError
from frugalnn.utils.batch import call_model, inputs_of, to_device

__all__ = ["effective_weight", "input_whitening"]


def _rows(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The input vectors the layer multiplies by its weight, one per row."""
    if isinstance(module, nn.Conv2d):  # a 1x1 convolution: every (strided) position
        sh, sw = module.stride
        x = x[..., ::sh, ::sw]
        return x.movedim(1, -1).reshape(-1, x.shape[1])
    return x.reshape(-1, x.shape[-1])


@torch.no_grad()
def input_whitening(model: nn.Module, layers: dict[str, nn.Module], loader: Iterable[Any],
                    *, damping: float = 1e-6) -> dict[str, np.ndarray]:
    """Lower-triangular ``L`` per layer name with ``L L^T`` = the second moment of the
    layer's inputs over ``loader``'s batches (``damping`` x its mean diagonal added, so
    that directions the data never takes stay invertible)."""
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}

    def hook(name: str) -> Any:
        def fn(module: nn.Module, inputs: tuple[Any, ...], _out: Any) -> None:
            rows = _rows(module, inputs[0]).to(torch.float64)
            sums[name] = sums.get(name, 0) + rows.T @ rows
            counts[name] = counts.get(name, 0) + rows.shape[0]
        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in layers.items()]
    was = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        for batch in loader:
            call_model(model, to_device(inputs_of(batch), device))
    finally:
        model.train(was)
        for h in handles:
            h.remove()
    missing = [n for n in layers if n not in sums]
    if missing:
        raise UserError(f"the calibration data never reached layer {missing[0]!r}; give "
                        "examples the model runs through it (or leave it out: --exclude)")
    out = {}
    for name, total in sums.items():
        c = (total / counts[name]).cpu().numpy()
        c = (c + c.T) / 2 + damping * max(float(np.trace(c)) / len(c), 1e-12) * np.eye(len(c))
        out[name] = np.linalg.cholesky(c)
    return out


def effective_weight(module: nn.Module, whiten: np.ndarray) -> torch.Tensor:
    """``W L`` in the layer's weight shape: the matrix whose spectrum data-aware ranks read."""
    w = module.weight.detach().to("cpu", torch.float64)
    flat = w.reshape(w.shape[0], -1) @ torch.from_numpy(whiten)
    return flat.reshape(w.shape)
