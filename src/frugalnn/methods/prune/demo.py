"""The pruning turn of ``frugalnn demo``: the trained demo CNN with half its FLOPs.

torch-pruning removes channels to 2x fewer FLOPs, then a short distillation
from the unpruned CNN, through :func:`frugalnn.methods.prune.recipe.run_prune`
as the CLI does: the baseline every other method's point is compared with.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def run_demo(ctx: Any) -> list[Path]:
    from frugalnn.data.splits import Splits
    from frugalnn.methods.prune.recipe import PruneConfig, run_prune

    backbone, _ = ctx.train_baseline()
    config = PruneConfig(target="flops=2", epochs=1 if ctx.quick else max(2, ctx.epochs // 5),
                         lr=0.01, batch_size=ctx.batch_size,
                         latency_batch_sizes=ctx.latency_batch_sizes,
                         latency_repeats=5 if ctx.quick else 20, seed=ctx.seed)
    splits = Splits(ctx.train_set, ctx.val_set, ctx.test_set,
                    getattr(ctx.test_set, "info", None))
    run = run_prune(backbone, config, splits, ctx.run_dir("pruned-flops2"), device=ctx.device,
                    threads=ctx.threads, progress=ctx.progress, force=True,
                    run_config={"demo": True, "seed": ctx.seed}, report=False)
    return [run.out]
