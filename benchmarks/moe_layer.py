"""One MoE FFN layer vs the dense FFN at batch 64: expert size and execution strategy.

The dense FFN (``dim -> 4 dim -> dim``, ReLU) of a ViT with 65 tokens per image
is split into E experts; each token runs a fixed fraction of them (top-k on
random router scores, so exactly that fraction of FFN FLOPs). Timed: the
dense FFN, the experts alone with the two execution strategies of
:class:`frugalnn.methods.moe.MoEFFN` (``gather``: one matmul per expert on its
gathered tokens; ``bmm``: tokens packed per expert, two batched matmuls), and
the whole layer with its router (``auto``). This is the measurement behind the
layer's default strategy and the advice to use large experts on CPU.

    .venv/bin/python benchmarks/moe_layer.py [--dim 192 --fractions 0.25,0.5]

Writes ``runs/bench/results/moe_layer.md`` (``moe_collect.py`` gathers the sections).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch
from _common import results_header, write_results
from torch import nn

from frugalnn.cost.latency import measure_latency
from frugalnn.methods.moe import MoEFFN
from frugalnn.models.base import FeedForward

# Sections land here; benchmarks/moe_collect.py assembles them into results/moe.md.
RESULTS = Path("runs/bench/results")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dim", type=int, default=192)
    p.add_argument("--tokens", type=int, default=64 * 65, help="batch 64 x 65 tokens")
    p.add_argument("--experts", default="4,8,16,32,64,128")
    p.add_argument("--fractions", default="0.25,0.5")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(RESULTS / "moe_layer.md"))
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    hidden = 4 * a.dim
    x = torch.randn(a.tokens, a.dim)
    ffn = FeedForward(a.dim, hidden, nn.ReLU()).eval()
    load0 = os.getloadavg()
    with torch.inference_mode():
        dense = measure_latency(ffn, x, warmup=3, repeats=a.repeats).median_ms
        rows = []
        for e in (int(v) for v in a.experts.split(",")):
            size = hidden // e
            parts = [torch.arange(i * size, (i + 1) * size) for i in range(e)]
            layer = MoEFFN.from_dense(ffn.fc1, nn.ReLU(), ffn.fc2, parts).eval()
            for frac in (float(v) for v in a.fractions.split(",")):
                k = max(1, round(frac * e))
                layer.set_mode("topk", k=k)
                mask = layer.select(torch.rand(a.tokens, e, generator=torch.Generator()
                                               .manual_seed(1)))
                t = {}
                for impl in ("gather", "bmm"):
                    layer.set_impl(impl)
                    t[impl] = measure_latency(layer.run_experts, x, mask, warmup=2,
                                              repeats=a.repeats).median_ms
                layer.set_impl("auto")
                # Dense and the converted layer in interleaved rounds, fastest round kept
                # for each: a configuration timed first otherwise pays for the warm-up.
                t["layer"] = t["dense"] = float("inf")
                for _ in range(3):
                    t["dense"] = min(t["dense"], measure_latency(
                        ffn, x, warmup=2, repeats=a.repeats).median_ms)
                    t["layer"] = min(t["layer"], measure_latency(
                        layer, x, warmup=2, repeats=a.repeats).median_ms)
                rows.append((e, size, k / e, t))
    load1 = os.getloadavg()
    # A section of results/moe.md (moe_collect.py): one level below the file's title.
    head = results_header("Mixture-of-experts: one FFN layer at batch 64 (execution strategies)")
    lines = [
        head.replace("# ", "## ", 1),
        f"FFN {a.dim} -> {hidden} -> {a.dim} (ReLU), {a.tokens} tokens (batch 64 x 65), "
        f"{a.threads} thread(s); median of {a.repeats}; the whole layer and the dense FFN are "
        f"timed in 3 interleaved rounds and the fastest round of each is kept (dense timed "
        f"once up front: {dense:.2f} ms). "
        f"Load average before/after: {load0[0]:.2f} / {load1[0]:.2f} (shared machine).",
        "",
        "| experts x size | FFN FLOPs run % | experts only, gather ms | experts only, bmm ms | "
        "whole layer (router + auto) ms | dense ms (same rounds) | speed-up vs dense |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for e, size, frac, t in rows:
        lines.append(
            f"| {e} x {size} | {100 * frac:.0f} | {t['gather']:.2f} | {t['bmm']:.2f} | "
            f"{t['layer']:.2f} | {t['dense']:.2f} | {t['dense'] / t['layer']:.2f}x |"
        )
    write_results(a.out, "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
