"""Binarised CNNs on MNIST and CIFAR-10: accuracy, size and packed-layer speed-up.

Per dataset and per seed (``--seeds``, fixed before the run):

1. a float ``cnn_small`` (stem 3x3 conv, blocks of ``--widths``, linear head)
   trained from scratch for ``--baseline-epochs`` on the training subset;
2. for each variant (``--variants``: ``xnor`` = binary weights and inputs,
   ``weights`` = binary weights, float inputs), the binary recipe
   (:func:`frugalnn.methods.binary.recipe.run_binarize`): the block convolutions
   binarised (stem and head stay float), thresholds set on one batch, trained
   ``--epochs`` with the straight-through estimator and distillation from the
   float model, packed, saved, evaluated on the test and validation splits,
   each binary layer timed (packed kernel against the float layer, batch
   ``--layer-batch``, 1 thread, ``--layer-repeats`` calls).

Splits: :func:`frugalnn.data.splits.load_splits` (the CLI's flags and meaning;
validation carved from train with the split seed 0, the same examples for
every training seed). No operating point is chosen: each variant is one model.
The defaults are a scaled-down run for a shared 2-core CPU; the results say
the scale used. Run the whole script under the timing lock:
``flock /tmp/frugalnn-timing.lock python benchmarks/binary_mnist_cifar.py``.
Writes ``--markdown`` (its tables are pasted into ``results/binary.md``) and
``--out`` (JSON of every run).
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import Any

import torch
from _common import log, mean_sd, results_header, write_results

from frugalnn.cost.latency import measure_latency
from frugalnn.data.splits import load_splits, seeded_loader
from frugalnn.evaluation.records import load_summary
from frugalnn.methods.binary.recipe import BinaryConfig, run_binarize
from frugalnn.models import create_model
from frugalnn.train import fit
from frugalnn.utils.io import write_json_atomic


def _baseline(splits: Any, widths: list[int], epochs: int, seed: int, batch: int) -> Any:
    info = splits.info
    shape = tuple(info.input_shape)
    torch.manual_seed(seed)
    model = create_model("cnn_small", in_channels=shape[0], image_size=shape[-1],
                         num_classes=info.num_classes, widths=widths)
    fit(model, seeded_loader(splits.train, batch, seed), epochs=epochs, optimizer="adamw",
        lr=2e-3, weight_decay=1e-4, schedule="cosine", seed=seed, progress=False)
    return model.eval()


def _latency(summary: dict[str, Any]) -> dict[str, float]:
    out = {}
    for row in summary.get("latency") or []:
        out[f"b{row.get('batch_size')}"] = row.get("median_ms")
    return out


def _ms(rows: list[dict[str, Any]], key: str) -> str:
    """Median over runs of the b1 and b64 model latencies."""
    return " / ".join(f"{statistics.median(r[key][b] for r in rows):.2f}" for b in ("b1", "b64"))




def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", default="mnist,cifar10")
    p.add_argument("--data-dir", help="data directory (default: $FRUGALNN_DATA)")
    p.add_argument("--variants", default="xnor,weights")
    p.add_argument("--widths", default="64,64,128")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--train-limit", type=int, default=4000)
    p.add_argument("--val-limit", type=int, default=500)
    p.add_argument("--test-limit", type=int, default=1000)
    p.add_argument("--baseline-epochs", type=int, default=3)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--layer-batch", type=int, default=64)
    p.add_argument("--layer-repeats", type=int, default=10)
    p.add_argument("--threads", type=int, default=1, help="evaluation and timing threads")
    p.add_argument("--work", default="/tmp/binary_bench")
    p.add_argument("--markdown", default="/tmp/binary_mnist_cifar.md")
    p.add_argument("--out", default="/tmp/binary_mnist_cifar.json")
    a = p.parse_args()
    widths = [int(w) for w in a.widths.split(",")]
    seeds = [int(s) for s in a.seeds.split(",")]
    results: list[dict[str, Any]] = []
    for data in a.datasets.split(","):
        splits = load_splits(data, a.data_dir, train_limit=a.train_limit,
                             val_limit=a.val_limit, test_limit=a.test_limit, seed=0)
        for seed in seeds:
            log(f"{data} seed {seed}: float baseline ({a.baseline_epochs} epochs)")
            base = _baseline(splits, widths, a.baseline_epochs, seed, a.batch_size)
            x = torch.stack([splits.test[i][0] for i in range(64)])
            base_latency = {f"b{n}": measure_latency(base, x[:n], repeats=10,
                                                     threads=a.threads).median_ms
                            for n in (1, 64)}
            for variant in a.variants.split(","):
                config = BinaryConfig(activations=variant == "xnor", epochs=a.epochs,
                                      batch_size=a.batch_size, layer_batch=a.layer_batch,
                                      layer_repeats=a.layer_repeats, layer_threads=1,
                                      latency_repeats=10, seed=seed)
                out = Path(a.work) / data / f"{variant}-s{seed}"
                run = run_binarize(base, config, splits, out, threads=a.threads,
                                   progress=False, force=True, report=False,
                                   run_config={"benchmark": "binary_mnist_cifar"})
                summary = load_summary(out)
                t = run.totals
                row = {"data": data, "variant": variant, "seed": seed,
                       "float_acc": t["float_accuracy"], "binary_acc": t["binary_accuracy"],
                       "val_acc": (load_summary(out / "validation")["budgets"][0]
                                   ["accuracy"]),
                       "float_bytes": t["float_bytes"], "binary_bytes": t["binary_bytes"],
                       "bops": t["bops"], "float_flops": t["float_flops"],
                       "binary_float_flops": t["binary_float_flops"],
                       "layer_float_s": sum(r.get("float_s", 0.0) for r in run.layers),
                       "layer_binary_s": sum(r.get("binary_s", 0.0) for r in run.layers),
                       "latency": _latency(summary), "float_latency": base_latency,
                       "kernel": t["kernel"]}
                results.append(row)
                log(f"{data} {variant} seed {seed}: float {row['float_acc']:.4f} -> "
                    f"{row['binary_acc']:.4f}; layers {row['layer_float_s'] * 1e3:.2f} -> "
                    f"{row['layer_binary_s'] * 1e3:.2f} ms")
    write_json_atomic(a.out, {"args": vars(a), "runs": results})
    lines = ["| data | model | test accuracy % | validation accuracy % | size (bytes) | "
             f"binarised layers: float ms -> packed ms (b{a.layer_batch}, 1 thread) | "
             "layer speed-up | whole model b1 / b64 ms |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for data in a.datasets.split(","):
        rows = [r for r in results if r["data"] == data]
        if not rows:
            continue
        float_acc = {r["seed"]: 100 * r["float_acc"] for r in rows}  # one baseline per seed
        lines.append(f"| {data} | float cnn_small {widths} | "
                     f"{mean_sd(list(float_acc.values()))} | - | "
                     f"{rows[0]['float_bytes']:,} | - | - | {_ms(rows, 'float_latency')} |")
        for variant in a.variants.split(","):
            vr = [r for r in rows if r["variant"] == variant]
            fl = statistics.median(r["layer_float_s"] for r in vr)
            bi = statistics.median(r["layer_binary_s"] for r in vr)
            lines.append(f"| {data} | binary {variant} | "
                         f"{mean_sd([100 * r['binary_acc'] for r in vr])} | "
                         f"{mean_sd([100 * r['val_acc'] for r in vr])} | "
                         f"{vr[0]['binary_bytes']:,} | {fl * 1e3:.2f} -> {bi * 1e3:.2f} | "
                         f"{fl / bi:.2f}x | {_ms(vr, 'latency')} |")
    notes = (f"Seeds {seeds} (training; one split, seed 0): train {a.train_limit}, validation "
             f"{a.val_limit}, test {a.test_limit} examples; float baseline "
             f"{a.baseline_epochs} epochs, binary {a.epochs} epochs of distillation. "
             f"Kernel: {results[0]['kernel'] if results else '-'}.")
    write_results(a.markdown, results_header("Binarised CNNs on MNIST and CIFAR-10",
                                             notes=notes) + "\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
