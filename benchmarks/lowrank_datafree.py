"""Data-free accuracy of a low-rank ResNet (no fine-tuning) across rank criteria.

How much accuracy survives factorisation alone tells how much fine-tuning has
to recover. Pretrained ResNet-20 (or ``--depth 56``) on a CIFAR-10 JPEG test
subset (``--test-limit``, seeded: the same images as the CLI's
``--eval-limit``), every 3x3 convolution factorised under each criterion by
the low-rank recipe (:func:`frugalnn.methods.lowrank.recipe.compress`, zero
fine-tuning epochs); accuracy, FLOP ratio and the number of layers factorised
(a layer whose chain would not be cheaper stays dense). Full scale:
``--test-limit 10000``.

A config ``METHOD:model-flops=X:gains`` weighs the whole-model allocation by each
layer's output gain measured on the first ``--gain-examples`` training images
(:mod:`frugalnn.methods.lowrank.sensitivity`): still no training, but no longer
data-free (the training split is read for them).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from _common import add_split_flags, log, results_header, splits_from_args, write_results
from torch.utils.data import DataLoader

from frugalnn.errors import UserError
from frugalnn.evaluation.loop import loader_accuracy
from frugalnn.methods.lowrank.compress import plan_totals
from frugalnn.methods.lowrank.recipe import LowRankConfig, compress
from frugalnn.models import create_model

CONFIGS = ("tucker:energy=0.99", "tucker:energy=0.9", "tucker:vbmf", "tucker:flops=1.5",
           "tucker:flops=2", "tt:energy=0.95", "tt:flops=2", "cp:flops=2")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_split_flags(p, data="cifar10")
    p.set_defaults(test_limit=500)
    p.add_argument("--depth", type=int, default=20)
    p.add_argument("--configs", default=",".join(CONFIGS))
    p.add_argument("--gain-examples", type=int, default=32,
                   help="training images a METHOD:TARGET:gains config measures gains on (32)")
    p.add_argument("--markdown", default="benchmarks/results/lowrank_datafree.md")
    args = p.parse_args(argv)
    configs = [cfg.split(":") for cfg in args.configs.split(",")]
    bad = [":".join(c) for c in configs if len(c) not in (2, 3) or c[2:] not in ([], ["gains"])]
    if bad:
        p.error(f"--configs takes METHOD:TARGET or METHOD:TARGET:gains, not {bad[0]!r}")
    if not args.data_dir:
        from frugalnn.data.base import resolve_data_dir

        args.data_dir = str(resolve_data_dir(None))
    torch.set_num_threads(1)
    splits = splits_from_args(args)
    test = splits.test
    loader = DataLoader(test, batch_size=250)
    pretrained = Path(args.data_dir) / "pretrained" / "resnet-cifar10"
    ckpt = next(pretrained.glob(f"resnet{args.depth}-*.th"))
    base = create_model(f"resnet{args.depth}", checkpoint=str(ckpt)).eval()
    base_acc = loader_accuracy(base, loader)
    x = torch.stack([test[0][0], test[1][0]])
    rows = []
    for method, target, *gains in configs:
        config = LowRankConfig(method=method, target=target, finetune_epochs=0, seed=args.seed,
                               gain_examples=args.gain_examples if gains else 0)
        label = f"{target}, gains" if gains else target
        try:
            model, plan, _ = compress(base, config, example=x,
                                      train_data=splits.train if gains else None)
        except UserError as exc:
            rows.append(f"| {method} | {label} | not run: {exc} | | |")
            continue
        t = plan_totals(plan)
        rows.append(f"| {method} | {label} | {t['layers_factorised']}/{t['layers_eligible']} | "
                    f"{t['flops_ratio']:.2f}x | {100 * loader_accuracy(model, loader):.2f} |")
        log(rows[-1])
    text = "\n".join([
        results_header(f"Data-free low-rank ResNet-{args.depth} (no fine-tuning)"), "",
        f"Pretrained ResNet-{args.depth}, {len(test)} CIFAR-10 JPEG test images; "
        f"baseline accuracy {100 * base_acc:.2f} %. FLOP ratio over the eligible 3x3 convs; "
        f"`gains`: allocation weighed by output gains on {args.gain_examples} training "
        "images.\n",
        "| method | target | layers factorised | FLOPs ratio (convs) | accuracy (%) |",
        "|---|---|---|---|---|", *rows]) + "\n"
    write_results(args.markdown, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
