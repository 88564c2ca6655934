"""Channel-pruned ResNet-56 on CIFAR-10 (JPEG) at 2x fewer FLOPs: the peer baseline.

Pipeline (one command, seeds fixed before the run):

1. ResNet-56 from the pretrained checkpoint (``--checkpoint``; trained on the
   original CIFAR-10 pixels, evaluated here on the JPEG test images);
2. per seed, the pruning recipe (:func:`frugalnn.methods.prune.recipe.run_prune`):
   torch-pruning removes output channels of the ``--include`` layers (default
   ``blocks.*.conv1``: each residual block's inner channels, so the residual
   stream and its zero-padded option-A shortcuts keep their width; L2 group
   magnitude, per layer, the dependants pruned with them) in small steps until the
   MACs are ``--target`` (``flops=2``: the budget is fixed by cost, not chosen
   on any split), then ``--epochs`` of distillation from the unpruned model
   (fixed up front) on the training subset; saved, evaluated on the test and
   validation splits; the pruned model without fine-tuning (data-free: beside
   the data-free low-rank ResNet-56 of ``results/lowrank.md``) once too;
3. the unpruned model and every saved pruned checkpoint timed at batch 1 and
   ``--batch-size`` (1 thread, median of ``--repeats`` calls), alternating within
   each of ``--passes`` passes, in one process.

Splits: :func:`frugalnn.data.splits.load_splits` (validation carved from train,
split seed 0; the same examples for every training seed). The defaults are a
scaled-down run for a shared 2-core CPU; the results say the scale used.
``--phase train`` does steps 1-2 without timing (no lock needed); ``--phase
time`` times the saved checkpoints of ``--out`` and writes the tables; run that
(or ``--phase all``) under the timing lock:
``flock /tmp/frugalnn-timing.lock python benchmarks/prune_resnet56.py --phase time``.
Writes ``--markdown`` (pasted into ``results/prune.md``) and ``--out`` (JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path
from typing import Any

import torch
from _common import alternating_latency_ms, log, one_line_errors, results_header, write_results

from frugalnn.data.splits import load_splits
from frugalnn.errors import UserError
from frugalnn.methods.prune.recipe import PruneConfig, run_prune
from frugalnn.models import create_model
from frugalnn.utils.io import write_json_atomic

CHECKPOINT = "pretrained/resnet-cifar10/resnet56-4bfd9763.th"


def _train_and_evaluate(a: argparse.Namespace, seeds: list[int]) -> list[dict[str, Any]]:
    checkpoint = a.checkpoint or str(Path(a.data_dir or ".") / CHECKPOINT)
    splits = load_splits("cifar10", a.data_dir, train_limit=a.train_limit,
                         val_limit=a.val_limit, test_limit=a.test_limit, seed=0,
                         **({"augment": True} if a.augment else {}))
    original = create_model("resnet56", checkpoint=checkpoint).eval()
    runs: list[dict[str, Any]] = []
    for seed, epochs in [(0, 0)] + [(s, a.epochs) for s in seeds]:
        config = PruneConfig(target=a.target, include=a.include or None, epochs=epochs,
                             lr=a.lr, batch_size=a.batch_size, latency_batch_sizes=(),
                             seed=seed)
        name = f"e{epochs}-s{seed}"
        run = run_prune(original, config, splits, Path(a.work) / name, progress=False,
                        force=True, report=False, run_config={"benchmark": "prune_resnet56"})
        totals = json.loads((run.out / "extras" / "prune_model.json").read_text())["totals"]
        val = json.loads((run.out / "validation" / "summary.json").read_text())
        row = {"seed": seed, "epochs": epochs, "run": str(run.out), **totals,
               "val_accuracy": val["budgets"][0]["accuracy"]}
        runs.append(row)
        log(f"{name}: {row['original_accuracy']:.4f} -> {row['pruned_accuracy']:.4f}, "
            f"{row['flops_ratio']:.2f}x FLOPs")
    return runs


def _time_runs(a: argparse.Namespace, runs: list[dict[str, Any]]) -> dict[str, float]:
    """Time the unpruned model and every saved pruned checkpoint (1 thread), alternating
    within each of ``--passes`` passes; each run's times go into ``row["latency"]``."""
    from frugalnn.cost.allocator import retain_freed_memory
    from frugalnn.train.checkpoint import load_model

    if a.retain_freed_memory and not retain_freed_memory():
        raise UserError("--retain-freed-memory needs glibc (Linux)")
    checkpoint = a.checkpoint or str(Path(a.data_dir or ".") / CHECKPOINT)
    x = torch.randn(a.batch_size, 3, 32, 32)
    models = {"original": create_model("resnet56", checkpoint=checkpoint).eval()}
    models.update({row["run"]: load_model(Path(row["run"]) / "checkpoint") for row in runs})
    ms = {n: alternating_latency_ms(models, x[:n], passes=a.passes, repeats=a.repeats,
                                    threads=1) for n in (1, a.batch_size)}
    for row in runs:
        row["latency"] = {f"b{n}": ms[n][row["run"]] for n in ms}
    base = {f"b{n}": ms[n]["original"] for n in ms}
    log(f"original: {base}")
    return base


#: Flags of a ``quant_stack_resnet56.py`` run that must match for ``--compare``.
COMPARED = ("train_limit", "val_limit", "test_limit", "epochs", "lr", "augment")


def compare_lines(a: argparse.Namespace, tuned: list[dict[str, Any]]) -> list[str]:
    """Per seed: the fine-tuned pruned model beside the same-training control and the
    low-rank model of ``quant_stack_resnet56.py --json`` runs of the same protocol (same
    split seed, images, epochs, learning rate, augmentation, training seeds)."""
    from _common import mean_sd

    stack: dict[int, dict[str, Any]] = {}
    for path in a.compare:
        try:
            rec = json.loads(Path(path).read_text())
            theirs, rows = rec["args"], rec["rows"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise UserError(f"--compare: {path} is not the --json of a "
                            f"quant_stack_resnet56.py run ({type(exc).__name__}: {exc})") from None
        for key in COMPARED:
            if theirs.get(key) != getattr(a, key):
                raise UserError(f"--compare: {path} was run with {key}={theirs.get(key)!r}, "
                                f"this run with {getattr(a, key)!r}")
        if theirs.get("seed", 0) != 0 or theirs.get("val_fraction", 0.1) != 0.1:
            raise UserError(f"--compare: {path} used other splits (split seed "
                            f"{theirs.get('seed')}, val fraction {theirs.get('val_fraction')})")
        stack.update({r["seed"]: r for r in rows})
    missing = sorted({r["seed"] for r in tuned} - set(stack))
    if missing:
        raise UserError(f"--compare: no control for seed(s) {missing} in {a.compare}")
    lines = ["", "Same plane, same training (per seed: the control is the pretrained "
             "ResNet-56 fine-tuned by the same distillation, images, epochs and seed; "
             "`quant_stack_resnet56.py`, whose low-rank model is the TT plan B):", "",
             "| seed | control % | low-rank % | pruned % | low-rank - control | "
             "pruned - control |", "|---|---|---|---|---|---|"]
    gaps: dict[str, list[float]] = {"low-rank": [], "pruned": []}
    for r in sorted(tuned, key=lambda r: r["seed"]):
        q = stack[r["seed"]]
        control, low, pruned = q["control"]["test"], q["low-rank"]["test"], 100 * r[
            "pruned_accuracy"]
        gaps["low-rank"].append(low - control)
        gaps["pruned"].append(pruned - control)
        lines.append(f"| {r['seed']} | {control:.2f} | {low:.2f} | {pruned:.2f} | "
                     f"{low - control:+.2f} | {pruned - control:+.2f} |")
    lines.append(f"| mean ± sd | | | | {mean_sd(gaps['low-rank'])} | "
                 f"{mean_sd(gaps['pruned'])} |")
    return lines


def main() -> int:
    return one_line_errors(_main)


def _main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=os.environ.get("FRUGALNN_DATA"))
    p.add_argument("--checkpoint", help=f"default: DATA_DIR/{CHECKPOINT}")
    p.add_argument("--target", default="flops=2")
    p.add_argument("--include", nargs="*", default=["blocks.*.conv1"],
                   help="layers that lose output channels (default: the blocks' inner convs; "
                        "none given: every layer but the classifier)")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--train-limit", type=int, default=5000)
    p.add_argument("--val-limit", type=int, default=500)
    p.add_argument("--test-limit", type=int, default=1000)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--augment", action="store_true",
                   help="random crop + flip while fine-tuning (new draws every epoch)")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--retain-freed-memory", action="store_true",
                   help="time with glibc keeping freed memory (no page faults per call)")
    p.add_argument("--passes", type=int, default=3,
                   help="timing passes; the models alternate within each")
    p.add_argument("--phase", default="all", choices=("all", "train", "time"),
                   help="train: prune, fine-tune, evaluate, save (no timing; needs no lock); "
                        "time: time the saved runs of --out (under the lock); all: both")
    p.add_argument("--compare", nargs="+", metavar="JSON",
                   help="quant_stack_resnet56.py --json runs of the same protocol: a per-seed "
                        "table beside their same-training control and low-rank model")
    p.add_argument("--work", default="/tmp/prune_bench")
    p.add_argument("--markdown", default="/tmp/prune_resnet56.md")
    p.add_argument("--out", default="/tmp/prune_resnet56.json")
    a = p.parse_args()
    seeds = [int(s) for s in a.seeds.split(",")]
    if a.phase in ("all", "train"):
        runs = _train_and_evaluate(a, seeds)
        write_json_atomic(a.out, {"args": vars(a), "runs": runs})
    else:
        runs = json.loads(Path(a.out).read_text())["runs"]
    if a.phase == "train":
        return
    compared = (compare_lines(a, [r for r in runs if r["epochs"] == a.epochs and a.epochs > 0])
                if a.compare else [])
    base_latency = _time_runs(a, runs)
    saved = json.loads(Path(a.out).read_text())
    write_json_atomic(a.out, {**saved, "original_latency": base_latency, "runs": runs})
    sizes = [1, a.batch_size]
    tuned = [r for r in runs if r["epochs"] == a.epochs and a.epochs > 0]
    free = [r for r in runs if r["epochs"] == 0]

    def acc(rows: list[dict[str, Any]], key: str) -> str:
        vals = [100 * r[key] for r in rows]
        if len(vals) < 2:
            return f"{vals[0]:.2f}"
        return f"{statistics.mean(vals):.2f} ± {statistics.stdev(vals):.2f}"

    def lat(rows: list[dict[str, Any]]) -> str:
        return " / ".join(f"{statistics.median(r['latency'][f'b{n}'] for r in rows):.2f}"
                          for n in sizes)

    b = runs[0]
    base_lat = " / ".join(f"{base_latency['b' + str(n)]:.2f}" for n in sizes)
    lines = [f"| model | params | FLOPs / example | test accuracy % | validation accuracy % | "
             f"latency b1 / b{a.batch_size} ms (1 thread) | speed-up b1 / b{a.batch_size} |",
             "|---|---:|---:|---:|---:|---:|---:|",
             f"| ResNet-56 (pretrained) | {b['original_params']:,} | "
             f"{b['original_flops'] / 1e6:.1f} M | {100 * b['original_accuracy']:.2f} | - | "
             f"{base_lat} | 1.00x |"]
    for label, rows in ((f"pruned {a.target}, no fine-tuning", free),
                        (f"pruned {a.target}, {a.epochs} epoch(s) distillation", tuned)):
        if not rows:
            continue
        speed = " / ".join(
            f"{base_latency[k] / statistics.median(r['latency'][k] for r in rows):.2f}x"
            for k in (f"b{n}" for n in sizes))
        lines.append(f"| {label} | {rows[0]['pruned_params']:,} | "
                     f"{rows[0]['pruned_flops'] / 1e6:.1f} M ({rows[0]['flops_ratio']:.2f}x "
                     f"fewer) | {acc(rows, 'pruned_accuracy')} | {acc(rows, 'val_accuracy')} | "
                     f"{lat(rows)} | {speed} |")
    notes = (f"CIFAR-10 JPEG: train {a.train_limit}, validation {a.val_limit}, test "
             f"{a.test_limit} examples (split seed 0); pruned layers {a.include or 'all'}; "
             f"fine-tuning seeds {seeds}, lr {a.lr}, batch {a.batch_size}"
             f"{', random crop + flip' if a.augment else ''}; latency: median over "
             f"{a.passes} alternating passes of each model's median of "
             f"{a.repeats} calls on random inputs, "
             + ("freed memory retained (glibc)." if a.retain_freed_memory
                else "default allocator."))
    lines += compared
    write_results(a.markdown, results_header("Channel-pruned ResNet-56 (torch-pruning)",
                                             notes=notes) + "\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
