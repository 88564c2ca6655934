"""SmolLM2-135M (Hugging Face Llama, SwiGLU): dense perplexity and cost, then MoE FFNs.

The model is ``frugalnn.create_model("smollm2_135m")``: transformers'
``LlamaForCausalLM`` read as float32 from the package's Q4_1 GGUF file.
Data: WikiText-2 (the tokenised release, with ``<unk>``) cut by SmolLM2's own
tokenizer into non-overlapping windows of ``--context`` tokens; perplexity =
exp(mean token NLL) over the first ``--test-windows`` windows of test (scored
through ``frugalnn.evaluate``). The figures are not comparable with published
perplexities on the raw WikiText-2 text.

MoE: ``frugalnn.moe`` converts the 30 gated FFNs (``model.layers.*.mlp``); its
routers (and, with ``--finetune-epochs``, the routed fine-tune distilling from
the dense model) are trained on the first half of the validation windows, ``tau`` is
chosen on the second half (the cheapest tau whose perplexity is within
``--max-ppl-increase`` of dense), and only then is test scored. FFN FLOPs
removed = (dense FLOPs - MoE FLOPs) / dense FFN FLOPs, all per token, from the
per-example costs ``frugalnn.evaluate`` records. Tokens/s: interleaved with the
dense model (``frugalnn.time_budgets``) under the timing lock.

    make smollm
    python benchmarks/real_smollm2.py --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
import copy
import math
from pathlib import Path
from typing import Any

import torch
from _common import log, results_header, timing_lock, write_results
from torch.utils.data import DataLoader, Subset

import frugalnn
from frugalnn.data.base import resolve_data_dir
from frugalnn.data.pretrained_eval import wikitext2_subwords
from frugalnn.errors import UserError
from frugalnn.models.published import smollm2_tokenizer


def scored(model: torch.nn.Module, data: Any, batch_size: int,
           budgets: list[float] | None = None) -> list[dict[str, Any]]:
    """Per-budget rows of ``frugalnn.evaluate`` with ``ppl`` = exp(mean token NLL)
    (every window has the same number of tokens) and ``flops_per_token``."""
    loader = DataLoader(data, batch_size=batch_size, shuffle=False)
    records = frugalnn.evaluate(model, loader, budgets=budgets, progress=False)
    tokens = data[0][1].numel()
    rows = records.per_budget_summary(baseline_flops=None)
    for r in rows:
        r["ppl"] = math.exp(r["loss"])
        r["flops_per_token"] = r["flops"] / tokens
    return rows


def ffn_flops_per_token(model: torch.nn.Module) -> float:
    """FLOPs per token of the gated FFNs (three ``d x h`` matmuls per layer)."""
    cfg = model.config
    return 2.0 * 3 * cfg.hidden_size * cfg.intermediate_size * cfg.num_hidden_layers


def tokens_per_s(model: torch.nn.Module, reference: torch.nn.Module, batch: torch.Tensor,
                 a: argparse.Namespace) -> tuple[float, float]:
    """Interleaved tokens/s of ``model`` and ``reference`` on ``batch`` (one size)."""
    full = [model.full_budget()] if hasattr(model, "full_budget") else None
    with timing_lock():
        row = frugalnn.time_budgets(model, batch, full, batch_sizes=(len(batch),),
                                    reference=reference, rounds=a.rounds, repeats=a.repeats,
                                    threads=a.threads, warmup=1, progress=False)[-1]
    n = batch.numel()
    inter = row["interleaved"]
    return n / (min(inter["model_ms"]) / 1e3), n / (min(inter["reference_ms"]) / 1e3)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", help="data directory (default: $FRUGALNN_DATA)")
    p.add_argument("--context", type=int, default=256, help="tokens per window (256)")
    p.add_argument("--test-windows", type=int, default=32, help="first N test windows")
    p.add_argument("--val-windows", type=int, default=32,
                   help="first N validation windows: half train routers, half choose tau")
    p.add_argument("--batch-size", type=int, default=4, help="windows per batch")
    p.add_argument("--experts", type=int, default=8, help="experts per FFN")
    p.add_argument("--router-epochs", type=int, default=1)
    p.add_argument("--finetune-epochs", type=int, default=0,
                   help="routed fine-tune of the MoE model (distilling from dense) on the "
                   "router windows, first half of validation (0: none)")
    p.add_argument("--finetune-taus", type=float, nargs="+", default=[0.4, 0.5, 0.6])
    p.add_argument("--finetune-lr", type=float, default=1e-4)
    p.add_argument("--taus", type=float, nargs="+", default=[0.3, 0.4, 0.5, 0.6, 0.8, 1.0])
    p.add_argument("--max-ppl-increase", type=float, default=0.05)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--repeats", type=int, default=3, help="timed calls per setting")
    p.add_argument("--rounds", type=int, default=2, help="interleaved timing rounds")
    p.add_argument("--threads", type=int, default=2, help="torch threads while timing")
    p.add_argument("--skip-moe", action="store_true")
    p.add_argument("--out", default="benchmarks/results/real_smollm2.md")
    a = p.parse_args(argv)
    data_dir = resolve_data_dir(a.data_dir)
    torch.manual_seed(0)

    dense = frugalnn.create_model("smollm2_135m")
    tok = smollm2_tokenizer()
    test = wikitext2_subwords(data_dir, "test", tok, a.context, limit=a.test_windows)
    val = wikitext2_subwords(data_dir, "valid", tok, a.context, limit=a.val_windows)
    n_test_tokens = len(test) * a.context
    params = sum(p.numel() for p in dense.parameters())  # tied embeddings counted once
    log(f"dense: {params / 1e6:.1f} M params; scoring {n_test_tokens} test tokens")
    d_test = scored(dense, test, a.batch_size)[0]
    d_val = scored(dense, Subset(val, range(len(val) // 2, len(val))), a.batch_size)[0]
    ffn = ffn_flops_per_token(dense)
    batch = torch.stack([test[i][0] for i in range(a.batch_size)])
    log(f"dense test ppl {d_test['ppl']:.2f}, {d_test['flops_per_token'] / 1e6:.1f} MFLOPs/token")

    lines = [results_header(
        "SmolLM2-135M (GGUF Q4_1 weights as float32): dense and MoE FFNs",
        notes=f"WikiText-2 (tokenised release) with SmolLM2's tokenizer, windows of {a.context} "
        f"tokens, no overlap: test = first {len(test)} windows ({n_test_tokens} tokens), "
        f"validation = first {len(val)} windows. FLOPs per token from frugalnn.evaluate "
        f"(2 x MACs, attention included); dense FFN FLOPs/token {ffn / 1e6:.1f} M. "
        f"Tokens/s: batch {a.batch_size} x {a.context} tokens, {a.threads} thread(s), "
        f"{a.rounds} interleaved rounds, median of {a.repeats} calls. Routed fine-tune: "
        f"{a.finetune_epochs} epoch(s) at taus {a.finetune_taus}, lr {a.finetune_lr}, on the "
        "router windows.")]
    table = ["| model | tau | val ppl | test ppl | MFLOPs/token | FFN FLOPs removed | "
             "tokens/s | dense tokens/s (same rounds) |", "|---|---|---|---|---|---|---|---|"]
    moe_note = ""
    sweep = ["| seed | tau | val ppl | vs dense | FFN FLOPs removed |", "|---|---|---|---|---|"]
    if a.skip_moe:
        moe_note = "MoE: not run (--skip-moe)."
    for seed in [] if a.skip_moe else a.seeds:
        cfg = frugalnn.MoEConfig(experts=a.experts, router_epochs=a.router_epochs,
                                 taus=a.taus, batch_size=a.batch_size, seed=seed,
                                 latency_repeats=1, finetune_epochs=a.finetune_epochs,
                                 finetune_taus=a.finetune_taus, finetune_lr=a.finetune_lr)
        try:
            moe = frugalnn.moe(copy.deepcopy(dense), cfg,
                               train_data=Subset(val, range(len(val) // 2)))
        except UserError as exc:
            moe_note = f"MoE: not run, the conversion refused this model: {exc}"
            log(moe_note)
            break
        choose = scored(moe, Subset(val, range(len(val) // 2, len(val))), a.batch_size,
                        budgets=list(a.taus))
        for r in sorted(choose, key=lambda r: float(r["budget"])):
            sweep.append(f"| {seed} | {float(r['budget']):g} | {r['ppl']:.2f} | "
                         f"{r['ppl'] / d_val['ppl'] - 1:+.1%} | "
                         f"{(d_val['flops_per_token'] - r['flops_per_token']) / ffn:.1%} |")
            log(sweep[-1])
        ok = [r for r in choose if r["ppl"] <= d_val["ppl"] * (1 + a.max_ppl_increase)]
        pick = min(ok, key=lambda r: r["flops"]) if ok else max(choose,
                                                                key=lambda r: r["budget"])
        tau = float(pick["budget"])
        row = scored(moe, test, a.batch_size, budgets=[tau])[0]
        moe.set_budget(tau)
        tps, dense_tps = tokens_per_s(moe, dense, batch, a)
        moe.set_budget(moe.full_budget())
        removed = (d_test["flops_per_token"] - row["flops_per_token"]) / ffn
        table.append(f"| MoE {a.experts} experts, seed {seed} | {tau:g} | {pick['ppl']:.2f} | "
                     f"{row['ppl']:.2f} | {row['flops_per_token'] / 1e6:.1f} | "
                     f"{removed:.1%} | {tps:.0f} | {dense_tps:.0f} |")
        log(table[-1])
    dense_tps, _ = tokens_per_s(dense, dense, batch, a)
    table.insert(2, f"| dense | - | {d_val['ppl']:.2f} | {d_test['ppl']:.2f} | "
                    f"{d_test['flops_per_token'] / 1e6:.1f} | 0 | {dense_tps:.0f} | - |")
    lines += table + ([f"\n{moe_note}"] if moe_note else [])
    if len(sweep) > 2:
        lines += ["", "Validation sweep (second half of the validation windows; tau is chosen "
                  f"here: the cheapest within +{a.max_ppl_increase:.0%} of dense):", ""] + sweep
    write_results(Path(a.out), "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
