"""The binary turn of ``frugalnn demo``: the trained demo CNN binarised (XNOR).

Its block convolutions get binary weights and inputs (stem and head stay
float), packed in 16-bit words (the demo CNN's widths, 16 x 3 x 3 = 144, are
not multiples of 64), trained briefly with distillation, evaluated and each
binary layer timed against its float layer, through
:func:`frugalnn.methods.binary.recipe.run_binarize` as the CLI does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def run_demo(ctx: Any) -> list[Path]:
    from frugalnn.data.splits import Splits
    from frugalnn.methods.binary.recipe import BinaryConfig, run_binarize

    backbone, _ = ctx.train_baseline()
    config = BinaryConfig(word_bits=16, epochs=2 if ctx.quick else max(3, ctx.epochs // 3),
                          lr=3e-3, batch_size=ctx.batch_size,
                          latency_batch_sizes=ctx.latency_batch_sizes,
                          latency_repeats=5 if ctx.quick else 20,
                          layer_repeats=5 if ctx.quick else 20,
                          layer_batch=ctx.batch_size, seed=ctx.seed)
    splits = Splits(ctx.train_set, ctx.val_set, ctx.test_set,
                    getattr(ctx.test_set, "info", None))
    run = run_binarize(backbone, config, splits, ctx.run_dir("binary-xnor"), device=ctx.device,
                       threads=ctx.threads, progress=ctx.progress, force=True,
                       run_config={"demo": True, "seed": ctx.seed}, report=False)
    return [run.out]
