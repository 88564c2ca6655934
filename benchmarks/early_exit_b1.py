"""Where an early-exit ResNet-56's time goes at batch size 1 (issue 4's open batch-1 rule).

Early exits meet the issue's time rule at batch 64 against the prepared
backbone (BatchNorm folded, channels-last) but not at batch 1. This script
measures the two reasons, on random weights (timing does not depend on them):

1. **Per-block time by layout**: each of the 27 residual blocks timed alone at
   batch 1, NCHW and channels-last, BatchNorm folded. A stage whose blocks are
   slow per FLOP takes a larger share of the time than of the FLOPs; exits
   save the late stages, so an expensive first stage shrinks the time saved.
2. **Per-head overhead**: the exit model timed at the full budget (no head
   runs, the backbone's own path), with every head evaluated but none firing
   (threshold just below 1), and with the heads replaced by a function
   returning constant logits (the exit test and loop bookkeeping only). The
   differences, divided by the number of heads, are a head's cost in place.

Usage: ``python benchmarks/early_exit_b1.py --out benchmarks/results/early_exit_b1.md``
(about a minute on one core). Times are medians of ``--rounds`` rounds of
``--repeats`` calls. glibc's ``MALLOC_*`` environment variables, when set, are
written into the results: in a profile, the convolutions themselves ran about
a quarter slower with (constant) heads between the blocks than without, which
points at memory reuse rather than the heads' own operations; the split of the
per-head cost between the two columns varies between runs, their sum less.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import types

import torch
from _common import results_header, write_results

from frugalnn.cost.allocator import retain_freed_memory
from frugalnn.methods.early_exit import attach_heads
from frugalnn.models import create_model
from frugalnn.models.fold import fold_batchnorm


def median_ms(fn, repeats: int, rounds: int, warmup: int = 30) -> float:
    """Median over ``rounds`` of the mean time of ``repeats`` calls, in ms."""
    with torch.inference_mode():
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            for _ in range(repeats):
                fn()
            times.append(1e3 * (time.perf_counter() - t0) / repeats)
    return sorted(times)[len(times) // 2]


def prepared(channels_last: bool):
    """ResNet-56 with BatchNorm folded, and a batch-1 input, in the given layout."""
    model = create_model("resnet56").eval()
    fold_batchnorm(model)
    x = torch.randn(1, 3, 32, 32)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    return model, x


def block_times(channels_last: bool, repeats: int, rounds: int) -> list[float]:
    model, x = prepared(channels_last)
    with torch.inference_mode():
        states = [model.embed(x)]
        for block in model.blocks:
            states.append(block(states[-1]))
    return [median_ms(lambda b=b, s=s: b(s), repeats, rounds)
            for b, s in zip(model.blocks, states)]


def head_overhead(channels_last: bool, positions: str, repeats: int, rounds: int):
    model, x = prepared(channels_last)
    ee = attach_heads(model, positions).eval()
    ee.set_budget(ee.full_budget())
    full = median_ms(lambda: ee(x), repeats, rounds)
    ee.set_budget(1.0 - 1e-9)  # every head evaluated; random heads never reach this
    heads = median_ms(lambda: ee(x), repeats, rounds)
    constant = torch.zeros(1, ee.num_classes)
    for head in ee.heads:
        head.forward = types.MethodType(lambda self, state, prev=None: constant, head)
    trivial = median_ms(lambda: ee(x), repeats, rounds)
    return ee.num_internal, full, heads, trivial


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--positions", default="every:2")
    p.add_argument("--repeats", type=int, default=200)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--retain-freed-memory", action="store_true",
                   help="time after frugalnn.cost.allocator.retain_freed_memory() (glibc keeps "
                        "freed blocks instead of returning them to the kernel)")
    p.add_argument("--out", default="benchmarks/results/early_exit_b1.md")
    args = p.parse_args(argv)
    retained = args.retain_freed_memory and retain_freed_memory()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    lines = [f"Load average at start {[round(v, 2) for v in os.getloadavg()]}.", "",
             "glibc malloc settings from the environment: "
             + (", ".join(f"`{k}={v}`" for k, v in sorted(os.environ.items())
                          if k.startswith("MALLOC_")) or "none (defaults)")
             + ("; retain_freed_memory() applied" if retained else ""), "",
             "Random weights, BatchNorm folded into the convolutions, batch 1. Each figure is "
             f"the median of {args.rounds} rounds of {args.repeats} calls.", "",
             "| layout | stage 1 block (µs, mean of 9) | stage 2 block | stage 3 block | "
             "share of block time by stage |", "|---|---|---|---|---|"]
    for cl in (False, True):
        per = block_times(cl, args.repeats, args.rounds)
        stages = [sum(per[i * 9 : (i + 1) * 9]) for i in range(3)]
        total = sum(stages)
        lines.append(f"| {'channels-last' if cl else 'NCHW'} | "
                     + " | ".join(f"{1e3 * v / 9:.0f}" for v in stages) + " | "
                     + " / ".join(f"{100 * v / total:.0f} %" for v in stages) + " |")
    lines += ["", f"Heads after blocks `{args.positions}`:", "",
              "| layout | full budget (ms) | all heads, none exits (ms) | constant heads (ms) | "
              "per head in place (µs) | of which the head module (µs) | of which the exit "
              "test and loop (µs) |", "|---|---|---|---|---|---|---|"]
    for cl in (False, True):
        n, full, heads, trivial = head_overhead(cl, args.positions, args.repeats, args.rounds)
        lines.append(f"| {'channels-last' if cl else 'NCHW'} | {full:.2f} | {heads:.2f} | "
                     f"{trivial:.2f} | {1e3 * (heads - full) / n:.0f} | "
                     f"{1e3 * (heads - trivial) / n:.0f} | {1e3 * (trivial - full) / n:.0f} |")
    lines += ["", f"Load average at end {[round(v, 2) for v in os.getloadavg()]}.", ""]
    header = results_header("Early-exit ResNet-56 at batch size 1: block time by layout, "
                            "head overhead")
    write_results(args.out, header + "\n" + "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
