"""Activation-sparsity report of the pretrained ResNet-56 on CIFAR-10 (JPEG test images).

Every ReLU of the network (the stem, and both ReLUs of each basic block, which
the model calls functionally) is found by :func:`activation_sparsity`; the
table gives exact zeros, near-zeros (|a| < eps), their spread over examples
and spatial positions, and dead / always-active channels. With
``--enforce-examples N`` the network is then fine-tuned with the Hoyer
penalty on every ReLU (``enforce_sparsity``, distilling from the pretrained
model) and measured again, with test accuracy before and after. The ViT and
MiniLM reports (before and after sparsity enforcement) are written by
``moe_vit_cifar.py`` and ``moe_minilm.py``.

    .venv/bin/python benchmarks/sparsity_models.py --data-dir /path/to/data

Writes ``runs/bench/results/sparsity_resnet56.md`` (+ plots beside it). Seeds fixed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch
from _common import results_header, write_results
from torch.utils.data import DataLoader, Subset

from frugalnn.analysis.sparsity import activation_sparsity
from frugalnn.data import get_dataset
from frugalnn.evaluation import evaluate
from frugalnn.methods.moe import enforce_sparsity
from frugalnn.models import create_model


def accuracy(model: torch.nn.Module, loader: DataLoader) -> float:
    """Top-1 accuracy of a static model."""
    return float(evaluate(model, loader, progress=False).per_budget_summary()[0]["accuracy"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=os.environ.get("FRUGALNN_DATA"))
    p.add_argument("--examples", type=int, default=1000)
    p.add_argument("--eps", type=float, default=1e-3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--enforce-examples", type=int, default=0,
                   help="fine-tune with the Hoyer penalty on this many train images (0: skip)")
    p.add_argument("--enforce-epochs", type=int, default=1)
    p.add_argument("--sparsity-weight", type=float, default=1.0)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--accuracy-examples", type=int, default=2000)
    p.add_argument("--out", default="runs/bench/results/sparsity_resnet56")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    model = create_model("resnet56", pretrained=True, data_dir=a.data_dir).eval()
    test = get_dataset("cifar10", "test", a.data_dir)
    idx = torch.randperm(len(test), generator=torch.Generator().manual_seed(0))[: a.examples]
    dl = DataLoader(Subset(test, idx.tolist()), batch_size=100)
    rep = activation_sparsity(model, dl, eps=a.eps, meta={"model": "resnet56 (pretrained)"})
    out = Path(a.out)
    rep.save(out)
    after_md: list[str] = []
    if a.enforce_examples > 0:
        acc_idx = torch.randperm(len(test), generator=torch.Generator().manual_seed(1))
        acc_dl = DataLoader(Subset(test, acc_idx[: a.accuracy_examples].tolist()), batch_size=250)
        acc_before = accuracy(model, acc_dl)
        train = get_dataset("cifar10", "train", a.data_dir, augment=True, seed=0)
        t_idx = torch.randperm(len(train), generator=torch.Generator().manual_seed(2))
        train_dl = DataLoader(Subset(train, t_idx[: a.enforce_examples].tolist()),
                              batch_size=128, shuffle=True,
                              generator=torch.Generator().manual_seed(0))
        t0 = time.time()
        enforce_sparsity(model, train_dl, epochs=a.enforce_epochs, lam=a.sparsity_weight,
                         lr=a.lr, seed=0)
        seconds = time.time() - t0
        acc_after = accuracy(model, acc_dl)
        after = activation_sparsity(model, dl, eps=a.eps,
                                    meta={"model": "resnet56 (after Hoyer fine-tuning)"})
        after.save(out.with_name(out.name + "_after"))
        z0 = rep.to_dict()["overall_zero_fraction"]
        z1 = after.to_dict()["overall_zero_fraction"]
        after_md = [
            "",
            "### After sparsity enforcement",
            "",
            f"Hoyer penalty on every ReLU (per example over the whole C x H x W map, weight "
            f"{a.sparsity_weight}, warmed up over the first half), distilling from the "
            f"pretrained model (alpha 0.5), AdamW lr {a.lr}, {a.enforce_epochs} epoch(s) on "
            f"{a.enforce_examples} augmented JPEG train images ({seconds:.0f} s).",
            "",
            f"- exact zeros over all ReLU outputs: {100 * z0:.1f} % before, "
            f"{100 * z1:.1f} % after",
            f"- test accuracy ({a.accuracy_examples} random JPEG test images): "
            f"{100 * acc_before:.2f} % before, {100 * acc_after:.2f} % after",
            "",
            after.table(),
        ]
    # A section of results/moe.md (moe_collect.py): one level below the file's title.
    head = results_header("Activation sparsity: pretrained ResNet-56 (CIFAR-10 JPEG test)")
    md = "\n".join([
        head.replace("# ", "## ", 1),
        f"{a.examples} random JPEG test images. 'per-token' = per spatial position (all "
        "channels at one pixel); neurons = channels. Plots: "
        f"`{out}/sparsity_*.png`.",
        "",
        rep.table(),
        *after_md,
    ])
    write_results(out.with_suffix(".md"), md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
