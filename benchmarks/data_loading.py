"""Data-loading costs: one-off decode, cached reload, and per-epoch iteration.

Measures, on this machine: decoding the CIFAR-10 JPEG archive into the uint8
cache (first use) and reloading that cache; parsing the MNIST IDX files; and one
pass of a ``DataLoader`` over a split with and without augmentation (examples/s).

    .venv/bin/python benchmarks/data_loading.py --data-dir /path/to/data

Writes ``benchmarks/results/data.md``. The decode uses a fresh private cache
directory so the first-use cost is really measured; ``--iter-limit`` bounds the
iteration pass (a random subset drawn with ``--seed``,
:func:`frugalnn.data.splits.random_subset`). Timings depend on the machine's load,
which is recorded.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from _common import log, results_header, write_results
from torch.utils.data import DataLoader

from frugalnn.data import get_dataset, resolve_data_dir
from frugalnn.data.splits import random_subset

RESULTS = Path(__file__).resolve().parent / "results"


def _timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    load = os.getloadavg()[0]
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t, load


def _iterate(ds: Any, batch_size: int) -> int:
    n = 0
    for x, _ in DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=0):
        n += len(x)
    return n


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", help="data directory (else $FRUGALNN_DATA)")
    p.add_argument("--iter-limit", type=int, default=10000, help="examples per iteration pass")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0, help="seed of the --iter-limit draw (0)")
    p.add_argument("--out", default=str(RESULTS / "data.md"))
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    data_dir = resolve_data_dir(args.data_dir)
    rows: list[tuple[str, str, str]] = []
    log(f"timing data loading from {data_dir}")
    with tempfile.TemporaryDirectory() as cache:
        os.environ["FRUGALNN_CACHE"] = cache
        ds, dt, load = _timed(lambda: get_dataset("cifar10", "train", data_dir))
        rows.append(
            ("cifar10 JPEG archive: decode 60,000 images (first use)", f"{dt:.1f} s", f"{load:.2f}")
        )
        _, dt, load = _timed(lambda: get_dataset("cifar10", "test", data_dir))
        rows.append(("cifar10: reload from the uint8 cache", f"{dt:.2f} s", f"{load:.2f}"))
        for aug in (False, True):
            full = get_dataset("cifar10", "train", data_dir, augment=aug, seed=args.seed)
            sub = random_subset(full, args.iter_limit, args.seed)
            n, dt, load = _timed(lambda s=sub: _iterate(s, args.batch_size))
            rows.append(
                (
                    f"cifar10 train, one DataLoader pass, augment={aug}",
                    f"{n / dt:,.0f} examples/s ({n} examples)",
                    f"{load:.2f}",
                )
            )
    _, dt, load = _timed(lambda: get_dataset("mnist", "train", data_dir))
    rows.append(
        ("mnist train: parse the gzipped IDX files (60,000 images)", f"{dt:.2f} s", f"{load:.2f}")
    )
    lines = [
        results_header("Data loading"),
        "| what | measured | load avg (1 min) at start |",
        "|---|---|---|",
        *(f"| {a} | {b} | {c} |" for a, b, c in rows),
        "",
        "One thread, `num_workers=0`; wall-clock, single run each (decoding is a one-off cost).",
        "",
    ]
    write_results(args.out, "\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
