"""Assemble the MoE and sparsity benchmark sections into ``benchmarks/results/moe.md``.

``moe_summary.md`` (hand-written findings) is taken from the same folder when present.
Run after ``moe_layer.py``, ``moe_vit_cifar.py``, ``moe_minilm.py`` and
``sparsity_models.py``; sections that were not produced are listed as missing.
Each section keeps its own command, machine and date; the file's head says when
and where the sections were assembled.

    python benchmarks/moe_collect.py [--src runs/bench/results] [--out benchmarks/results/moe.md]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from _common import log, results_header, write_results

SECTIONS = (
    "moe_summary", "moe_layer", "moe_vit_cifar", "moe_vit_cifar_routers4", "moe_minilm",
    "moe_minilm_sparse",
    "sparsity_resnet56",
)
RESULTS = Path(__file__).resolve().parent / "results"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--src", default="runs/bench/results",
                   help="folder of the sections (<name>.md) the MoE scripts wrote")
    p.add_argument("--out", default=str(RESULTS / "moe.md"))
    a = p.parse_args(argv)
    src = Path(a.src)
    parts = [results_header("Mixture-of-experts conversion and activation sparsity",
                            notes=f"Sections assembled from `{src}/`; each states the command, "
                                  "machine and date of its own run.")]
    for name in SECTIONS:
        f = src / f"{name}.md"
        if not f.exists():
            log(f"{f}: not run")
        parts.append(f.read_text() if f.exists() else f"_({name}: not run)_\n")
    write_results(a.out, "\n".join(parts), echo=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
