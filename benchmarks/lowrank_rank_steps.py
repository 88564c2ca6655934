"""Wall clock of a factorised convolution against its rank: where the steps are.

A FLOP count falls smoothly as a rank falls; the time of a convolution does
not. Kernels block the channel dimension (oneDNN on x86 in blocks of 8 or 16
floats, GPU tensor cores in multiples of 8), so a chain with rank 17 costs
about what one with rank 32 costs. This script times, for each of
ResNet-56's three stage shapes (16 channels at 32x32, 32 at 16x16, 64 at
8x8), the dense 3x3 convolution and frugalnn's tensor-train chain (Kx1 ->
1xK with full end ranks, :class:`frugalnn.methods.lowrank.layers.TTConv2d`) at a
ladder of middle ranks, in interleaved rounds (the fastest round kept). The
table shows where a slightly larger rank costs a whole block, which is what
``--rank-multiple`` and per-stage ``--layer-target`` plans avoid.

    python benchmarks/lowrank_rank_steps.py --out benchmarks/results/lowrank_rank_steps.md
"""

from __future__ import annotations

import argparse
import sys

import torch
from _common import log, results_header, write_results
from torch import nn

from frugalnn.cost.allocator import retain_freed_memory
from frugalnn.cost.latency import measure_latency
from frugalnn.methods.lowrank import layers as L
from frugalnn.methods.lowrank.costs import chain_flops
from frugalnn.methods.lowrank.geometry import ConvSpec

STAGES = ((16, 32), (32, 16), (64, 8))  # (channels, input side) of ResNet-56's 3x3 convs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--step", type=int, default=4, help="rank ladder step")
    p.add_argument("--rounds", type=int, default=4, help="interleaved rounds (fastest kept)")
    p.add_argument("--repeats", type=int, default=15, help="timed calls per round (median)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--default-allocator", action="store_true",
                   help="keep glibc's defaults instead of retain_freed_memory()")
    p.add_argument("--out", default="benchmarks/results/lowrank_rank_steps.md")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    retained = False if a.default_allocator else retain_freed_memory()
    rows = []
    for channels, side in STAGES:
        dense = nn.Conv2d(channels, channels, 3, padding=1, bias=False).eval()
        spec = ConvSpec.of(dense)
        ranks = list(range(a.step, int(1.5 * channels) + 1, a.step))
        chains = {r: L.empty_like_conv(dense, "tt", (channels, r, channels)).eval()
                  for r in ranks}
        x = torch.randn(a.batch_size, channels, side, side)
        best: dict[int, float] = {}
        with torch.inference_mode():
            for _ in range(a.rounds):
                for r, m in [(0, dense), *chains.items()]:
                    t = measure_latency(m, x, warmup=2, repeats=a.repeats).median_ms
                    best[r] = min(best.get(r, float("inf")), t)
        dense_flops = spec.dense_flops(side, side)
        for r in ranks:
            flops = chain_flops("tt", spec, (channels, r, channels), side, side)
            rows.append((channels, side, r, dense_flops / flops, best[0], best[r]))
        log(f"timed {channels} channels at {side}x{side}: {len(ranks)} ranks")
    lines = [
        results_header("Time of a Kx1 -> 1xK tensor-train chain against its middle rank "
                       "(ResNet-56 stage shapes)"),
        f"Batch {a.batch_size}, {a.threads} thread(s), eager, no bias; the fastest of {a.rounds} "
        f"interleaved rounds, each the median of {a.repeats} calls; allocator: "
        + ("retain_freed_memory()" if retained else "glibc defaults") + ".", "",
        "| channels | input | rank | FLOPs fewer | dense ms | chain ms | speed-up |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c, side, r, ratio, dense_ms, ms in rows:
        lines.append(f"| {c} | {side}x{side} | {r} | {ratio:.2f}x | {dense_ms:.3f} | {ms:.3f} "
                     f"| {dense_ms / ms:.2f}x |")
    write_results(a.out, "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
