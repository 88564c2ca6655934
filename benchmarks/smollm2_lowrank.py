"""SmolLM2-135M: SVD of the decoder's linear layers, plain vs data-aware, perplexity vs FLOPs.

The model is ``frugalnn.create_model("smollm2_135m")`` (transformers'
``LlamaForCausalLM``, float32 from the package's Q4_1 GGUF file). ``frugalnn.lowrank``
factorises every ``nn.Linear`` under ``model.layers.*`` (attention projections
``q/k/v/o_proj`` and the SwiGLU ``gate/up/down_proj``; the tied embedding / LM
head stays dense) by truncated SVD to whole-model targets (``model-flops=X``:
ranks allocated across the layers by discarded spectral energy), no fine-tuning.
``data-aware`` fits each layer's outputs on its inputs
(:mod:`frugalnn.methods.lowrank.calibrate`), calibrated on the first half of the
validation windows, and allocates the ranks by each layer's measured output gain
(:mod:`frugalnn.methods.lowrank.sensitivity`, on ``--gain-examples`` of those
windows); plain SVD reads the weights alone.

Data: WikiText-2 (tokenised release) cut by SmolLM2's own tokenizer into
non-overlapping windows of ``--context`` tokens, as in ``real_smollm2.py``. The
operating point of each variant is chosen on the second half of the validation
windows (the cheapest target within ``--max-ppl-increase`` of dense); test
perplexity (the first ``--test-windows`` test windows) is printed for every
target, as the curve, and never used to choose. Tokens/s: each model
interleaved with dense (``frugalnn.time_budgets``) under the timing lock.

``--finetune-epochs N``: each factorised model is then fine-tuned by the
recipe (distillation from dense, 0.5 x token cross-entropy + 0.5 x KL at T 2,
AdamW, cosine schedule) on the calibration windows and the next
``--finetune-windows`` validation windows after the choice windows (test never
read), and the dense model gets the same fine-tuning as a control (a row of its
own): WikiText-2 training moves dense perplexity too, so the operating point is
chosen against the better of dense and its control on validation.

    make smollm
    python benchmarks/smollm2_lowrank.py --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import torch
from _common import log, results_header, write_results
from real_smollm2 import scored, tokens_per_s
from torch.utils.data import ConcatDataset, Subset

import frugalnn
from frugalnn.data.base import resolve_data_dir
from frugalnn.data.pretrained_eval import wikitext2_subwords
from frugalnn.data.splits import seeded_loader
from frugalnn.errors import UserError
from frugalnn.methods.lowrank.pipeline import distill_finetune
from frugalnn.models.published import smollm2_tokenizer

VARIANTS = ("plain", "data-aware")
#: The fine-tuning of the low-rank models and of the dense control alike.
FINETUNE = {"optimizer": "adamw", "weight_decay": 0.0, "alpha": 0.5, "temperature": 2.0}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", help="data directory (default: $FRUGALNN_DATA)")
    p.add_argument("--context", type=int, default=256, help="tokens per window (256)")
    p.add_argument("--test-windows", type=int, default=8, help="first N test windows (8)")
    p.add_argument("--val-windows", type=int, default=32,
                   help="first N validation windows: half calibrate, half choose (32)")
    p.add_argument("--batch-size", type=int, default=4, help="windows per batch (4)")
    p.add_argument("--targets", default="model-flops=1.05,model-flops=1.1,model-flops=1.2",
                   help="comma-separated low-rank targets")
    p.add_argument("--variants", default=",".join(VARIANTS), help="plain, data-aware")
    p.add_argument("--gain-examples", type=int, default=2,
                   help="data-aware: calibration windows each layer's output gain is "
                        "measured on (one forward per layer, 210 layers; 2)")
    p.add_argument("--finetune-epochs", type=int, default=0,
                   help="fine-tune each factorised model (and a dense control) N epochs (0)")
    p.add_argument("--finetune-windows", type=int, default=64,
                   help="validation windows after the choice windows added to the "
                        "fine-tuning data (64)")
    p.add_argument("--finetune-lr", type=float, default=2e-5, help="AdamW lr (2e-5)")
    p.add_argument("--seed", type=int, default=0, help="fine-tuning seed (0)")
    p.add_argument("--max-ppl-increase", type=float, default=0.05)
    p.add_argument("--repeats", type=int, default=3, help="timed calls per setting")
    p.add_argument("--rounds", type=int, default=2, help="interleaved timing rounds")
    p.add_argument("--threads", type=int, default=2, help="torch threads while timing")
    p.add_argument("--no-timing", action="store_true", help="skip tokens/s")
    p.add_argument("--out", default="benchmarks/results/real_smollm2_lowrank.md")
    a = p.parse_args(argv)
    variants = a.variants.split(",")
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        p.error(f"unknown --variants {unknown[0]!r}; use {', '.join(VARIANTS)}")
    data_dir = resolve_data_dir(a.data_dir)
    torch.manual_seed(0)

    dense = frugalnn.create_model("smollm2_135m").eval()
    tok = smollm2_tokenizer()
    test = wikitext2_subwords(data_dir, "test", tok, a.context, limit=a.test_windows)
    tune = a.finetune_epochs > 0
    val = wikitext2_subwords(data_dir, "valid", tok, a.context,
                             limit=a.val_windows + (a.finetune_windows if tune else 0))
    half = a.val_windows // 2
    calibrate = Subset(val, range(half))
    choose = Subset(val, range(half, a.val_windows))
    train = ConcatDataset([calibrate, Subset(val, range(a.val_windows, len(val)))])
    d_val = scored(dense, choose, a.batch_size)[0]
    d_test = scored(dense, test, a.batch_size)[0]
    batch = torch.stack([test[i][0] for i in range(a.batch_size)])
    log(f"dense: val ppl {d_val['ppl']:.2f}, test ppl {d_test['ppl']:.2f}, "
        f"{d_test['flops_per_token'] / 1e6:.1f} MFLOPs/token")
    control = None
    if tune:  # the dense model given the same fine-tuning
        t0 = time.perf_counter()
        tuned = copy.deepcopy(dense)
        distill_finetune(tuned, dense, seeded_loader(train, a.batch_size, a.seed),
                         epochs=a.finetune_epochs, **FINETUNE, lr=a.finetune_lr, seed=a.seed)
        tuned.eval()
        control = {"val": scored(tuned, choose, a.batch_size)[0]["ppl"],
                   "test": scored(tuned, test, a.batch_size)[0]["ppl"],
                   "seconds": time.perf_counter() - t0}
        log(f"dense control, same fine-tuning: {control}")
        del tuned
    rows = []
    for variant in variants:
        for target in a.targets.split(","):
            cfg = frugalnn.LowRankConfig(
                method="svd", target=target, include=["model.layers.*"],
                finetune_epochs=a.finetune_epochs, lr=a.finetune_lr, batch_size=a.batch_size,
                seed=a.seed, **FINETUNE,
                data_aware=variant == "data-aware", calibration_examples=len(calibrate),
                gain_examples=a.gain_examples if variant == "data-aware"
                and target.startswith("model-") else 0)
            t0 = time.perf_counter()
            try:
                small = frugalnn.lowrank(dense, cfg, train_data=train if tune else calibrate)
                small.eval()
            except UserError as exc:
                rows.append({"variant": variant, "target": target, "refused": str(exc)})
                log(f"{variant} {target}: refused: {exc}")
                continue
            seconds = time.perf_counter() - t0
            full = [small.full_budget()]  # the factorised ranks (its knob can cut them further)
            v = scored(small, choose, a.batch_size, full)[0]
            t = scored(small, test, a.batch_size, full)[0]
            tps = dense_tps = float("nan")
            if not a.no_timing:
                tps, dense_tps = tokens_per_s(small, dense, batch, a)
            rows.append({"variant": variant, "target": target, "val": v["ppl"],
                         "test": t["ppl"], "flops": t["flops_per_token"], "tps": tps,
                         "dense_tps": dense_tps, "seconds": seconds})
            log(f"{variant} {target}: {rows[-1]}")
            del small

    best_val = min(d_val["ppl"], control["val"]) if control else d_val["ppl"]
    limit = best_val * (1 + a.max_ppl_increase)
    chosen = {}
    for variant in variants:
        ok = [r for r in rows if r["variant"] == variant and "val" in r and r["val"] <= limit]
        chosen[variant] = min(ok, key=lambda r: r["flops"])["target"] if ok else None
    lines = [results_header(
        "SmolLM2-135M: truncated SVD of the decoder's linear layers, plain vs data-aware",
        notes=f"WikiText-2 (tokenised release) with SmolLM2's tokenizer, windows of "
        f"{a.context} tokens, no overlap: calibration = first {len(calibrate)} validation "
        f"windows (data-aware only), choice = next {len(choose)}, test = first {len(test)} "
        f"test windows ({len(test) * a.context} tokens). Every nn.Linear under "
        "model.layers.* factorised by the low-rank recipe (svd, whole-model FLOP targets, "
        + (f"then {a.finetune_epochs} epoch(s) of the recipe's fine-tuning (distillation "
           f"from dense, AdamW lr {a.finetune_lr:g}, batch {a.batch_size}, seed {a.seed}) on "
           f"{len(train)} validation windows (the calibration windows and windows "
           f"{a.val_windows + 1}-{len(val)}); the dense control gets the same fine-tuning"
           if tune else "no fine-tuning") + "); embedding / LM head dense. FLOPs per token "
        "from frugalnn.evaluate "
        f"(attention and LM head included). Tokens/s: batch {a.batch_size} x {a.context} "
        f"tokens, {a.threads} thread(s), {a.rounds} interleaved rounds with dense, median "
        f"of {a.repeats} calls. Operating point per variant: the cheapest target whose "
        f"validation perplexity is within +{a.max_ppl_increase:.0%} of dense"
        + (" or of its fine-tuned control, whichever is lower" if tune else "") + ".")]
    lines += [
        "| variant | target | val ppl (vs dense) | test ppl (vs dense) | MFLOPs/token "
        "(fewer) | tokens/s | dense tokens/s (same rounds) | chosen on validation |",
        "|---|---|---|---|---|---|---|---|",
        f"| dense | - | {d_val['ppl']:.2f} | {d_test['ppl']:.2f} | "
        f"{d_test['flops_per_token'] / 1e6:.1f} | - | - | - |"]
    if control:
        lines.append(f"| dense, same fine-tuning (control) | - | {control['val']:.2f} "
                     f"({control['val'] / d_val['ppl'] - 1:+.1%}) | {control['test']:.2f} "
                     f"({control['test'] / d_test['ppl'] - 1:+.1%}) | "
                     f"{d_test['flops_per_token'] / 1e6:.1f} | - | - | - |")
    for r in rows:
        if "refused" in r:
            lines.append(f"| {r['variant']} | {r['target']} | refused: {r['refused']} "
                         "| | | | | |")
            continue
        lines.append(
            f"| {r['variant']} | {r['target']} | {r['val']:.2f} "
            f"({r['val'] / d_val['ppl'] - 1:+.1%}) | {r['test']:.2f} "
            f"({r['test'] / d_test['ppl'] - 1:+.1%}) | {r['flops'] / 1e6:.1f} "
            f"({d_test['flops_per_token'] / r['flops']:.2f}x) | {r['tps']:.0f} | "
            f"{r['dense_tps']:.0f} | {'yes' if chosen[r['variant']] == r['target'] else ''} |")
    for variant in variants:
        if chosen[variant] is None:
            lines.append(f"\n{variant}: no target within +{a.max_ppl_increase:.0%} of dense "
                         + ("(or of its fine-tuned control) " if control else "")
                         + "on validation.")
    if control:
        for r in rows:
            if "val" in r:
                lines.append(f"\n{r['variant']} {r['target']} against the fine-tuned control: "
                             f"val {r['val'] / control['val'] - 1:+.1%}, test "
                             f"{r['test'] / control['test'] - 1:+.1%}.")
    write_results(Path(a.out), "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
