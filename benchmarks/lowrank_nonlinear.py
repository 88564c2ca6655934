"""Nonlinear vs linear tensor factorisation at equal parameters: ResNet-56 on CIFAR-10 (JPEG).

The question: at the same parameter count, does a factorised layer with a
learnable nonlinearity between its factors (``tt-nl``, ``tucker-nl``,
:mod:`frugalnn.methods.lowrank.nonlinear`) end more accurate than the linear
chain (``tt``, ``tucker``)? Pipeline (one command, fixed seeds):

1. the baseline ResNet-56 of ``benchmarks/lowrank_resnet56.py`` (pretrained
   checkpoint, fine-tuned on the JPEG training subset, or ``--baseline-cache``);
2. per method, the low-rank recipe (:func:`frugalnn.methods.lowrank.recipe.compress`)
   at ``--target params=3`` (every 3x3 convolution with >= 3x fewer parameters;
   a nonlinear chain has the linear chain's ranks plus 2 parameters per
   bottleneck channel, reported exactly), then the same end-to-end
   distillation fine-tune (``--finetune-epochs``) for every method. The
   nonlinear methods first fit each layer to its original for
   ``--layerwise-steps`` steps; ``tt+lw`` / ``tucker+lw`` give the linear
   chains that same layer-wise step, so that the nonlinearity's effect is
   separated from the extra training;
3. choices on validation: each method's fine-tuning learning rate is picked
   from ``--lrs`` by validation accuracy at the first seed; then every seed in
   ``--seeds`` is run at that rate (training seeds; the splits stay those of
   ``--seed``), and test accuracy is reported as mean and standard deviation;
4. cost of the first seed's model: :func:`frugalnn.methods.lowrank.recipe.compare_into`
   (parameters, FLOPs, latency at batch 1 and ``--batch-size``).

Full scale: ``FULL_SCALE`` below. The timing (step 4) holds the shared timing
lock ``/tmp/frugalnn-timing.lock`` itself; training does not. The defaults are a
smoke-sized run for a shared 2-core CPU; the results file states the scale used.
Writes ``--markdown`` (default ``benchmarks/results/lowrank_nonlinear.md``) and
``--out`` (JSON).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from _common import (
    add_split_flags,
    log,
    results_header,
    splits_from_args,
    timing_lock,
    write_results,
)
from lowrank_resnet56 import baseline
from torch.utils.data import DataLoader

from frugalnn.cost.machine import describe_machine
from frugalnn.evaluation.loop import loader_accuracy
from frugalnn.methods.lowrank.recipe import LowRankConfig, compare_into, compress
from frugalnn.utils.io import write_json_atomic

FULL_SCALE = ("python benchmarks/lowrank_nonlinear.py --data-dir $FRUGALNN_DATA "
              "--baseline-epochs 5 --train-limit 45000 --val-limit 5000 --test-limit 10000 "
              "--finetune-epochs 10 --layerwise-steps 500 --lrs 0.01,0.003 --seeds 0,1,2 "
              "--augment --repeats 30")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_split_flags(p, data="cifar10")
    p.set_defaults(train_limit=2000, val_limit=500, test_limit=1000,
                   data_dir=os.environ.get("FRUGALNN_DATA"))
    p.add_argument("--methods", default="tt,tt+lw,tt-nl,tucker,tucker+lw,tucker-nl",
                   help="linear (tt, tucker), linear with the layer-wise step (tt+lw) and "
                        "nonlinear (tt-nl, tucker-nl) methods")
    p.add_argument("--target", default="params=3")
    p.add_argument("--exclude", nargs="*", default=["conv1"],
                   help="module-name patterns left dense (default: the 3-channel stem)")
    p.add_argument("--seeds", default="0,1,2", help="training seeds")
    p.add_argument("--lrs", default="0.01", help="fine-tuning learning rates to choose from "
                   "on validation (SGD)")
    p.add_argument("--layerwise-steps", type=int, default=200)
    p.add_argument("--layerwise-lr", type=float, default=1e-3)
    p.add_argument("--baseline-epochs", type=int, default=1)
    p.add_argument("--finetune-epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--train-threads", type=int,
                   help="torch threads while training (default: --threads, used for timing)")
    p.add_argument("--augment", action="store_true", help="random crop + flip for training")
    p.add_argument("--baseline-cache", help="safetensors file of the fine-tuned baseline "
                   "(loaded if it exists, else written; same flags assumed)")
    p.add_argument("--work", default="runs/bench/lowrank_nonlinear")
    p.add_argument("--out", default="benchmarks/results/lowrank_nonlinear.json")
    p.add_argument("--markdown", default="benchmarks/results/lowrank_nonlinear.md")
    args = p.parse_args(argv)
    args.seeds = [int(s) for s in args.seeds.split(",") if s]
    args.lrs = [float(v) for v in args.lrs.split(",") if v]
    args.methods = [m for m in args.methods.split(",") if m]
    return args


def config_for(name: str, lr: float, seed: int, args: argparse.Namespace) -> LowRankConfig:
    """The recipe config of one method name (``tt``, ``tt+lw``, ``tt-nl``, ...)."""
    method, _, extra = name.partition("+")
    layerwise = args.layerwise_steps if extra == "lw" or method.endswith("-nl") else 0
    return LowRankConfig(
        method=method, target=args.target, exclude=args.exclude or None,
        finetune_epochs=args.finetune_epochs, layerwise_steps=layerwise,
        layerwise_lr=args.layerwise_lr, lr=lr, batch_size=args.batch_size,
        latency_batch=args.batch_size, latency_batch_sizes=(1, args.batch_size),
        latency_repeats=args.repeats, seed=seed)


def run_one(name: str, lr: float, seed: int, base: torch.nn.Module, splits: Any,
            example: torch.Tensor, loaders: dict[str, DataLoader],
            args: argparse.Namespace) -> dict[str, Any]:
    config = config_for(name, lr, seed, args)
    t0 = time.time()
    torch.set_num_threads(args.train_threads or args.threads)
    model, plan, hist = compress(base, config, train_data=splits.train, val_data=splits.val,
                                 example=example, threads=args.threads)
    torch.set_num_threads(args.threads)
    row = {"method": name, "lr": lr, "seed": seed, "seconds": time.time() - t0,
           "val": loader_accuracy(model, loaders["val"]),
           "test": loader_accuracy(model, loaders["test"]),
           "params": sum(p.numel() for p in model.parameters()),
           "layerwise": hist.get("layerwise"),
           "epoch_seconds": [r.get("epoch_seconds") for r in hist.get("finetune", [])]}
    row["model"], row["plan"], row["config"] = model, plan, config
    log(f"{name} lr {lr} seed {seed}: val {100 * row['val']:.2f} test {100 * row['test']:.2f} "
        f"params {row['params']:,} ({row['seconds']:.0f} s)")
    return row


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.data_dir:
        print("set --data-dir or FRUGALNN_DATA", file=sys.stderr)
        return 2
    torch.set_num_threads(args.train_threads or args.threads)
    torch.manual_seed(args.seed)
    splits = splits_from_args(args, augment=args.augment)
    sizes = {"train": len(splits.train), "val": len(splits.val), "test": len(splits.test)}
    loaders = {"val": DataLoader(splits.val, batch_size=256),
               "test": DataLoader(splits.test, batch_size=256)}
    base = baseline(args, splits.train, loaders["test"])
    base_acc = {k: loader_accuracy(base, v) for k, v in loaders.items()}
    example = torch.stack([splits.test[i][0] for i in range(2)])
    results: dict[str, dict[str, Any]] = {}
    for name in args.methods:
        first = {lr: run_one(name, lr, args.seeds[0], base, splits, example, loaders, args)
                 for lr in args.lrs}
        lr = max(first, key=lambda v: first[v]["val"])
        runs = [first[lr]] + [run_one(name, lr, s, base, splits, example, loaders, args)
                              for s in args.seeds[1:]]
        chosen = runs[0]
        work = Path(args.work) / re.sub(r"[^A-Za-z0-9_.=+-]+", "_", name)
        with timing_lock():
            cmp = compare_into(work, base, chosen["model"], chosen["plan"], example,
                               chosen["config"], label=f"{chosen['config'].label} (ResNet-56)",
                               threads=args.threads)
        tests = [r["test"] for r in runs]
        results[name] = {
            "lr": lr, "lr_choice": {str(v): r["val"] for v, r in first.items()},
            "test_mean": statistics.mean(tests),
            "test_std": statistics.stdev(tests) if len(tests) > 1 else 0.0,
            "val_mean": statistics.mean(r["val"] for r in runs),
            "runs": [{k: v for k, v in r.items() if k not in ("model", "plan", "config")}
                     for r in runs],
            "compare": cmp,
        }
    write_json_atomic(args.out, {"args": vars(args), "machine": describe_machine(),
                                 "sizes": sizes, "baseline": base_acc, "results": results})
    log(f"wrote {args.out}")
    write_results(args.markdown, markdown(args, results, base_acc, sizes))
    return 0


def markdown(args: argparse.Namespace, results: dict[str, dict[str, Any]],
             base_acc: dict[str, float], sizes: dict[str, int]) -> str:
    b = args.batch_size
    lines = [
        results_header(f"Nonlinear vs linear factorisation, ResNet-56 / CIFAR-10 (JPEG), "
                       f"{args.target}"),
        f"Scale: baseline fine-tuned {args.baseline_epochs} epoch(s); every compressed model "
        f"{args.finetune_epochs} epoch(s) of distillation on a random {sizes['train']} JPEG "
        f"train images{' (random crop + flip)' if args.augment else ''}; nonlinear and `+lw` "
        f"methods first {args.layerwise_steps} layer-wise steps (Adam {args.layerwise_lr}). "
        f"Learning rate chosen from {args.lrs} on {sizes['val']} validation images "
        f"(seed {args.seeds[0]}); test accuracy on {sizes['test']} JPEG test images, mean "
        f"+- std over training seeds {args.seeds}. Baseline: "
        f"{100 * base_acc['test']:.2f} % test, {100 * base_acc['val']:.2f} % validation. "
        f"Full scale: `{FULL_SCALE}`.\n",
        f"| method | lr | params | FLOPs/example | val % | test % (mean +- std) | "
        f"vs baseline (pt) | latency b1 ms | latency b{b} ms | load |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for i, (name, r) in enumerate(results.items()):
        o, c = r["compare"]["models"]["original"], r["compare"]["models"]["compressed"]
        if i == 0:
            lines.append(
                f"| dense baseline | | {o['params']:,} | {o['flops'] / 1e6:.1f}M | "
                f"{100 * base_acc['val']:.2f} | {100 * base_acc['test']:.2f} | | "
                f"{o['latency_ms_b1']:.2f} | {o[f'latency_ms_b{b}']:.1f} | "
                f"{o.get(f'loadavg_b{b}')} |")
        lines.append(
            f"| {name} | {r['lr']:g} | {c['params']:,} ({r['compare']['params_ratio']:.2f}x) "
            f"| {c['flops'] / 1e6:.1f}M ({r['compare']['flops_ratio']:.2f}x) | "
            f"{100 * r['val_mean']:.2f} | {100 * r['test_mean']:.2f} +- "
            f"{100 * r['test_std']:.2f} | {100 * (r['test_mean'] - base_acc['test']):+.2f} | "
            f"{c['latency_ms_b1']:.2f} ({r['compare']['speedup_b1']:.2f}x) | "
            f"{c[f'latency_ms_b{b}']:.1f} ({r['compare'][f'speedup_b{b}']:.2f}x) | "
            f"{c.get(f'loadavg_b{b}')} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
