"""The early-exit turn of ``frugalnn demo``: SDN heads and Zero-Time-Waste on the demo CNN.

Takes the demo's trained baseline (shared with the other hooks), attaches a
head after every block but the last, trains the heads on the frozen backbone
from cached features, and evaluates two runs on the shared plane: plain SDN
heads, and ZTW (cascaded heads plus the geometric ensemble, the ensemble fitted
on a held-out fifth of the training examples). Each run gets the
per-exit table and plot in ``extras/``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader


def run_demo(ctx: Any) -> list[Path]:
    from frugalnn.methods.early_exit import attach_heads
    from frugalnn.methods.early_exit.offline import collect_trace
    from frugalnn.methods.early_exit.report import write_extras
    from frugalnn.methods.early_exit.training import cache_features, train_ensemble, train_heads

    backbone, _ = ctx.train_baseline()
    backbone.eval()
    plain_train = DataLoader(ctx.train_set, batch_size=256)  # in order; features only
    example = torch.stack([ctx.test_set[0][0]]).to(ctx.device)
    epochs = 8 if ctx.quick else 30
    runs = []
    cache = None
    for name, ztw in (("early-exit-sdn", False), ("early-exit-ztw", True)):
        torch.manual_seed(ctx.seed)
        model = attach_heads(backbone, "every", cascade=ztw, example_input=example)
        model.freeze_backbone = True
        if cache is None:  # both variants share the frozen backbone's features
            cache = cache_features(model, plain_train, device=ctx.device)
        # ZTW: the ensemble is fitted on a fifth of the examples the heads did not see.
        heads_data, ens_data = cache.split(0.2, seed=ctx.seed) if ztw else (cache, None)
        train_heads(model, heads_data, epochs=epochs, lr=3e-3, seed=ctx.seed, device=ctx.device)
        if ztw:
            train_ensemble(model, ens_data, epochs=epochs, seed=ctx.seed, device=ctx.device)
        model.eval()
        method = "early-exit ZTW" if ztw else "early-exit SDN"
        run = ctx.evaluate_run(model, name, method=method)
        trace = collect_trace(model, ctx.test_loader(), device=ctx.device)
        write_extras(trace, model.policy, run / "extras", title=method)
        runs.append(run)
    return runs
