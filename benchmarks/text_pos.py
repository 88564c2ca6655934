"""Turkish POS tagging (universal tags) under a memory budget: budgeted hashed-feature
taggers with greedy decoding against a BiLSTM tagger (word + character features) trained on
the same splits; token accuracy, bytes and per-token latency on one thread.

The largest budget at 10x less memory than the BiLSTM (its float32 bytes / 10) is added to
``--budgets``; the results file ends with the target (within 2 pt of the BiLSTM at >= 10x
less memory), met or not.

    python benchmarks/text_pos.py --data-dir ../shared/data [--budgets ...] [--seeds 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from _common import add_split_flags, log, results_header, splits_from_args, write_results
from _text import mean_sd, with_superseded

from frugalnn.methods.text.data import tagged_sentences
from frugalnn.methods.text.recipe import NgramConfig, latency_per_item, run_ngram
from frugalnn.methods.text.references import ReferenceConfig, train_reference


def _reference(splits: object, a: argparse.Namespace) -> dict[str, object]:
    """The BiLSTM trained on the same splits, ``--seeds`` seeds."""
    accs, lat, nbytes, epochs, secs = [], [], 0, [], []
    test = tagged_sentences(splits.test)  # type: ignore[attr-defined]
    tokens = sum(len(s.words) for s in test[:200]) / max(1, len(test[:200]))
    for seed in range(a.seeds):
        cfg = ReferenceConfig(task="pos", epochs=a.reference_epochs, lr=3e-3, seed=seed,
                              tag_column=a.tags)
        t0 = time.perf_counter()
        ref = train_reference(splits.train, cfg, val_data=splits.val)  # type: ignore[attr-defined]
        secs.append(time.perf_counter() - t0)
        accs.append(100 * ref.accuracy(splits.test))  # type: ignore[attr-defined]
        # As run_ngram times ours: raw words in, one sentence per call.
        if not a.no_timing:
            per = latency_per_item(lambda s, r=ref: r.tag([x.words for x in s]), test[:200])
            lat.append(per["median_ms"] / tokens)
        nbytes, epochs = ref.nbytes(), epochs + [ref.chosen_epoch]
        log(f"BiLSTM seed {seed}: {accs[-1]:.2f} %, {nbytes} B, epoch {ref.chosen_epoch}")
    return {"acc": accs, "lat": lat, "bytes": nbytes, "epochs": epochs, "secs": secs,
            "config": cfg.to_dict(), "vocab": len(ref.config.vocab)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_split_flags(p, data="pos-turkish")
    p.add_argument("--budgets", default="32000,100000,300000")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--reference-epochs", type=int, default=40,
                   help="epochs of the BiLSTM reference (0: skip it)")
    p.add_argument("--tags", default="upos", choices=("upos", "xpos"))
    p.add_argument("--no-timing", action="store_true",
                   help="leave the latency cells out (a run that cannot hold the timing "
                        "lock: accuracy and bytes only)")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "text-runs"))
    p.add_argument("--results", default=str(Path(__file__).parent / "results" / "text_pos.md"))
    a = p.parse_args()
    torch.set_num_threads(1)
    splits = splits_from_args(a)
    ref = _reference(splits, a) if a.reference_epochs > 0 else None
    budgets = [int(b) for b in a.budgets.split(",")]
    if ref is not None and ref["bytes"] // 10 not in budgets:
        budgets.append(int(ref["bytes"]) // 10)
    rows = []
    for budget in sorted(budgets):
        acc8, accf, lat = [], [], []
        for seed in range(a.seeds):
            cfg = NgramConfig(task="pos", budget_bytes=budget, epochs=a.epochs, seed=seed,
                              tag_column=a.tags)
            f = run_ngram(cfg, splits, Path(a.out) / f"pos-{budget}-s{seed}", force=True,
                          threads=1).figures
            acc8.append(100 * f["accuracy"]["test"]["8bit"])
            accf.append(100 * f["accuracy"]["test"]["float"])
            lat.append(f["latency_per_token_ms"])
            log(f"budget {budget} seed {seed}: {acc8[-1]:.2f} %")
        rows.append((budget, f, acc8, accf, lat))

    def timed(xs: list[float]) -> str:
        return mean_sd(xs, 3) if xs and not a.no_timing else "not timed"

    lines = [results_header("Turkish POS tagging under a memory budget (hashed features, "
                            "greedy decoding) vs a BiLSTM", notes=f"{a.seeds} seeds (mean ± "
                            f"sd), tags {a.tags}, epoch chosen on validation; test = the "
                            f"{len(splits.test)} held-out web sentences" + (
                                "; timings not measured (--no-timing: run without the timing "
                                "lock)" if a.no_timing else "")), "",
             "| model | bytes 8-bit / float | token acc 8-bit (%) | token acc float (%) "
             "| latency/token (ms) |", "|---|---|---|---|---|"]
    for budget, f, acc8, accf, lat in rows:
        lines.append(f"| n-gram, budget {budget} B | {f['bytes']} / {f['float_bytes']} | "
                     f"{mean_sd(acc8)} | {mean_sd(accf)} | {timed(lat)} |")
    if ref is not None:
        c = ref["config"]
        lines.append(f"| BiLSTM reference (float32) | — / {ref['bytes']} | — | "
                     f"{mean_sd(ref['acc'])} | {timed(ref['lat'])} |")
        lines += ["", "Latency/token: median time of one call with one raw sentence (words in, "
                  "tags out; 200 test sentences) / the mean sentence length, one thread.", "",
                  f"Reference: BiLSTM ({c['hidden']} units per direction) over word embeddings "
                  f"({ref['vocab']} training words + unknown, {c['word_dim']} dims) ++ a "
                  f"character CNN of each word ({c['char_buckets']} buckets x {c['char_dim']}, "
                  f"width 3 x {c['char_channels']} channels, max over the first "
                  f"{c['word_chars']} characters), linear; {a.reference_epochs} epochs, Adam "
                  f"lr {c['lr']}, epoch chosen on validation (chosen: {ref['epochs']})"
                  + ("." if a.no_timing else f"; training {mean_sd(ref['secs'], 0)} s per "
                     "seed on one thread."), "",
                  "Target:", ""]
        r = statistics.mean(ref["acc"])
        fits = [(b, f, statistics.mean(acc8)) for b, f, acc8, *_ in rows
                if ref["bytes"] / f["bytes"] >= 10]
        if fits:
            b, f, m = max(fits, key=lambda t: t[2])
            lines.append(f"- within 2 pt of the BiLSTM ({r:.2f} %) at >= 10x less memory: "
                         f"{'met' if r - m <= 2 else 'not met'} ({b} B: {m:.2f} %, "
                         f"{m - r:+.2f} pt vs the BiLSTM, {ref['bytes'] / f['bytes']:.1f}x less "
                         "memory).")
    write_results(a.results, with_superseded(a.results, "\n".join(lines) + "\n"))


if __name__ == "__main__":
    main()
