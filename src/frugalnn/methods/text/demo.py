"""The text turn of ``frugalnn demo``: a 16 KB language identifier.

The demo's images have no text, so this hook reads the ``langid`` data
(``<data-dir>/text/langid-manpages``, the context's data directory or
``$FRUGALNN_DATA``); without it the hook logs why and returns no run. With it,
it trains a 16 KB hashed n-gram model (8-bit tables) on a seeded 2,000-sentence
subset of the training split (epoch chosen on 500 validation sentences carved
from it) through :func:`frugalnn.methods.text.recipe.run_ngram`, as ``frugalnn
text train`` does. Its run directory has its own report: its examples are
sentences, not the demo's images, so it cannot share their cost-accuracy plane,
and the hook returns no run to plot there.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

#: Sentences of the demo subset (train, validation, test).
LIMITS = (2000, 500, 1000)
QUICK_LIMITS = (500, 200, 200)


def langid_root(data_dir: Path | None) -> Path | None:
    """The data directory holding the langid files, or ``None`` when they are absent."""
    from frugalnn.data.langid import _find
    from frugalnn.errors import UserError

    root = data_dir or (Path(os.environ["FRUGALNN_DATA"]) if os.environ.get("FRUGALNN_DATA")
                        else None)
    if root is None:
        return None
    try:
        _find(Path(root), "train")
        _find(Path(root), "test")
    except UserError:
        return None
    return Path(root)


def run_demo(ctx: Any) -> list[Path]:
    from frugalnn.data.splits import load_splits
    from frugalnn.methods.text.recipe import NgramConfig, run_ngram

    root = langid_root(ctx.data_dir)
    if root is None:
        print("[demo] text: skipped (no langid data: set --data-dir or FRUGALNN_DATA to a "
              "directory with text/langid-manpages/{train,test}.tsv.gz)", flush=True)
        return []
    train, val, test = QUICK_LIMITS if ctx.quick else LIMITS
    splits = load_splits("langid", str(root), train_limit=train, val_limit=val,
                         test_limit=test, seed=ctx.seed)
    config = NgramConfig(budget_bytes=16_000, epochs=8 if ctx.quick else 12, lr=2e-2,
                         latency_sentences=50 if ctx.quick else 200, seed=ctx.seed)
    run = run_ngram(config, splits, ctx.run_dir("text-langid-16kb"), threads=ctx.threads,
                    progress=ctx.progress, force=True,
                    run_config={"demo": True, "seed": ctx.seed, "data": "langid"})
    f = run.figures
    print(f"[demo] text: 16 KB language ID, {f['bytes']} bytes, "
          f"{100 * f['accuracy']['test']['8bit']:.2f} % on {test} test sentences "
          f"(own report: {run.out / 'report'})", flush=True)
    return []
