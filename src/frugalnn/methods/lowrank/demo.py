"""The low-rank turn of ``frugalnn demo``.

Two things on the demo data: (1) the trained demo CNN compressed with
Tucker-2 and CP to half its FLOPs, fine-tuned briefly with distillation, each
evaluated over its ``rank_fraction`` knob with per-layer and whole-model
tables in ``extras/``; (2) the demo ViT trained with NMF token mixing in place
of attention, next to the same ViT with softmax attention (the baseline the
other transformer hooks share). Both go through
:mod:`frugalnn.methods.lowrank.recipe`, as the CLI does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

#: The demo ViT (shared with the mixture-of-experts and ACM hooks, so trained once).
VIT = {"patch_size": 2, "dim": 128, "depth": 2, "heads": 2, "activation": "relu"}


def run_demo(ctx: Any) -> list[Path]:
    from frugalnn.data.splits import Splits
    from frugalnn.methods.lowrank.recipe import (
        LowRankConfig,
        NMFConfig,
        compare_into,
        compress,
        run_nmf,
    )
    from frugalnn.models import create_model

    runs: list[Path] = []
    val = getattr(ctx, "val_set", None)
    backbone, _ = ctx.train_baseline()
    backbone.eval()
    example = torch.stack([ctx.train_set[i][0] for i in range(2)]).to(ctx.device)
    for method in ("tucker", "cp"):
        config = LowRankConfig(method=method, target="flops=2",
                               finetune_epochs=1 if ctx.quick else 3, lr=3e-3,
                               optimizer="adamw", weight_decay=1e-4, batch_size=ctx.batch_size,
                               latency_batch_sizes=(1, ctx.batch_size), seed=ctx.seed)
        model, plan, _ = compress(backbone, config, train_data=ctx.train_set, val_data=val,
                                  example=example, device=ctx.device, threads=ctx.threads,
                                  progress=ctx.progress)
        label = f"lowrank {method} (flops/2)"
        run = ctx.evaluate_run(model, f"lowrank-{method}", method=label)
        compare_into(run, backbone, model, plan, example, config, test_data=ctx.test_set,
                     label=label, device=ctx.device, threads=ctx.threads,
                     repeats=5 if ctx.quick else 20)
        runs.append(run)

    vit_epochs = 10 if ctx.quick else 30
    # Softmax attention, for comparison: the NMF run is evaluated against this baseline.
    _, vit_run = ctx.train_baseline("vit_tiny", epochs=vit_epochs, **VIT)
    torch.manual_seed(ctx.seed)
    vit = create_model("vit_tiny", **{**ctx.model_kwargs("vit_tiny"), **VIT})
    # lr: the softmax baseline's (frugalnn.demo.DEMO_FIT), so that only the mixing differs.
    config = NMFConfig(rank=8, steps=3, epochs=vit_epochs, lr=1e-3, weight_decay=1e-4,
                       batch_size=ctx.batch_size, latency_batch_sizes=ctx.latency_batch_sizes,
                       latency_repeats=5 if ctx.quick else 20, seed=ctx.seed)
    splits = Splits(ctx.train_set, val, ctx.test_set, getattr(ctx.test_set, "info", None))
    run = run_nmf(vit, config, splits, ctx.run_dir("nmf-mixing-vit"), device=ctx.device,
                  threads=ctx.threads, progress=ctx.progress, force=True,
                  run_config={"demo": True, "seed": ctx.seed}, baseline_run=vit_run,
                  report=False)
    runs.append(run.out)
    return runs
