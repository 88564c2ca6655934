"""Packed XNOR-popcount layers against the float layers they replace, on this CPU.

For each layer shape (the binarised convolutions of the MNIST / CIFAR-10 CNNs
of ``binary_mnist_cifar.py`` and ResNet-style 3x3 convolutions and Linears) and
batch size, times on ``--threads`` torch threads (1 by default):

- ``float``: the ``nn.Conv2d`` / ``nn.Linear`` (float32, oneDNN / BLAS);
- ``packed C`` / ``packed numpy``: the :class:`~frugalnn.methods.binary.layers`
  layer in packed form, end to end: threshold, im2col (convolutions), packing
  the input signs, the XNOR-popcount product (the compiled C kernel, or numpy's
  ``bitwise_xor`` + ``bitwise_count``), scaling;
- ``kernel C``: the XNOR-popcount product alone on pre-packed operands.

Median of ``--repeats`` calls after 3 warm-up calls. Run it under the timing
lock: ``flock /tmp/frugalnn-timing.lock python benchmarks/binary_layers.py``.
Writes ``--markdown`` (its table is pasted into ``results/binary.md``).
"""

from __future__ import annotations

import argparse

import torch
from _common import log, results_header, write_results
from torch import nn

from frugalnn.methods.binary.kernel import c_kernel_available, pack_signs, xnor_matmul
from frugalnn.methods.binary.layers import BinaryConv2d, BinaryLinear
from frugalnn.methods.binary.measure import time_call

#: (name, layer factory, input shape per example)
SHAPES = [
    ("CNN conv 64->64, 28x28 (MNIST)", lambda: nn.Conv2d(64, 64, 3, padding=1), (64, 28, 28)),
    ("CNN conv 64->128, 7x7 (MNIST)", lambda: nn.Conv2d(64, 128, 3, padding=1), (64, 7, 7)),
    ("CNN conv 64->64, 32x32 (CIFAR)", lambda: nn.Conv2d(64, 64, 3, padding=1), (64, 32, 32)),
    ("ResNet conv 64->64, 8x8", lambda: nn.Conv2d(64, 64, 3, padding=1), (64, 8, 8)),
    ("conv 256->256, 14x14", lambda: nn.Conv2d(256, 256, 3, padding=1), (256, 14, 14)),
    ("Linear 1024->1024", lambda: nn.Linear(1024, 1024), (1024,)),
    ("Linear 4096->4096", lambda: nn.Linear(4096, 4096), (4096,)),
]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch-sizes", default="1,64")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--markdown", default="/tmp/binary_layers.md")
    a = p.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(a.threads)
    kernels = ["c", "numpy"] if c_kernel_available() else ["numpy"]
    rows = []
    for name, make, shape in SHAPES:
        dense = make().eval()
        cls = BinaryConv2d if isinstance(dense, nn.Conv2d) else BinaryLinear
        for batch in (int(b) for b in a.batch_sizes.split(",")):
            x = torch.randn(batch, *shape).relu()
            row = {"layer": name, "batch": batch}
            with torch.inference_mode():
                row["float"], _ = time_call(lambda d=dense, x=x: d(x), a.repeats)
                for kernel in kernels:
                    layer = cls(dense, kernel=kernel).eval()
                    layer.pack()
                    row[kernel], _ = time_call(lambda lay=layer, x=x: lay(x), a.repeats)
                if "c" in kernels:
                    if isinstance(dense, nn.Conv2d):
                        cols = nn.functional.unfold(x, 3, padding=1).transpose(1, 2)
                        cols = cols.reshape(-1, layer.width)
                    else:
                        cols = x
                    pa, pw = pack_signs(cols), pack_signs(dense.weight.reshape(
                        layer.out_channels, -1))
                    row["kernel"], _ = time_call(
                        lambda pa=pa, pw=pw, w=layer.width: xnor_matmul(pa, pw, w, "c"),
                        a.repeats)
            rows.append(row)
            log(f"{name} b{batch}: " + ", ".join(
                f"{k} {v * 1e3:.3f} ms" for k, v in row.items() if isinstance(v, float)))
    head = ("| layer | batch | float ms | packed C ms | packed numpy ms | kernel C ms | "
            "packed C vs float | packed numpy vs float |")
    lines = [head, "|---|---:|---:|---:|---:|---:|---:|---:|"]
    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v * 1e3:.3f}"

    for r in rows:
        c, npy, flt = r.get("c"), r["numpy"], r["float"]
        ratio = "-" if c is None else f"{flt / c:.2f}x"
        lines.append(f"| {r['layer']} | {r['batch']} | {ms(flt)} | {ms(c)} | {ms(npy)} | "
                     f"{ms(r.get('kernel'))} | {ratio} | {flt / npy:.2f}x |")
    notes = (f"Median of {a.repeats} calls, {a.threads} thread(s). 'vs float' > 1: the "
             "packed layer is faster.")
    write_results(a.markdown, results_header("Packed binary layers against float layers",
                                             notes=notes) + "\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
