"""Activation-sparsity report of the pretrained ResNet-56 on CIFAR-10 (JPEG test images).

Every ReLU of the network (the stem, and both ReLUs of each basic block, which
the model calls functionally) is found by :func:`activation_sparsity`; the
table gives exact zeros, near-zeros (|a| < eps), their spread over examples
and spatial positions, and dead / always-active channels. The ViT and MiniLM
reports (before and after sparsity enforcement) are written by
``moe_vit_cifar.py`` and ``moe_minilm.py``.

    .venv/bin/python benchmarks/sparsity_models.py --data-dir /path/to/data

Writes ``runs/bench/results/sparsity_resnet56.md`` (+ plots beside it). Seeds fixed.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset

from frugalnn.analysis.sparsity import activation_sparsity
from frugalnn.cost._io import write_text_atomic
from frugalnn.cost.machine import describe_machine, machine_markdown
from frugalnn.data import get_dataset
from frugalnn.models import create_model


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=os.environ.get("FRUGALNN_DATA"))
    p.add_argument("--examples", type=int, default=1000)
    p.add_argument("--eps", type=float, default=1e-3)
    p.add_argument("--threads", type=int, default=1)
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
    md = "\n".join([
        "## Activation sparsity: pretrained ResNet-56 (CIFAR-10 JPEG test)",
        "",
        f"Command: `{' '.join(shlex.quote(v) for v in sys.argv)}`",
        "",
        machine_markdown(describe_machine()),
        "",
        f"{a.examples} random JPEG test images. 'per-token' = per spatial position (all "
        "channels at one pixel); neurons = channels. Plots: "
        f"`{out}/sparsity_*.png`.",
        "",
        rep.table(),
    ])
    write_text_atomic(out.with_suffix(".md"), md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
