"""Low-rank ResNet-56 on CIFAR-10 (JPEG): CP, Tucker-2 and TT side by side.

Flags: the split flags are the CLI's (``--data``, ``--val-fraction``,
``--val-limit`` are new; ``--train-limit`` now draws from the training split
less its validation part); ``--markdown`` writes its own file (it used to
splice a section into ``results/lowrank.md``); ``--work`` is new.

Pipeline (one command, fixed seeds):

1. ResNet-56 from the pretrained checkpoint, fine-tuned on (a random subset
   of) the JPEG train split, so that the baseline is fair on the JPEG test
   split;
2. for each method, the low-rank recipe
   (:func:`frugalnn.methods.lowrank.recipe.compress`): every 3x3 convolution
   factorised to the target (``--target flops=2`` by default, i.e. >= 2x fewer
   FLOPs per layer), then fine-tuned with distillation from the baseline (the
   validation split, carved from train, is scored after every epoch);
3. optionally (``--latency-target F``) Tucker-2 with latency-aware ranks:
   layers are factorised only where the measured chain is faster at the
   latency batch size, until the predicted model latency is F x the baseline;
4. per method, :func:`frugalnn.methods.lowrank.recipe.compare_into`:
   parameters, FLOPs, accuracy, measured latency at batch 1 and
   ``--batch-size`` and peak memory, against the baseline measured in the same
   process; its per-layer and whole-model tables go to ``--work``/<method>/extras/.

Splits come from :func:`frugalnn.data.splits.load_splits` (``--train-limit``,
``--val-limit``, ``--test-limit``, ``--seed``: the same examples as the CLI's
``--train-limit`` / ``--val-limit`` / ``--eval-limit``); the training subset is
drawn from the training split less its validation part.

Full scale: ``--baseline-epochs 5 --train-limit 45000 --finetune-epochs 10
--test-limit 10000 --repeats 30``. The defaults are a scaled-down run for a
shared 2-core CPU; the results file states the scale used. Writes
``--markdown`` (default ``benchmarks/results/lowrank_resnet56.md``; its
section is pasted into ``results/lowrank.md``) and ``--out`` (JSON).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import torch
from _common import add_split_flags, log, results_header, splits_from_args, write_results
from torch.utils.data import DataLoader

from frugalnn.cost.machine import describe_machine
from frugalnn.errors import UserError
from frugalnn.evaluation.loop import loader_accuracy
from frugalnn.methods.lowrank.compress import plan_markdown
from frugalnn.methods.lowrank.recipe import LowRankConfig, compare_into, compress
from frugalnn.models import create_model
from frugalnn.train import fit
from frugalnn.utils.io import write_json_atomic


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_split_flags(p, data="cifar10")
    p.set_defaults(train_limit=2000, val_limit=500, test_limit=1000,
                   data_dir=os.environ.get("FRUGALNN_DATA"))
    p.add_argument("--methods", default="cp,tucker,tt")
    p.add_argument("--target", default="flops=2")
    p.add_argument("--latency-target", type=float, help="also run Tucker-2 at latency=F")
    p.add_argument("--exclude", nargs="*", default=[],
                   help="module-name patterns left dense (e.g. conv1: the 3-channel stem, "
                        "0.35 %% of the FLOPs, which a 2.5x target squeezes to rank 3)")
    p.add_argument("--layer-target", nargs="*", default=[], metavar="PATTERN:TARGET",
                   help="per-layer targets overriding --target (first match wins), e.g. "
                        "'blocks.1[8-9]*:flops=2.4'")
    p.add_argument("--rank-multiple", type=int, default=1,
                   help="round flops/params ranks down to multiples of this")
    p.add_argument("--train-threads", type=int,
                   help="torch threads while training (default: --threads, used for timing)")
    p.add_argument("--baseline-epochs", type=int, default=1)
    p.add_argument("--finetune-epochs", type=int, default=1)
    p.add_argument("--lr", type=float, default=0.01, help="fine-tuning learning rate (SGD)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--augment", action="store_true",
                   help="random crop + flip for the baseline and compressed-model fine-tuning")
    p.add_argument("--baseline-cache", help="safetensors file: load the fine-tuned baseline "
                   "from it if it exists, else save it there (same flags assumed)")
    p.add_argument("--work", default="runs/bench/lowrank_resnet56",
                   help="per-method extras (the recipe's per-layer and whole-model tables)")
    p.add_argument("--out", default="benchmarks/results/lowrank_resnet56.json")
    p.add_argument("--markdown", default="benchmarks/results/lowrank_resnet56.md")
    return p.parse_args(argv)


def baseline(args: argparse.Namespace, train: Any, test_loader: DataLoader) -> torch.nn.Module:
    """The pretrained ResNet-56, fine-tuned on the JPEG training subset (or from the cache)."""
    ckpt = next((Path(args.data_dir) / "pretrained" / "resnet-cifar10").glob("resnet56-*.th"))
    base = create_model("resnet56", checkpoint=str(ckpt))
    base_acc = loader_accuracy(base, test_loader)
    log(f"pretrained ResNet-56 on JPEG test subset: {100 * base_acc:.2f} %")
    cache = Path(args.baseline_cache) if args.baseline_cache else None
    if cache is not None and cache.is_file():
        from safetensors.torch import load_file

        base.load_state_dict(load_file(str(cache)))
        log(f"fine-tuned baseline loaded from {cache} (same flags assumed)")
    elif args.baseline_epochs:
        gen = torch.Generator().manual_seed(args.seed)
        fit(base, DataLoader(train, batch_size=args.batch_size, shuffle=True, generator=gen),
            epochs=args.baseline_epochs, optimizer="sgd", lr=0.01, weight_decay=5e-4,
            schedule="cosine", seed=args.seed, progress=False)
        if cache is not None:
            from safetensors.torch import save_file

            save_file({k: v.contiguous() for k, v in base.state_dict().items()}, str(cache))
    return base.eval()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.data_dir:
        print("set --data-dir or FRUGALNN_DATA", file=sys.stderr)
        return 2
    torch.set_num_threads(args.train_threads or args.threads)
    torch.manual_seed(args.seed)
    splits = splits_from_args(args, augment=args.augment)
    train, val, test = splits.train, splits.val, splits.test
    sizes = {"train": len(train), "val": len(val) if val is not None else 0, "test": len(test)}
    test_loader = DataLoader(test, batch_size=256)
    base = baseline(args, train, test_loader)
    example = torch.stack([test[i][0] for i in range(2)])
    results: dict[str, dict] = {}
    errors: dict[str, str] = {}
    configs = [(m, args.target) for m in args.methods.split(",") if m]
    if args.latency_target:
        configs.append(("tucker", f"latency={args.latency_target}"))
    for method, target in configs:
        overrides = args.layer_target if not target.startswith("latency") else []
        label = f"{method} {target}" + (" + layer targets" if overrides else "")
        log(f"{label}: decompose + fine-tune {args.finetune_epochs} epoch(s)")
        t0 = time.time()
        config = LowRankConfig(
            method=method, target=target, exclude=args.exclude or None,
            layer_targets=overrides or None, rank_multiple=args.rank_multiple,
            finetune_epochs=args.finetune_epochs, lr=args.lr, batch_size=args.batch_size,
            latency_batch=args.batch_size, latency_batch_sizes=(1, args.batch_size),
            latency_repeats=args.repeats, seed=args.seed)
        try:
            torch.set_num_threads(args.train_threads or args.threads)
            model, plan, hist = compress(base, config, train_data=train, val_data=val,
                                         example=example, threads=args.threads)
        except UserError as exc:  # e.g. a latency target this machine cannot reach
            log(f"  {exc}")
            errors[label] = str(exc)
            continue
        torch.set_num_threads(args.threads)
        work = Path(args.work) / re.sub(r"[^A-Za-z0-9_.=-]+", "_", label)
        cmp = compare_into(work, base, model, plan, example, config, test_data=test,
                           label=f"{config.label} (ResNet-56)", threads=args.threads)
        cmp["seconds"] = time.time() - t0
        cmp["plan"] = [row.to_dict() for row in plan]
        cmp["history"] = hist
        results[label] = cmp
        o, c = cmp["models"]["original"], cmp["models"]["compressed"]
        log(f"  params {cmp['params_ratio']:.2f}x, FLOPs {cmp['flops_ratio']:.2f}x, "
            f"speed-up b1 {cmp['speedup_b1']:.2f}x b{args.batch_size} "
            f"{cmp[f'speedup_b{args.batch_size}']:.2f}x, acc {100 * o['accuracy']:.2f} -> "
            f"{100 * c['accuracy']:.2f}")
        if method == "tucker" and target.startswith("latency"):
            results[label]["plan_md"] = plan_markdown(plan)
    write_json_atomic(args.out, {"args": vars(args), "machine": describe_machine(),
                                 "sizes": sizes, "results": results, "errors": errors})
    log(f"wrote {args.out}")
    write_results(args.markdown, markdown(args, results, errors, sizes))
    return 0


def markdown(args: argparse.Namespace, results: dict[str, dict], errors: dict[str, str],
             sizes: dict[str, int]) -> str:
    b = args.batch_size
    names = ", ".join(results) or args.methods
    title = f"Low-rank ResNet-56 on CIFAR-10 (JPEG): {names} (fine-tuning lr {args.lr})"
    lines = [
        results_header(title),
        f"Scale: baseline fine-tuned {args.baseline_epochs} epoch(s) and each compressed model "
        f"{args.finetune_epochs} epoch(s) with distillation, on a random {sizes['train']} JPEG "
        f"train images{' (random crop + flip)' if args.augment else ''} (validation: "
        f"{sizes['val']} images carved from train, seed {args.seed}); accuracy on a random "
        f"{sizes['test']} JPEG test images; latency median of "
        f"{args.repeats} repeats ({args.threads} thread), best of two alternating rounds. "
        "Full scale is in the script's docstring; a scaled-down run understates the accuracy "
        "fine-tuning can recover.\n",
        f"| method / target | params | FLOPs/example | acc. baseline -> low-rank (pt) | "
        f"latency b1 ms (speed-up) | latency b{b} ms (speed-up) | peak mem b{b} | load |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        o, c = r["models"]["original"], r["models"]["compressed"]
        lines.append(
            f"| {name} | {o['params']:,} -> {c['params']:,} ({r['params_ratio']:.2f}x) | "
            f"{o['flops'] / 1e6:.1f}M -> {c['flops'] / 1e6:.1f}M ({r['flops_ratio']:.2f}x) | "
            f"{100 * o['accuracy']:.2f} -> {100 * c['accuracy']:.2f} "
            f"({100 * (c['accuracy'] - o['accuracy']):+.2f}) | "
            f"{o['latency_ms_b1']:.2f} -> {c['latency_ms_b1']:.2f} ({r['speedup_b1']:.2f}x) | "
            f"{o[f'latency_ms_b{b}']:.1f} -> {c[f'latency_ms_b{b}']:.1f} "
            f"({r[f'speedup_b{b}']:.2f}x) | {r[f'memory_ratio_b{b}']:.2f}x less | "
            f"{c.get(f'loadavg_b{b}')} |")
    for name, err in errors.items():
        lines.append(f"\n{name}: not run: {err}")
    for name, r in results.items():
        if "plan_md" in r:
            lines += ["", f"Latency-aware plan ({name}):", "", r["plan_md"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
