"""Data-free accuracy of a low-rank ResNet (no fine-tuning) across rank criteria.

How much accuracy survives factorisation alone tells how much fine-tuning has
to recover. Pretrained ResNet-20 (or ``--depth 56``) on a CIFAR-10 JPEG test
subset, every 3x3 convolution factorised under each criterion; accuracy, FLOP
ratio and the number of layers factorised (a layer whose chain would not be
cheaper stays dense). Full scale: ``--test-limit 10000``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset

from frugalnn.cost.machine import machine_markdown
from frugalnn.data import get_dataset
from frugalnn.errors import UserError
from frugalnn.methods.lowrank.compress import plan_totals
from frugalnn.methods.lowrank.pipeline import accuracy, compress_and_finetune
from frugalnn.models import create_model

CONFIGS = ("tucker:energy=0.99", "tucker:energy=0.9", "tucker:vbmf", "tucker:flops=1.5",
           "tucker:flops=2", "tt:energy=0.95", "tt:flops=2", "cp:flops=2")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=os.environ.get("FRUGALNN_DATA"))
    p.add_argument("--depth", type=int, default=20)
    p.add_argument("--configs", default=",".join(CONFIGS))
    p.add_argument("--test-limit", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--markdown", default="benchmarks/results/lowrank.md")
    args = p.parse_args(argv)
    if not args.data_dir:
        print("set --data-dir or FRUGALNN_DATA", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    started = time.time()
    d = Path(args.data_dir)
    test = get_dataset("cifar10", "test", d)
    g = torch.Generator().manual_seed(args.seed)
    test = Subset(test, sorted(torch.randperm(len(test), generator=g)[:args.test_limit].tolist()))
    loader = DataLoader(test, batch_size=250)
    ckpt = next((d / "pretrained" / "resnet-cifar10").glob(f"resnet{args.depth}-*.th"))
    base = create_model(f"resnet{args.depth}", checkpoint=str(ckpt)).eval()
    base_acc = accuracy(base, loader)
    x = torch.stack([test[0][0], test[1][0]])
    rows = []
    for cfg in args.configs.split(","):
        method, target = cfg.split(":")
        try:
            model, plan, _ = compress_and_finetune(base, method, target, x, None, progress=False)
        except UserError as exc:
            rows.append(f"| {method} | {target} | not run: {exc} | | |")
            continue
        t = plan_totals(plan)
        rows.append(f"| {method} | {target} | {t['layers_factorised']}/{t['layers_eligible']} | "
                    f"{t['flops_ratio']:.2f}x | {100 * accuracy(model, loader):.2f} |")
        print(rows[-1], flush=True)
    cmd = "python benchmarks/lowrank_datafree.py " + " ".join(sys.argv[1:])
    section = "\n".join([
        f"## Data-free low-rank ResNet-{args.depth} (no fine-tuning)\n",
        f"Command: `{cmd}` ({(time.time() - started) / 60:.1f} min)\n", machine_markdown(), "",
        f"Pretrained ResNet-{args.depth}, {args.test_limit} CIFAR-10 JPEG test images; "
        f"baseline accuracy {100 * base_acc:.2f} %. FLOP ratio over the eligible 3x3 convs.\n",
        "| method | target | layers factorised | FLOPs ratio (convs) | accuracy (%) |",
        "|---|---|---|---|---|", *rows]) + "\n"
    path = Path(args.markdown)
    md = path.read_text() if path.exists() else "# Low-rank compression results\n\n"
    start = md.find("## Data-free low-rank")
    if start >= 0:
        end = md.find("\n## ", start + 1)
        md = md[:start] + section + (md[end + 1:] if end >= 0 else "")
    else:
        md = md.rstrip() + "\n\n" + section
    tmp = path.with_suffix(".tmp")
    tmp.write_text(md)
    os.replace(tmp, path)
    print(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
