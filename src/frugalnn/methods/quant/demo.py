"""The int8 turn of ``frugalnn demo``: the trained demo baseline, statically quantised
(calibrated on the training split), evaluated against it, through
:func:`frugalnn.methods.quant.recipe.run_quant` as the CLI does."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def run_demo(ctx: Any) -> list[Path]:
    from frugalnn.data.splits import Splits
    from frugalnn.methods.quant.recipe import QuantConfig, run_quant

    backbone, base_run = ctx.train_baseline()
    config = QuantConfig(mode="static", calibration_size=256, batch_size=ctx.batch_size,
                         latency_batch_sizes=tuple(ctx.latency_batch_sizes),
                         latency_repeats=5 if ctx.quick else 20, seed=ctx.seed)
    splits = Splits(ctx.train_set, ctx.val_set, ctx.test_set,
                    getattr(ctx.test_set, "info", None))
    run = run_quant(backbone.cpu().eval(), config, splits, ctx.run_dir("int8-static"),
                    threads=ctx.threads, progress=ctx.progress, force=True,
                    run_config={"demo": True, "seed": ctx.seed}, baseline_run=base_run,
                    report=False)
    return [run.out]
