"""Demo hook: search a small network for the demo data at a latency target.

Times the candidate ops of a space sized for the demo's images on this CPU,
trains a MobileNetV2-style baseline of the same space (``mb3_e6`` in every
block), searches at 70 % of the baseline's predicted latency with the recipe
(:mod:`frugalnn.methods.nas.recipe`; architecture steps on the demo's
validation split when it has one, else on a seeded share of its training
set), retrains the found network from scratch and evaluates both on the
shared plane.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from frugalnn.methods.nas.latency import LatencyModel, measure_networks_ms
from frugalnn.methods.nas.net import baseline_arch
from frugalnn.methods.nas.pipeline import write_search_extras
from frugalnn.methods.nas.recipe import (
    NASConfig,
    latency_table,
    search_architecture,
    search_space,
    with_target,
)

__all__ = ["run_demo"]


def run_demo(ctx: Any) -> list[Path]:
    import torch

    from frugalnn.models import create_model

    quick = bool(ctx.quick)
    epochs = 2 if quick else max(4, ctx.epochs // 2)
    config = NASConfig(epochs=2 if quick else 6, warmup_epochs=1 if quick else 2, arch_lr=0.02,
                       batch_size=ctx.batch_size, table=str(ctx.out_dir / "nas_latency_table.json"),
                       threads=ctx.threads or 1, repeats=5 if quick else 20,
                       rounds=1 if quick else 2, calibrate=0 if quick else 5, seed=ctx.seed)
    space = search_space(config, tuple(ctx.input_shape), ctx.num_classes)
    base = baseline_arch(space)
    _, base_run = ctx.train_baseline("nas_net", arch=base, epochs=epochs)
    table = latency_table(config, space, "cpu", ctx.progress)
    target = 0.7 * table.predict(space, base["ops"])
    config = with_target(config, max(target, 1.02 * LatencyModel(space, table).cheapest()[1]))
    found = search_architecture(config, ctx.train_set, getattr(ctx, "val_set", None),
                                space=space, table=table, device=ctx.device,
                                progress=ctx.progress)
    torch.manual_seed(ctx.seed)
    model = create_model("nas_net", arch=found.arch)
    ctx.fit(model, epochs=epochs)
    model.eval()
    run = ctx.evaluate_run(model, "nas", method="nas")
    write_search_extras(run, found.supernet, found.result, config.search_config(), table,
                        force=True)
    measured = measure_networks_ms([base["ops"], found.result.ops], space,
                                   threads=ctx.threads or 1, repeats=config.repeats,
                                   rounds=config.rounds, progress=False)
    with (run / "extras" / "nas_search.md").open("a") as fh:
        fh.write(f"\nMeasured latency (batch 1): found {measured[1]:.3f} ms vs baseline "
                 f"{measured[0]:.3f} ms ({measured[0] / measured[1]:.2f}x); predicted "
                 f"{found.result.predicted_ms:.3f} ms.\n")
    return [base_run, run]
