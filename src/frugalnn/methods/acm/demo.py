"""The ACM turn of ``frugalnn demo``: a small ViT's FFNs become 4 learners + a gate.

Trains (via the demo context, shared with other hooks using the same
arguments) a 2-block ViT on the demo data, converts both FFNs to adaptive
computation modules, runs the three training stages (scaled down in quick
mode) with :func:`frugalnn.methods.acm.recipe.acm` (the same as ``frugalnn acm
convert``), evaluates the ``q`` sweep and writes compute maps (learners per
patch) into the run's ``extras/``.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch

from frugalnn.errors import UserError

VIT = {"patch_size": 2, "dim": 128, "depth": 2, "heads": 2, "activation": "relu"}


def run_demo(ctx: Any) -> list[Path]:
    from frugalnn.methods.acm.recipe import ACMConfig, acm
    from frugalnn.methods.acm.report import write_extras

    shape = tuple(ctx.input_shape)
    if len(shape) != 3 or shape[1] != shape[2] or shape[1] % VIT["patch_size"]:
        return []  # the demo ViT needs square images
    model, _ = ctx.train_baseline("vit_tiny", epochs=10 if ctx.quick else 30, **VIT)
    teacher = copy.deepcopy(model)
    torch.manual_seed(ctx.seed)
    config = ACMConfig(learners=4, distill_epochs=2 if ctx.quick else 4,
                       gate_epochs=1 if ctx.quick else 2, finetune_epochs=1 if ctx.quick else 3,
                       finetune_lr=3e-4, target=0.5, batch_size=ctx.batch_size, seed=ctx.seed)
    converted = acm(model, config, train_data=ctx.train_set, device=ctx.device,
                    progress=ctx.progress)
    run = ctx.evaluate_run(converted, "acm", method="acm (per-token learners)")
    write_extras(converted, run, ctx.test_set, device=ctx.device)
    try:
        demo_rankings(ctx, teacher, run)
    except UserError as exc:  # e.g. a run without per-example FLOPs: ACM itself still ran
        print(f"[demo] difficulty rankings skipped: {exc}", flush=True)
    return [run]


def demo_rankings(ctx: Any, reference_model: Any, run: Path) -> Path:
    """Difficulty rankings across every run the demo has written so far (this hook runs
    last), plus a reference run of the ViT (loss, entropy, ReLU zero fraction).

    Full output in ``<demo>/rankings/``; the tables and the correlation heatmap are
    also copied into this run's ``extras/`` so the demo report shows them.
    """
    import shutil

    from frugalnn.analysis.rankings import input_dependent, reference_run, write_rankings
    from frugalnn.evaluation import atomic_writer

    reference_run(reference_model, ctx.test_set, ctx.out_dir / "reference-vit",
                  batch_size=ctx.batch_size, device=ctx.device, method="ViT reference",
                  force=True)
    ref = ctx.out_dir / "reference-vit"
    dynamic = [p.parent for p in sorted(ctx.out_dir.glob("*/records.csv"))
               if p.parent != ref and input_dependent(p.parent)]
    runs = [*dynamic, *([ctx.baseline_run] if ctx.baseline_run else []), ref]
    out = write_rankings(runs, ctx.out_dir / "rankings", dataset=ctx.test_set, force=True)
    text = out.read_text().split("## Figures")[0].replace("# Difficulty rankings",
                                                          "## Difficulty rankings (dynamic runs)")
    with atomic_writer(run / "extras" / "difficulty_rankings.md") as fh:
        fh.write(text + f"\nFigures and image grids: `{out.parent}`.\n")
    shutil.copyfile(out.parent / "correlation.png", run / "extras" / "difficulty_rankings.png")
    return out
