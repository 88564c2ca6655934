"""Low-rank ResNet-56 on CIFAR-10 (JPEG): CP, Tucker-2 and TT side by side.

Pipeline (one command, fixed seeds):

1. ResNet-56 from the pretrained checkpoint, fine-tuned on (a random subset
   of) the JPEG train split, so that the baseline is fair on the JPEG test
   split;
2. for each method: every 3x3 convolution factorised to the target
   (``--target flops=2`` by default, i.e. >= 2x fewer FLOPs per layer), then
   fine-tuned with distillation from the baseline;
3. optionally (``--latency-target F``) Tucker-2 with latency-aware ranks:
   layers are factorised only where the measured chain is faster at the
   latency batch size, until the predicted model latency is F x the baseline;
4. per method: parameters, FLOPs, accuracy, measured latency at batch 1 and
   64 and peak memory, against the baseline measured in the same process.

Full scale: ``--baseline-epochs 5 --train-limit 50000 --finetune-epochs 10
--test-limit 10000 --repeats 30``. The defaults are a scaled-down run for a
shared 2-core CPU; the results file states the scale used.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shlex
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset

from frugalnn.cost.machine import describe_machine, machine_markdown
from frugalnn.data import get_dataset
from frugalnn.errors import UserError
from frugalnn.methods.lowrank.compress import plan_markdown
from frugalnn.methods.lowrank.pipeline import accuracy, compare, compress_and_finetune
from frugalnn.models import create_model
from frugalnn.train import fit


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def subset(ds, limit: int | None, seed: int):
    if limit is None or limit >= len(ds):
        return ds
    idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))[:limit]
    return Subset(ds, sorted(idx.tolist()))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=os.environ.get("FRUGALNN_DATA"))
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
    p.add_argument("--train-limit", type=int, default=2000)
    p.add_argument("--test-limit", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--augment", action="store_true",
                   help="random crop + flip for the baseline and compressed-model fine-tuning")
    p.add_argument("--baseline-cache", help="safetensors file: load the fine-tuned baseline "
                   "from it if it exists, else save it there (same flags assumed)")
    p.add_argument("--out", default="benchmarks/results/lowrank_resnet56.json")
    p.add_argument("--markdown", default="benchmarks/results/lowrank.md")
    args = p.parse_args(argv)
    if not args.data_dir:
        print("set --data-dir or FRUGALNN_DATA", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    data_dir = Path(args.data_dir)
    started = time.time()
    train = subset(get_dataset("cifar10", "train", data_dir, augment=args.augment,
                               seed=args.seed), args.train_limit, args.seed)
    test = subset(get_dataset("cifar10", "test", data_dir), args.test_limit, args.seed + 1)
    gen = torch.Generator().manual_seed(args.seed)
    train_loader = DataLoader(train, batch_size=args.batch_size, shuffle=True, generator=gen)
    test_loader = DataLoader(test, batch_size=256)
    ckpt = next((data_dir / "pretrained" / "resnet-cifar10").glob("resnet56-*.th"))
    base = create_model("resnet56", checkpoint=str(ckpt))
    log(f"pretrained ResNet-56 on JPEG test subset: {100 * accuracy(base, test_loader):.2f} %")
    cache = Path(args.baseline_cache) if args.baseline_cache else None
    if cache is not None and cache.is_file():
        from safetensors.torch import load_file

        base.load_state_dict(load_file(str(cache)))
        log(f"fine-tuned baseline loaded from {cache} (same flags assumed)")
    elif args.baseline_epochs:
        fit(base, train_loader, epochs=args.baseline_epochs, optimizer="sgd", lr=0.01,
            weight_decay=5e-4, schedule="cosine", seed=args.seed, progress=False)
        if cache is not None:
            from safetensors.torch import save_file

            save_file({k: v.contiguous() for k, v in base.state_dict().items()}, str(cache))
    base.eval()
    example = torch.stack([test[i][0] for i in range(2)])
    results: dict[str, dict] = {}
    errors: dict[str, str] = {}
    configs = [(m, args.target) for m in args.methods.split(",") if m]
    if args.latency_target:
        configs.append(("tucker", f"latency={args.latency_target}"))
    for method, target in configs:
        label = f"{method} {target}" + (" + layer targets" if args.layer_target
                                         and not target.startswith("latency") else "")
        log(f"{label}: decompose + fine-tune {args.finetune_epochs} epoch(s)")
        t0 = time.time()
        latency = {"batch_size": args.batch_size, "repeats": max(3, args.repeats // 2)}
        try:
            torch.set_num_threads(args.train_threads or args.threads)
            model, plan, hist = compress_and_finetune(
                base, method, target, example, train_loader,
                finetune_epochs=args.finetune_epochs, lr=args.lr, latency=latency, seed=args.seed,
                exclude=args.exclude or None, layer_targets=args.layer_target or None,
                rank_multiple=args.rank_multiple, progress=False)
        except UserError as exc:  # e.g. a latency target this machine cannot reach
            log(f"  {exc}")
            errors[label] = str(exc)
            continue
        torch.set_num_threads(args.threads)
        cmp = compare(copy.deepcopy(base), model, plan, example,
                      batch_sizes=(1, args.batch_size), repeats=args.repeats,
                      threads=args.threads, eval_loader=test_loader)
        cmp["seconds"] = time.time() - t0
        cmp["plan"] = [row.to_dict() for row in plan]
        results[label] = cmp
        o, c = cmp["models"]["original"], cmp["models"]["compressed"]
        log(f"  params {cmp['params_ratio']:.2f}x, FLOPs {cmp['flops_ratio']:.2f}x, "
            f"speed-up b1 {cmp['speedup_b1']:.2f}x b{args.batch_size} "
            f"{cmp[f'speedup_b{args.batch_size}']:.2f}x, acc {100 * o['accuracy']:.2f} -> "
            f"{100 * c['accuracy']:.2f}")
        if method == "tucker" and target.startswith("latency"):
            results[label]["plan_md"] = plan_markdown(plan)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(args.out).with_suffix(".tmp")
    tmp.write_text(json.dumps({"args": vars(args), "machine": describe_machine(),
                               "results": results, "errors": errors}, indent=1, default=str))
    os.replace(tmp, args.out)
    write_markdown(args, results, errors, time.time() - started)
    return 0


def write_markdown(args, results: dict[str, dict], errors: dict[str, str],
                   seconds: float) -> None:
    b = args.batch_size
    cmd = "python benchmarks/lowrank_resnet56.py " + shlex.join(sys.argv[1:])
    names = ", ".join(results) or args.methods
    header = f"## Low-rank ResNet-56 on CIFAR-10 (JPEG): {names} (fine-tuning lr {args.lr})"
    lines = [
        header + "\n",
        f"Command: `{cmd}` ({seconds / 60:.1f} min)\n",
        machine_markdown(), "",
        f"Scale: baseline fine-tuned {args.baseline_epochs} epoch(s) and each compressed model "
        f"{args.finetune_epochs} epoch(s) with distillation, on {args.train_limit} JPEG train "
        f"images{' (random crop + flip)' if args.augment else ''}; accuracy on "
        f"{args.test_limit} JPEG test images; latency median of "
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
    section = "\n".join(lines) + "\n"
    path = Path(args.markdown)
    text = path.read_text() if path.exists() else "# Low-rank compression results\n\n"
    start = text.find(header + "\n")
    if start >= 0:
        end = text.find("\n## ", start + 1)
        text = text[:start] + section + (text[end + 1:] if end >= 0 else "")
    else:
        text = text.rstrip() + "\n\n" + section
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    print(section)


if __name__ == "__main__":
    sys.exit(main())
