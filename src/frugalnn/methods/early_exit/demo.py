"""The early-exit turn of ``frugalnn demo``: SDN heads and Zero-Time-Waste on the demo CNN.

Takes the demo's trained baseline (shared with the other hooks) and runs the
early-exit recipe (:func:`~frugalnn.methods.early_exit.recipe.run_early_exit`)
twice: plain SDN heads after every block but the last, trained on the frozen
backbone, and ZTW (cascaded heads plus the geometric ensemble, fitted on a
held-out fifth of the training examples). Each run gets the per-exit table and
plot in ``extras/``; thresholds are chosen on the demo's validation split when
it has one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def configs(quick: bool, seed: int, batch_size: int) -> dict[str, Any]:
    """The demo's two runs: ``{run name: EarlyExitConfig}``."""
    from frugalnn.methods.early_exit.recipe import EarlyExitConfig

    epochs = 8 if quick else 30
    common = {"epochs": epochs, "lr": 3e-3, "seed": seed,
              "latency_batch_sizes": [1, batch_size], "latency_repeats": 5 if quick else 20}
    return {
        "early-exit-sdn": EarlyExitConfig(**common),
        "early-exit-ztw": EarlyExitConfig.ztw(ensemble_holdout=0.2, ensemble_epochs=epochs,
                                              **common),
    }


def run_demo(ctx: Any) -> list[Path]:
    from frugalnn.data.splits import Splits
    from frugalnn.methods.early_exit.recipe import run_early_exit

    splits = Splits(ctx.train_set, getattr(ctx, "val_set", None), ctx.test_set,
                    getattr(ctx.test_set, "info", None))
    runs = []
    for name, config in configs(ctx.quick, ctx.seed, ctx.batch_size).items():
        backbone, _ = ctx.train_baseline()
        reference = (ctx.baseline_model_of(backbone) if hasattr(ctx, "baseline_model_of")
                     else None)
        out = ctx.run_dir(name)
        run = run_early_exit(
            backbone, config, splits, out, device=ctx.device, threads=ctx.threads,
            progress=ctx.progress, force=True, run_config={"demo": True, "seed": ctx.seed},
            baseline_flops=ctx.baseline_flops, baseline_accuracy=ctx.baseline_accuracy,
            report=False, reference_model=reference)
        runs.append(run.out)
    return runs
