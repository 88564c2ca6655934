"""The MoE turn of ``frugalnn demo``: a small ReLU ViT on the demo data, converted.

Trains (via the demo context) a 2-block ViT with ReLU FFNs, writes its
activation-sparsity report, splits each FFN into 8 experts by balanced
k-means, trains routers, and evaluates dynamic-k (knob tau) and top-k (knob
k) routing as two runs on the shared cost-accuracy plane. The conversion is
:func:`frugalnn.methods.moe.recipe.moe`, the same as ``frugalnn moe convert``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

VIT = {"patch_size": 2, "dim": 128, "depth": 2, "heads": 2, "activation": "relu"}


def run_demo(ctx: Any) -> list[Path]:
    from frugalnn.analysis.sparsity import activation_sparsity
    from frugalnn.methods.moe.recipe import MoEConfig, moe
    from frugalnn.methods.moe.report import write_extras

    shape = tuple(ctx.input_shape)
    if len(shape) != 3 or shape[1] != shape[2] or shape[1] % VIT["patch_size"]:
        return []  # the demo ViT needs square images
    epochs = 10 if ctx.quick else 30
    model, _ = ctx.train_baseline("vit_tiny", epochs=epochs, **VIT)
    torch.manual_seed(ctx.seed)
    sparsity = activation_sparsity(model, ctx.test_loader(), device=ctx.device,
                                   meta={"model": "vit_tiny (demo)"})
    config = MoEConfig(experts=8, router_epochs=2 if ctx.quick else 6, router_lr=3e-3,
                       router_hidden=32, batch_size=ctx.batch_size, seed=ctx.seed)
    converted = moe(model, config, train_data=ctx.train_set, device=ctx.device,
                    progress=ctx.progress)
    dyn = ctx.evaluate_run(converted, "moe-dynamic-k", method="moe dynamic-k")
    converted.set_mode("topk")
    topk = ctx.evaluate_run(converted, "moe-top-k", method="moe top-k")
    converted.set_mode("dynamic")
    write_extras(converted, [dyn, topk], dyn / "extras")
    sparsity.save(dyn / "extras")
    return [dyn, topk]
