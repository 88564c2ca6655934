"""Assemble the MoE and sparsity benchmark sections into ``benchmarks/results/moe.md``.

``moe_summary.md`` (hand-written findings) is taken from the same folder when present.
Run after ``moe_layer.py``, ``moe_vit_cifar.py``, ``moe_minilm.py`` and
``sparsity_models.py``; sections that were not produced are listed as missing.
"""

from __future__ import annotations

import sys
from pathlib import Path

from frugalnn.utils.io import write_text_atomic

SECTIONS = (
    "moe_summary", "moe_layer", "moe_vit_cifar", "moe_vit_cifar_routers4", "moe_minilm",
    "moe_minilm_sparse",
    "sparsity_resnet56",
)


def main() -> int:
    src = Path("runs/bench/results")
    parts = ["# Mixture-of-experts conversion and activation sparsity", ""]
    for name in SECTIONS:
        f = src / f"{name}.md"
        parts.append(f.read_text() if f.exists() else f"_({name}: not run)_\n")
    out = Path(__file__).resolve().parent / "results" / "moe.md"
    write_text_atomic(out, "\n".join(parts))
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
