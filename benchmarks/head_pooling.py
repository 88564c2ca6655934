"""What an early-exit head's pooling costs on this CPU: max vs average, NCHW vs channels-last.

Times, at ResNet-56's three stage shapes (16 x 32 x 32, 32 x 16 x 16,
64 x 8 x 8) and batch 1 and 64, the 4x4 pooling every image head does:
``F.avg_pool2d``, ``F.max_pool2d`` in NCHW, the heads' column-then-row maximum
(``heads._window_max``, identical values) and both stock ops in channels-last.
Median of ``--repeats`` calls after a warm-up, one thread.

    python benchmarks/head_pooling.py --out benchmarks/results/head_pooling.md
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from _common import results_header, write_results

from frugalnn.methods.early_exit.heads import _window_max

SHAPES = [(16, 32), (32, 16), (64, 8)]


def median_us(fn, args: tuple, repeats: int) -> float:
    for _ in range(5):
        fn(*args)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - t0)
    return 1e6 * statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64])
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="benchmarks/results/head_pooling.md")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    lines = ["Microseconds per call (median), pooling to 4 x 4.", "",
             "| batch | C x H x W | avg NCHW | max NCHW (F.max_pool2d) | max NCHW (heads) | "
             "avg channels-last | max channels-last |",
             "|---:|---|---:|---:|---:|---:|---:|"]
    with torch.inference_mode():
        for bs in a.batch_sizes:
            for c, hw in SHAPES:
                x = torch.randn(bs, c, hw, hw)
                xc = x.contiguous(memory_format=torch.channels_last)
                k = (hw // 4, hw // 4)
                assert torch.equal(_window_max(x, 4, k), F.max_pool2d(x, k))
                calls = [(F.avg_pool2d, (x, k)), (F.max_pool2d, (x, k)),
                         (_window_max, (x, 4, k)), (F.avg_pool2d, (xc, k)),
                         (F.max_pool2d, (xc, k))]
                row = [median_us(fn, args, a.repeats) for fn, args in calls]
                lines.append(f"| {bs} | {c} x {hw} x {hw} | "
                             + " | ".join(f"{v:.1f}" for v in row) + " |")
    header = results_header("Early-exit head pooling: max vs average, NCHW vs channels-last")
    write_results(a.out, header + "\n" + "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
