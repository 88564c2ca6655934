"""ResNet-56 on CIFAR-10 (JPEG): which runtime runs int8 fastest here: ONNX Runtime's QDQ
int8 (``frugalnn export --int8``) against PyTorch's ``x86`` int8 and both float models.

The published ResNet-56 weights (``pretrained/resnet-cifar10``) are evaluated
directly. Four models of the same network:

- PyTorch float (eager, aten kernels);
- PyTorch int8: static int8 by the quant recipe (``x86`` engine, per-channel
  weights, ``histogram`` observer, calibrated on ``--calibration-size``
  training images drawn with ``--seed``);
- ONNX Runtime float: ``frugalnn.export`` to ONNX, checked against PyTorch;
- ONNX Runtime int8: ``frugalnn.export`` with ``ExportConfig(int8=True)``: the
  float graph quantised to QDQ int8 (per-channel weights, min/max activation
  ranges calibrated on the same number of training images), checked by top-1
  agreement with the float PyTorch model.

Accuracy on ``--test-limit`` CIFAR-10 test images (a seeded subset). Latency
on one thread at ``--batch-sizes``: the four models interleaved in
``--rounds`` rounds (median of ``--repeats`` calls each), median over rounds,
on the same test images. The results go on top of ``--markdown``; the
section an earlier run of this script wrote moves under "History (superseded)".

Run under the shared timing lock:
``flock /tmp/frugalnn-timing.lock python benchmarks/quant_runtime.py --data-dir DATA``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path
from typing import Any

import torch
from _common import add_split_flags, log, results_header, splits_from_args, write_results

from frugalnn.cost.count import format_bytes, measure
from frugalnn.cost.latency import measure_latency
from frugalnn.methods.quant.recipe import QuantConfig, quantize
from frugalnn.models import create_model
from frugalnn.runtime.export import ExportConfig, export
from frugalnn.runtime.package import load_exported

BEGIN, END = "<!-- quant_runtime:begin -->", "<!-- quant_runtime:end -->"
HISTORY = "## History (superseded)"


def _accuracy(fn: Any, data: Any) -> float:
    """Top-1 accuracy (%) of a callable on a dataset of ``(x, y)``."""
    loader = torch.utils.data.DataLoader(data, batch_size=250)
    correct = total = 0
    with torch.inference_mode():
        for x, y in loader:
            correct += int((fn(x).argmax(1) == y).sum())
            total += len(y)
    return 100.0 * correct / total


def _merge(previous: str, section: str) -> str:
    """``section`` on top of the file; this script's earlier section goes to the history."""
    old = ""
    if BEGIN in previous and END in previous:
        head, rest = previous.split(BEGIN, 1)
        old, tail = rest.split(END, 1)
        previous = head + tail
    body, _, history = previous.partition(HISTORY)
    parts = [BEGIN, section.strip(), END, "", body.strip()]
    entries = [e for e in (old.strip().replace("\n# ", "\n### ").replace("# ", "### ", 1),
                           history.strip()) if e]
    if entries:
        parts += ["", HISTORY, "", "\n\n".join(entries)]
    return "\n".join(parts).strip() + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_split_flags(p, data="cifar10")
    p.set_defaults(data_dir=os.environ.get("FRUGALNN_DATA"), test_limit=1000,
                   train_limit=5000)
    p.add_argument("--calibration-size", type=int, default=512)
    p.add_argument("--batch-sizes", default="1,64")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--markdown", default="benchmarks/results/quant.md")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    splits = splits_from_args(a)
    ckpt = next((Path(a.data_dir) / "pretrained" / "resnet-cifar10").glob("resnet56-*.th"))
    base = create_model("resnet56", checkpoint=str(ckpt)).eval()
    log(f"splits: train {len(splits.train)}, test {len(splits.test)}")
    torch.backends.quantized.engine = "x86"
    pt_int8 = quantize(base, QuantConfig(mode="static", observer="histogram",
                                         calibration_size=a.calibration_size, seed=a.seed),
                       calibration_data=splits.train)
    tmp = Path(tempfile.mkdtemp(prefix="quant-runtime-"))
    f32 = export(base, tmp / "float", ExportConfig(format="onnx", check_limit=256,
                                                   threads=1), check_data=splits.test)
    q8 = export(base, tmp / "int8", ExportConfig(format="onnx", int8=True, check_limit=None,
                                                 calibration_size=a.calibration_size,
                                                 seed=a.seed, threads=1),
                check_data=splits.test, calibration_data=splits.train)
    log("quantised and exported")
    models: dict[str, Any] = {
        "PyTorch float": base, "PyTorch int8 (`x86`)": pt_int8,
        "ONNX Runtime float": load_exported(tmp / "float", threads=1),
        "ONNX Runtime QDQ int8": load_exported(tmp / "int8", threads=1),
    }
    sizes = [int(s) for s in a.batch_sizes.split(",") if s]
    acc = {name: _accuracy(fn, splits.test) for name, fn in models.items()}
    log("accuracy: " + ", ".join(f"{k} {v:.2f}" for k, v in acc.items()))
    x_all = torch.stack([splits.test[i][0] for i in range(max(sizes))])
    times: dict[tuple[str, int], list[float]] = {}
    with torch.inference_mode():
        for r in range(a.rounds):
            for bs in sizes:
                for name, fn in models.items():  # interleaved: load drifts hit all alike
                    rec = measure_latency(fn, x_all[:bs], warmup=3, repeats=a.repeats,
                                          threads=1)
                    times.setdefault((name, bs), []).append(rec.median_ms)
            log(f"round {r + 1}/{a.rounds}")
    ms = {k: statistics.median(v) for k, v in times.items()}
    x1 = x_all[:1]
    stored = {"PyTorch float": measure(base, x1, depth=0).model_bytes,
              "PyTorch int8 (`x86`)": measure(pt_int8, x1, depth=0).model_bytes,
              "ONNX Runtime float": (tmp / "float" / "model.onnx").stat().st_size,
              "ONNX Runtime QDQ int8": (tmp / "int8" / "model.onnx").stat().st_size}
    ref, dense = "PyTorch int8 (`x86`)", "PyTorch float"
    rows = []
    for name in models:
        cells = [f"{ms[(name, bs)]:.2f} ({ms[(dense, bs)] / ms[(name, bs)]:.2f}x; "
                 f"{ms[(ref, bs)] / ms[(name, bs)]:.2f}x)" for bs in sizes]
        rows.append(f"| {name} | {acc[name]:.2f} | {format_bytes(stored[name])} | "
                    + " | ".join(cells) + " |")
    check = q8.check
    info = q8.manifest["int8"]
    title = "ResNet-56 int8 runtimes: ONNX Runtime QDQ int8 (`export --int8`) vs PyTorch x86"
    section = results_header(title) + "\n".join([
        "",
        f"Published ResNet-56 weights, no fine-tuning. Calibration: {a.calibration_size} "
        f"training images (seed {a.seed}) for both int8 models. Accuracy on "
        f"{len(splits.test)} CIFAR-10 (JPEG) test images (seeded subset). Latency: "
        f"one thread, the four models interleaved in {a.rounds} rounds, median of "
        f"{a.repeats} calls per round, median over rounds; the same test images.",
        "",
        "| model | test acc % | stored size | " + " | ".join(
            f"ms @ b{bs} (speed-up vs PyTorch float; vs PyTorch int8)" for bs in sizes)
        + " |",
        "|---|---|---|" + "---|" * len(sizes),
        *rows,
        "",
        f"`export --int8` check (recorded in the export's `check.json`): top-1 agreement "
        f"with the float PyTorch model {100 * check['argmax_agreement']:.2f} % on "
        f"{check['examples']} test images (needed {100 * check['required_agreement']:.0f} %), "
        f"largest logit difference {check['max_abs_diff']:.3g}. The float ONNX export "
        f"matched PyTorch on {100 * f32.check['match']:.1f} % of rows (largest difference "
        f"{f32.check['max_abs_diff']:.2g}). ONNX graph: {info['float_graph_bytes']:,} bytes "
        f"float, {info['graph_bytes']:,} int8 "
        f"({info['float_graph_bytes'] / info['graph_bytes']:.2f}x smaller).",
        "",
        "Sizes: PyTorch models, the bytes of the state dict; ONNX models, the graph file. "
        "The ONNX Runtime rows of the `quant_resnet56.py` results below were measured by "
        "hand-written code before `export --int8` existed; this table supersedes them.",
    ])
    path = Path(a.markdown)
    previous = path.read_text() if path.is_file() else ""
    write_results(path, _merge(previous, section))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
