"""Capsule networks on MNIST: train, compress (low-rank), measure.

Pipeline (one command, fixed seeds; choices on the validation split only):

1. for each model (``--models``, default ``capsnet_efficient``), train with the
   model's own loss (margin loss, + reconstruction for ``capsnet``) for
   ``--max-epochs`` with seed ``--seeds[0]``, scoring the validation split
   (carved from train) after every epoch; the epoch count with the best
   validation accuracy is the one used for every seed;
2. train every seed (``--seeds``, default 0,1,2) for that many epochs; test
   accuracy per seed (mean and standard deviation reported);
3. compress each seed's model with the low-rank recipe
   (:func:`frugalnn.methods.lowrank.recipe.compress`): ``--method``
   (default ``tucker``) to ``--target`` (default ``params=5``) on the primary
   capsule convolution, the other KxK convolutions and the capsule
   transformation tensor (:mod:`frugalnn.methods.lowrank.capsule`), then
   ``--finetune-epochs`` of distillation fine-tuning from the dense model;
4. :func:`frugalnn.methods.lowrank.recipe.compare_into`: parameters, FLOPs,
   test accuracy and latency at batch 1 and ``--batch-size`` (dense and
   compressed timed alternately in the same process).

The timing (step 4) holds the shared timing lock ``/tmp/frugalnn-timing.lock``
itself; training does not. Full scale::

    python benchmarks/capsnet_mnist.py --data-dir $FRUGALNN_DATA --train-limit 54000 \\
        --val-limit 6000 --max-epochs 15 --decay 0.8 --augment --finetune-epochs 2 \\
        --target params=8 --exclude stem.0

The defaults are a scaled-down run (``--train-limit 5000``); the results file
states the scale used. Writes ``--markdown`` and ``--out`` (JSON).
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from _common import (
    add_split_flags,
    log,
    mean_sd,
    results_header,
    splits_from_args,
    timing_lock,
    write_results,
)
from torch.utils.data import DataLoader

from frugalnn.cost.count import flops_per_example
from frugalnn.cost.machine import describe_machine
from frugalnn.errors import UserError
from frugalnn.evaluation.loop import loader_accuracy
from frugalnn.methods.lowrank.recipe import LowRankConfig, compare_into, compress
from frugalnn.models import create_model
from frugalnn.train import fit
from frugalnn.utils.io import write_json_atomic

FULL_SCALE = ("python benchmarks/capsnet_mnist.py --data-dir $FRUGALNN_DATA --train-limit 54000 "
              "--val-limit 6000 --max-epochs 15 --decay 0.8 --augment --finetune-epochs 2 "
              "--target params=8 --exclude stem.0")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_split_flags(p, data="mnist")
    p.set_defaults(train_limit=5000, val_limit=1000, test_limit=10000,
                   data_dir=os.environ.get("FRUGALNN_DATA"))
    p.add_argument("--models", default="capsnet_efficient",
                   help="comma-separated: capsnet_efficient, capsnet")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--max-epochs", type=int, default=10, help="epochs tried on validation")
    p.add_argument("--lr", type=float, default=5e-3, help="Adam learning rate")
    p.add_argument("--decay", type=float, default=0.97, help="learning rate factor per epoch")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--method", default="tucker", help="cp, tucker or tt")
    p.add_argument("--target", default="params=5")
    p.add_argument("--exclude", nargs="*", default=[],
                   help="module-name patterns left dense (e.g. stem.0, the 1-channel stem)")
    p.add_argument("--finetune-epochs", type=int, default=2)
    p.add_argument("--finetune-lr", type=float, default=1e-3)
    p.add_argument("--augment", action="store_true",
                   help="augment the training images (MNIST: random shifts of up to 2 px; "
                        "CIFAR-10: random crops and flips), new draws every epoch")
    p.add_argument("--timing-only", action="store_true",
                   help="no training: time the untrained model against its compressed copy "
                        "(same shapes and ranks as a trained run; no accuracy)")
    p.add_argument("--rounds", type=int, default=3,
                   help="with --timing-only: alternating timing rounds (median speed-up)")
    p.add_argument("--threads", type=int, default=1, help="torch threads for the timing")
    p.add_argument("--train-threads", type=int, help="torch threads while training")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--work", default="runs/bench/capsnet_mnist")
    p.add_argument("--out", default="benchmarks/results/capsnet.json")
    p.add_argument("--markdown", default="benchmarks/results/capsnet.md")
    return p.parse_args(argv)


def build(name: str, splits: Any) -> torch.nn.Module:
    """Registry model ``name`` shaped for the dataset of ``splits``."""
    info = splits.info
    return create_model(name, in_channels=info.input_shape[0], image_size=info.input_shape[1],
                        num_classes=info.num_classes)


def train(name: str, args: argparse.Namespace, splits: Any, seed: int, epochs: int,
          with_val: bool) -> tuple[torch.nn.Module, list[dict[str, Any]]]:
    torch.manual_seed(seed)
    model = build(name, splits)
    gen = torch.Generator().manual_seed(seed)
    loader = DataLoader(splits.train, batch_size=args.batch_size, shuffle=True, generator=gen)
    val = (DataLoader(splits.val, batch_size=256)
           if with_val and splits.val is not None else None)
    result = fit(model, loader, epochs=epochs, optimizer="adamw", lr=args.lr, weight_decay=0.0,
                 schedule="step", schedule_unit="epoch", step_size=1, gamma=args.decay,
                 seed=seed, eval_loader=val, progress=False)
    return model.eval(), result.history


def budget_curve(model: torch.nn.Module, test_loader: Any,
                 example: torch.Tensor) -> list[dict[str, float]]:
    """Test accuracy and FLOPs per example at every value of the model's budget knob
    (routing iterations of the dynamic-routing CapsNet); empty for a model without one."""
    if not hasattr(model, "budget_values"):
        return []
    curve = []
    try:
        for value in model.budget_values():
            model.set_budget(value)
            curve.append({"budget": value, "accuracy": loader_accuracy(model, test_loader),
                          "flops": flops_per_example(model, example)})
    finally:
        model.set_budget(model.full_budget())
    log("  budget curve: " + ", ".join(f"{c['budget']:g}: {100 * c['accuracy']:.2f} %"
                                       for c in curve))
    return curve


def time_untrained(name: str, args: argparse.Namespace, splits: Any) -> dict[str, Any]:
    """Latency of the untrained model against its compressed copy (no fine-tuning), in
    ``--rounds`` rounds: speed depends on the shapes and ranks only, and a rank target
    that counts parameters or FLOPs picks the same ranks whatever the weights."""
    torch.manual_seed(0)
    dense = build(name, splits).eval()
    example = torch.stack([splits.test[i][0] for i in range(2)])
    config = LowRankConfig(method=args.method, target=args.target,
                           exclude=args.exclude or None, finetune_epochs=0,
                           latency_batch_sizes=(1, args.batch_size),
                           latency_repeats=args.repeats)
    small, plan, _ = compress(copy.deepcopy(dense), config, example=example,
                              threads=args.threads)
    torch.set_num_threads(args.threads)
    rounds = []
    with timing_lock():
        for r in range(args.rounds):
            cmp = compare_into(Path(args.work) / f"{name}_timing{r}", dense, small, plan,
                               example, config, label=f"{config.label} ({name})",
                               threads=args.threads)
            rounds.append(cmp)
    b = args.batch_size
    return {"timing_only": True, "rounds": [
        {"params": [c["models"]["original"]["params"], c["models"]["compressed"]["params"]],
         "flops_ratio": c["flops_ratio"], "params_ratio": c["params_ratio"],
         "ms_b1": [c["models"]["original"]["latency_ms_b1"],
                   c["models"]["compressed"]["latency_ms_b1"]],
         f"ms_b{b}": [c["models"]["original"][f"latency_ms_b{b}"],
                      c["models"]["compressed"][f"latency_ms_b{b}"]],
         "speedup_b1": c["speedup_b1"], f"speedup_b{b}": c[f"speedup_b{b}"],
         "load": c["models"]["compressed"].get(f"loadavg_b{b}")} for c in rounds]}


def timing_markdown(args: argparse.Namespace, results: dict[str, Any]) -> str:
    b = args.batch_size
    lines = [
        results_header(f"Capsule networks ({args.data} shapes), untrained: dense vs low-rank "
                       f"{args.method} {args.target}, latency only"),
        f"Untrained weights (speed depends on shapes and ranks only); {args.rounds} rounds, "
        f"each the median of {args.repeats} calls per model, dense and compressed "
        f"alternating; {args.threads} thread(s); speed-up: median (min-max) over rounds.\n",
        f"| model | params | FLOPs ratio | b1 ms dense -> compressed | speed-up b1 | "
        f"b{b} ms dense -> compressed | speed-up b{b} | load |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        rs = r["rounds"]

        def med(key: str, i: int | None = None, rs: list = rs) -> float:
            return statistics.median(x[key] if i is None else x[key][i] for x in rs)

        def spread(key: str, rs: list = rs) -> str:
            vals = [x[key] for x in rs]
            return f"{statistics.median(vals):.2f}x ({min(vals):.2f}-{max(vals):.2f})"

        lines.append(
            f"| {name} | {rs[0]['params'][0]:,} -> {rs[0]['params'][1]:,} "
            f"({rs[0]['params_ratio']:.2f}x) | {rs[0]['flops_ratio']:.2f}x | "
            f"{med('ms_b1', 0):.2f} -> {med('ms_b1', 1):.2f} | {spread('speedup_b1')} | "
            f"{med(f'ms_b{b}', 0):.1f} -> {med(f'ms_b{b}', 1):.1f} | "
            f"{spread(f'speedup_b{b}')} | {rs[-1]['load']} |")
    return "\n".join(lines) + "\n"


def run_model(name: str, args: argparse.Namespace, splits: Any) -> dict[str, Any]:
    seeds = [int(s) for s in args.seeds.split(",") if s]
    test_loader = DataLoader(splits.test, batch_size=256)
    t0 = time.time()
    first, history = train(name, args, splits, seeds[0], args.max_epochs, with_val=True)
    per_epoch = (time.time() - t0) / args.max_epochs
    accs = [r.get("eval_acc", 0.0) for r in history]
    best = 1 + max(range(len(accs)), key=lambda i: accs[i])
    log(f"{name}: {per_epoch:.1f} s/epoch; validation accuracy per epoch "
        f"{', '.join(f'{100 * a:.2f}' for a in accs)}; using {best} epoch(s)")
    example = torch.stack([splits.test[i][0] for i in range(2)])
    runs = []
    for seed in seeds:
        if seed == seeds[0] and best == args.max_epochs:
            dense = first
        else:
            dense, _ = train(name, args, splits, seed, best, with_val=False)
        dense_acc = loader_accuracy(dense, test_loader)
        log(f"  seed {seed}: dense test accuracy {100 * dense_acc:.2f} %")
        curve = budget_curve(dense, test_loader, example)
        config = LowRankConfig(method=args.method, target=args.target,
                               exclude=args.exclude or None,
                               finetune_epochs=args.finetune_epochs, lr=args.finetune_lr,
                               optimizer="adamw", weight_decay=0.0, batch_size=args.batch_size,
                               latency_batch_sizes=(1, args.batch_size),
                               latency_repeats=args.repeats, seed=seed)
        try:
            small, plan, hist = compress(copy.deepcopy(dense), config, train_data=splits.train,
                                         val_data=splits.val, example=example,
                                         threads=args.train_threads or args.threads)
        except UserError as exc:
            log(f"  seed {seed}: not compressed: {exc}")
            runs.append({"seed": seed, "dense_accuracy": dense_acc, "error": str(exc),
                         "budget_curve": curve})
            continue
        torch.set_num_threads(args.threads)
        with timing_lock():
            cmp = compare_into(Path(args.work) / f"{name}_seed{seed}", dense, small, plan,
                               example, config, test_data=splits.test,
                               label=f"{config.label} ({name})", threads=args.threads)
        torch.set_num_threads(args.train_threads or args.threads)
        cmp.update(seed=seed, dense_accuracy=dense_acc, plan=[r.to_dict() for r in plan],
                   finetune_history=hist, budget_curve=curve)
        c = cmp["models"]["compressed"]
        log(f"  seed {seed}: compressed params {cmp['params_ratio']:.2f}x fewer, FLOPs "
            f"{cmp['flops_ratio']:.2f}x, speed-up b{args.batch_size} "
            f"{cmp[f'speedup_b{args.batch_size}']:.2f}x, accuracy {100 * c['accuracy']:.2f} %")
        runs.append(cmp)
    return {"epochs": best, "seconds_per_epoch": per_epoch, "val_history": history,
            "runs": runs}




def _latency(runs: list[dict[str, Any]], size: int) -> str:
    """First seed's dense -> compressed latency at batch ``size``, speed-up over all seeds."""
    o, c = runs[0]["models"]["original"], runs[0]["models"]["compressed"]
    speed = [x[f"speedup_b{size}"] for x in runs]
    return (f"{o[f'latency_ms_b{size}']:.2f} -> {c[f'latency_ms_b{size}']:.2f} "
            f"({mean_sd(speed)}x over seeds)")


def markdown(args: argparse.Namespace, results: dict[str, Any], sizes: dict[str, int]) -> str:
    b = args.batch_size
    lines = [
        results_header(f"Capsule networks on {args.data}: dense vs low-rank {args.method} "
                       f"{args.target}"),
        f"Scale: {sizes['train']} training images, {sizes['val']} validation images (epochs "
        f"chosen on them, up to {args.max_epochs}), {sizes['test']} test images; seeds "
        f"{args.seeds}; Adam lr {args.lr} x {args.decay}/epoch, batch {args.batch_size}; "
        f"{'augmented training images; ' if args.augment else ''}"
        f"compression fine-tuned {args.finetune_epochs} epoch(s) with distillation"
        f"{'; left dense: ' + ', '.join(args.exclude) if args.exclude else ''}; latency "
        f"median of {args.repeats} repeats ({args.threads} thread), dense and compressed "
        f"alternating. Full scale: `{FULL_SCALE}`.\n",
        f"| model | epochs | dense acc. % | compressed val. % | compressed acc. % | params | "
        f"FLOPs/example | latency b1 ms (speed-up) | latency b{b} ms (speed-up) | load |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        ok = [x for x in r["runs"] if "models" in x]
        dense = [100 * x["dense_accuracy"] for x in r["runs"]]
        comp = [100 * x["models"]["compressed"]["accuracy"] for x in ok]
        if not ok:
            lines.append(f"| {name} | {r['epochs']} | {mean_sd(dense)} | - | not compressed | "
                         "- | - | - | - | - |")
            continue
        o, c = ok[0]["models"]["original"], ok[0]["models"]["compressed"]
        val = [100 * x["finetune_history"]["finetune"][-1]["eval_acc"] for x in ok
               if x["finetune_history"].get("finetune")]
        lines.append(
            f"| {name} | {r['epochs']} | {mean_sd(dense)} | {mean_sd(val)} | "
            f"{mean_sd(comp)} | "
            f"{o['params']:,} -> {c['params']:,} ({ok[0]['params_ratio']:.2f}x) | "
            f"{o['flops'] / 1e6:.1f}M -> {c['flops'] / 1e6:.1f}M ({ok[0]['flops_ratio']:.2f}x) | "
            f"{_latency(ok, 1)} | {_latency(ok, b)} | {c.get(f'loadavg_b{b}')} |")
    for name, r in results.items():
        curves = [x["budget_curve"] for x in r["runs"] if x.get("budget_curve")]
        if not curves:
            continue
        lines += ["", f"{name}, budget knob (routing iterations), dense models, test accuracy "
                  "mean ± sd over seeds:", "", "| iterations | test acc. % | FLOPs/example |",
                  "|---|---|---|"]
        for i, point in enumerate(curves[0]):
            accs = [100 * c[i]["accuracy"] for c in curves]
            lines.append(f"| {point['budget']:g} | {mean_sd(accs)} | "
                         f"{point['flops'] / 1e6:.1f}M |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.data_dir:
        print("set --data-dir or FRUGALNN_DATA", file=sys.stderr)
        return 2
    torch.set_num_threads(args.train_threads or args.threads)
    splits = splits_from_args(args, augment=args.augment)
    sizes = {"train": len(splits.train), "test": len(splits.test),
             "val": len(splits.val) if splits.val is not None else 0}
    run = time_untrained if args.timing_only else run_model
    results = {name: run(name, args, splits) for name in args.models.split(",") if name}
    write_json_atomic(args.out, {"args": vars(args), "machine": describe_machine(),
                                 "sizes": sizes, "results": results})
    log(f"wrote {args.out}")
    write_results(args.markdown, timing_markdown(args, results) if args.timing_only
                  else markdown(args, results, sizes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
