"""Training throughput (1 process vs torchrun), and what checkpoints cost.

Measures, in one run on one machine:

1. training samples/second of ``fit`` for a model on a dataset, in one process
   and under ``torchrun --nproc_per_node N`` (same global batch: the
   per-process batch is divided by N), median over repeats of the per-epoch
   rate, and the ratio against the one-process baseline;
2. the time to save and to load a checkpoint of the model (median of repeats)
   and the checkpoint's size;
3. the wall-clock overhead of checkpointing every K steps versus once per epoch.

Writes a Markdown section (command, machine, load average, numbers) to
``--out`` (default ``benchmarks/results/training.md``) and prints it.
The training examples are :func:`frugalnn.data.splits.load_splits`'s training
split (validation carved out, ``--train-limit`` a seeded random subset: the same
examples as ``frugalnn train --train-limit``). Flags: ``--limit`` became
``--train-limit``.

    python benchmarks/train_throughput.py                 # defaults, ~2 min on 2 cores
    python benchmarks/train_throughput.py --model resnet20 --data cifar10 --data-dir DATA
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from _common import log, results_header, write_results
from torch.utils.data import DataLoader

from frugalnn.data import get_dataset
from frugalnn.models.registry import model_kwargs_for
from frugalnn.train.checkpoint import load_model, save_checkpoint

WORKER = """
import json, sys, torch
from torch.utils.data import DataLoader
from frugalnn.data.splits import load_splits
from frugalnn.models import create_model
from frugalnn.train import fit
from frugalnn.models.registry import model_kwargs_for
torch.set_num_threads(1)
a = json.loads(sys.argv[1])
ds = load_splits(a["data"], a["data_dir"], val_fraction=a["val_fraction"],
                 train_limit=a["limit"], test_split=None, seed=a["seed"]).train
torch.manual_seed(0)
model = create_model(a["model"], **model_kwargs_for(a["model"], ds.info, {}))
loader = DataLoader(ds, batch_size=a["batch"], shuffle=True)
res = fit(model, loader, epochs=a["epochs"], lr=0.05, progress=False, seed=0,
          run_dir=a["run_dir"], checkpoint_every=a["every"])
import os
if int(os.environ.get("RANK", "0")) == 0:
    print("RESULT " + json.dumps([r["samples_per_second"] for r in res.history]
                                 + [sum(r["epoch_seconds"] for r in res.history)]))
"""


def run_fit(args: argparse.Namespace, nproc: int, every: int | None,
            tmp: Path) -> tuple[float, float]:
    """(median samples/s over epochs, total training seconds) of one training run."""
    run_dir = tmp / f"run_{nproc}_{every}"
    shutil.rmtree(run_dir, ignore_errors=True)
    spec = {
        "data": args.data, "data_dir": args.data_dir, "limit": args.train_limit,
        "val_fraction": args.val_fraction, "seed": args.seed, "model": args.model,
        "batch": args.batch_size // nproc, "epochs": args.epochs, "run_dir": str(run_dir),
        "every": every,
    }  # fmt: skip
    script = tmp / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if nproc == 1:
        cmd = [sys.executable, str(script), json.dumps(spec)]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
               "--master_port", str(args.port), str(script), json.dumps(spec)]  # fmt: skip
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"training run failed:\n{out.stderr[-2000:]}")
    line = next(x for x in out.stdout.splitlines() if x.startswith("RESULT "))
    values = json.loads(line[len("RESULT ") :])
    return statistics.median(values[:-1]), values[-1]


def checkpoint_costs(args: argparse.Namespace, tmp: Path) -> dict[str, float]:
    from frugalnn.models import create_model

    ds = get_dataset(args.data, "train", args.data_dir, limit=8)
    model = create_model(args.model, **model_kwargs_for(args.model, ds.info, {}))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, y = next(iter(DataLoader(ds, batch_size=8)))
    torch.nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    saves, loads = [], []
    for _ in range(args.repeats):
        t = time.perf_counter()
        save_checkpoint(tmp / "ck", model, {"step": 1}, optimizer=opt)
        saves.append(time.perf_counter() - t)
        t = time.perf_counter()
        load_model(tmp / "ck")
        loads.append(time.perf_counter() - t)
    size = sum(f.stat().st_size for f in (tmp / "ck").iterdir())
    return {
        "save_ms": 1e3 * statistics.median(saves),
        "load_ms": 1e3 * statistics.median(loads),
        "bytes": size,
        "params": sum(p.numel() for p in model.parameters()),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="cnn_small")
    p.add_argument("--data", default="digits")
    p.add_argument("--data-dir")
    p.add_argument("--val-fraction", type=float, default=0.1,
                   help="part of the training split held out (not trained on) (0.1)")
    p.add_argument("--train-limit", type=int, default=None,
                   help="random N training examples, seeded (default all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the splits (0)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=64, help="global batch")
    p.add_argument("--nproc", type=int, default=2, help="processes for the torchrun run")
    p.add_argument("--every", type=int, default=5, help="checkpoint every K steps (overhead)")
    p.add_argument("--repeats", type=int, default=5, help="checkpoint save/load repeats")
    p.add_argument("--port", type=int, default=29531)
    p.add_argument("--out", default="benchmarks/results/training.md")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        log("training in one process")
        base_rate, base_s = run_fit(args, 1, None, tmp)
        log(f"training under torchrun, {args.nproc} processes")
        ddp_rate, ddp_s = run_fit(args, args.nproc, None, tmp)
        log(f"training in one process, checkpoint every {args.every} steps")
        every_rate, every_s = run_fit(args, 1, args.every, tmp)
        log("checkpoint save / load")
        ck = checkpoint_costs(args, tmp)
    load_after = os.getloadavg()
    lines = [
        results_header("Training: throughput, torchrun and checkpoint cost"),
        f"Load average (1/5/15 min) before: {load_before[0]:.2f}/{load_before[1]:.2f}/"
        f"{load_before[2]:.2f}, after: {load_after[0]:.2f}/{load_after[1]:.2f}/"
        f"{load_after[2]:.2f}. The CPU was shared with other jobs; rates are indicative.",
        "",
        f"Model `{args.model}` on `{args.data}` ({args.train_limit or 'all'} training "
        f"examples, validation fraction {args.val_fraction} held out, seed {args.seed}), "
        f"{args.epochs} "
        f"epochs, global batch {args.batch_size}, 1 thread per process. Samples/s is the "
        "median over epochs of (examples trained in the epoch, all processes) / epoch time; "
        "epoch time includes mid-epoch checkpoints but not the end-of-epoch checkpoint and "
        "evaluation. Training seconds is the sum of those epoch times.",
        "",
        "| run | samples/s | ratio vs 1 process | training seconds |",
        "|---|---:|---:|---:|",
        f"| 1 process, checkpoint per epoch | {base_rate:.0f} | 1.00 | {base_s:.2f} |",
        f"| torchrun {args.nproc} processes (gloo) | {ddp_rate:.0f} | "
        f"{ddp_rate / base_rate:.2f} | {ddp_s:.2f} |",
        f"| 1 process, + checkpoint every {args.every} steps | {every_rate:.0f} | "
        f"{every_rate / base_rate:.2f} | {every_s:.2f} |",
        "",
        f"Checkpoint of `{args.model}` ({ck['params']:,} parameters, with SGD momentum "
        f"state): {ck['bytes'] / 1024:.1f} KiB on disk; save {ck['save_ms']:.1f} ms, "
        f"load (rebuild + weights) {ck['load_ms']:.1f} ms (median of {args.repeats}).",
        "",
    ]
    write_results(args.out, "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
