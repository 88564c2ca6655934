"""Demo hook: search a small network for the demo data at a latency target.

Times the candidate ops of a space sized for the demo's images on this CPU,
trains a MobileNetV2-style baseline of the same space (``mb3_e6`` in every
block), searches at 70 % of the baseline's predicted latency, retrains the
found network from scratch and evaluates both on the shared plane.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from frugalnn.methods.nas.latency import LatencyModel, build_latency_table, measure_networks_ms
from frugalnn.methods.nas.net import baseline_arch
from frugalnn.methods.nas.pipeline import search, write_search_extras
from frugalnn.methods.nas.search import SearchConfig
from frugalnn.methods.nas.space import SearchSpace

__all__ = ["run_demo"]


def run_demo(ctx: Any) -> list[Path]:
    from frugalnn.models import create_model

    quick = bool(ctx.quick)
    space = SearchSpace.for_input(tuple(ctx.input_shape), ctx.num_classes)
    base = baseline_arch(space)
    epochs = 2 if quick else max(4, ctx.epochs // 2)
    _, base_run = ctx.train_baseline("nas_net", arch=base, epochs=epochs)
    table_path = ctx.out_dir / "nas_latency_table.json"
    table = build_latency_table(space, "cpu", threads=ctx.threads or 1,
                                repeats=5 if quick else 20, rounds=1 if quick else 2,
                                path=table_path, calibrate=0 if quick else 5, seed=ctx.seed,
                                progress=ctx.progress)
    target = 0.7 * table.predict(space, base["ops"])
    target = max(target, 1.02 * LatencyModel(space, table).cheapest()[1])
    cfg = SearchConfig(latency_target_ms=target, epochs=2 if quick else 6,
                       warmup_epochs=1 if quick else 2, arch_lr=0.02, seed=ctx.seed)
    net, result = search(space, table, ctx.train_set, cfg, batch_size=ctx.batch_size,
                         device=ctx.device, progress=ctx.progress)
    torch.manual_seed(ctx.seed)
    model = create_model("nas_net", arch={"space": space.to_dict(), "ops": result.ops})
    ctx.fit(model, epochs=epochs)
    model.eval()
    run = ctx.evaluate_run(model, "nas", method="nas")
    write_search_extras(run, net, result, cfg, table, force=True)
    measured = measure_networks_ms([base["ops"], result.ops], space, threads=ctx.threads or 1,
                                   repeats=5 if quick else 20, rounds=1 if quick else 2,
                                   progress=False)
    with (run / "extras" / "nas_search.md").open("a") as fh:
        fh.write(f"\nMeasured latency (batch 1): found {measured[1]:.3f} ms vs baseline "
                 f"{measured[0]:.3f} ms ({measured[0] / measured[1]:.2f}x); predicted "
                 f"{result.predicted_ms:.3f} ms.\n")
    return [base_run, run]
