"""MiniLM-L6 (pretrained BERT, GELU) as mixture-of-experts: embedding fidelity vs FFN FLOPs.

For each tau of dynamic-k routing: mean cosine similarity between the
converted model's sentence embeddings and the dense model's, on WikiText-2
(test) and tiny-shakespeare (last 10 %) sentences, and agreement of nearest
neighbours (same nearest other sentence under cosine), against the fraction
of FFN FLOPs run (padding excluded: batches are trimmed to their longest
sentence). Optionally (``--sparsify-steps``) D2DMoE's sparsity enforcement
first: GELU -> ReLU, fine-tuning with the Hoyer penalty while distilling the
dense embeddings (cosine), with the sparsity report before and after.

    .venv/bin/python benchmarks/moe_minilm.py --data-dir /path/to/data

Writes ``runs/bench/results/moe_minilm.md`` (+ ``.json``), gathered by ``moe_collect.py``.
"""

from __future__ import annotations

import argparse
import copy
import os
import random
import re
import sys
import time
from pathlib import Path
from typing import Any

import torch
from _common import log, results_header, write_results
from torch.utils.data import DataLoader, TensorDataset

from frugalnn.analysis.sparsity import activation_sparsity
from frugalnn.cost.latency import measure_latency
from frugalnn.cost.machine import describe_machine
from frugalnn.methods.moe import enforce_sparsity
from frugalnn.methods.moe.recipe import MoEConfig, moe
from frugalnn.models import create_model
from frugalnn.models.bert import encode_texts
from frugalnn.utils.io import write_json_atomic

# Sections land here; benchmarks/moe_collect.py assembles them into results/moe.md.
RESULTS = Path("runs/bench/results")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=os.environ.get("FRUGALNN_DATA"))
    p.add_argument("--eval-sentences", type=int, default=256, help="per corpus")
    p.add_argument("--train-sentences", type=int, default=1024, help="router training")
    p.add_argument("--max-len", type=int, default=64)
    p.add_argument("--experts", type=int, default=16)
    p.add_argument("--router-epochs", type=int, default=2)
    p.add_argument("--sparsify-steps", type=int, default=0, help="0 = no sparsity enforcement")
    p.add_argument("--sparsity-weight", type=float, default=0.05)
    p.add_argument("--taus", default="0.5,0.7,0.8,0.9,0.95,0.99,1.0")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--latency-repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(RESULTS / "moe_minilm.md"))
    return p.parse_args(argv)


def wikitext_sentences(path: Path) -> list[str]:
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("="):
            continue
        line = line.replace(" @-@ ", "-").replace(" @,@ ", ",").replace(" @.@ ", ".")
        for sent in re.split(r"(?<=[.!?]) ", line):
            words = sent.split()
            if 8 <= len(words) <= 40 and "<unk>" not in sent:
                out.append(sent)
    return out


def shakespeare_sentences(text: str) -> list[str]:
    out = []
    for speech in text.split("\n\n"):
        lines = [ln for ln in speech.splitlines() if ln and not ln.endswith(":")]
        words = " ".join(lines).split()
        if 6 <= len(words) <= 40:
            out.append(" ".join(words))
    return out


def corpora(data_dir: Path, n_eval: int, n_train: int, seed: int) -> tuple[dict, list[str]]:
    rng = random.Random(seed)
    wt = data_dir / "text" / "wikitext-2"
    shakes = (data_dir / "text" / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")
    cut = int(0.9 * len(shakes))
    evals = {
        "wikitext-2 (test)": wikitext_sentences(wt / "test.txt"),
        "tiny-shakespeare (last 10 %)": shakespeare_sentences(shakes[cut:]),
    }
    evals = {k: rng.sample(v, min(n_eval, len(v))) for k, v in evals.items()}
    train = wikitext_sentences(wt / "valid.txt") + shakespeare_sentences(shakes[:cut])
    return evals, rng.sample(train, min(n_train, len(train)))


def batches(x: torch.Tensor, bs: int) -> list[torch.Tensor]:
    """Batches trimmed to their longest sentence (no FFN work on all-padding columns)."""
    out = []
    for i in range(0, x.shape[0], bs):
        b = x[i:i + bs]
        length = int(b[:, 1].sum(1).max())
        out.append(b[:, :, :length].contiguous())
    return out


@torch.inference_mode()
def embed(model: Any, bx: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([model(b) for b in bx])


def fidelity(e: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    cos = torch.nn.functional.cosine_similarity(e, ref, dim=-1).mean().item()

    def nn_index(v: torch.Tensor) -> torch.Tensor:
        v = torch.nn.functional.normalize(v, dim=-1)
        sim = v @ v.t()
        sim.fill_diagonal_(-2.0)
        return sim.argmax(1)

    return cos, (nn_index(e) == nn_index(ref)).float().mean().item()


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    if not a.data_dir:
        raise SystemExit("pass --data-dir or set FRUGALNN_DATA")
    log("loading MiniLM-L6 and sentences")
    dense = create_model("bert_minilm").eval()
    evals, train_s = corpora(Path(a.data_dir), a.eval_sentences, a.train_sentences, a.seed)
    enc = {k: batches(encode_texts(v, a.max_len), a.batch_size) for k, v in evals.items()}
    train_x = encode_texts(train_s, a.max_len)
    train_dl = DataLoader(TensorDataset(train_x), batch_size=32, shuffle=True,
                          generator=torch.Generator().manual_seed(a.seed))
    ref = {k: embed(dense, bx) for k, bx in enc.items()}
    all_eval = [b for bx in enc.values() for b in bx]
    sparsity = {"before": activation_sparsity(dense, all_eval, meta={"model": "MiniLM-L6"})}
    model = copy.deepcopy(dense)
    if a.sparsify_steps > 0:
        log(f"sparsity enforcement: {a.sparsify_steps} steps")
        steps_dl = DataLoader(TensorDataset(train_x[: a.sparsify_steps * 16]), batch_size=16,
                              shuffle=True, generator=torch.Generator().manual_seed(a.seed))
        enforce_sparsity(model, steps_dl, epochs=1, lam=a.sparsity_weight, lr=5e-5,
                         objective="embedding", seed=a.seed, schedule="none")
        sparsity["after"] = activation_sparsity(model, all_eval,
                                                meta={"model": "MiniLM-L6 after enforcement"})
    log("converting")
    t0 = time.time()
    # The recipe's conversion (no labels: sparsity enforcement with the embedding
    # objective ran above, so the config leaves it off).
    converted = moe(model, MoEConfig(experts=a.experts, router_epochs=a.router_epochs,
                                     seed=a.seed), train_data=train_dl)
    log(f"converted + routers in {time.time() - t0:.0f} s")
    lat_batch = all_eval[0]
    with torch.inference_mode():
        dense_ms = measure_latency(dense, lat_batch, warmup=2, repeats=a.latency_repeats).median_ms
    rows = []
    for tau in [float(t) for t in a.taus.split(",")]:
        converted.set_budget(tau)
        converted.reset_stats()
        row: dict[str, Any] = {"tau": tau}
        for name, bx in enc.items():
            cos, agree = fidelity(embed(converted, bx), ref[name])
            row[name] = {"cosine": cos, "nn_agreement": agree}
        row["ffn_fraction"] = converted.ffn_flops_fraction()
        with torch.inference_mode():
            row["latency_ms"] = measure_latency(converted, lat_batch, warmup=2,
                                                repeats=a.latency_repeats).median_ms
        rows.append(row)
        log(f"tau {tau}: FFN {100 * row['ffn_fraction']:.1f} %")
    machine = describe_machine()
    names = list(enc)
    # A section of results/moe.md (moe_collect.py): one level below the file's title.
    head = results_header("Mixture-of-experts: MiniLM-L6 sentence embeddings")
    lines = [
        head.replace("# ", "## ", 1),
        f"all-MiniLM-L6-v2 (pretrained, GELU), FFNs 384 -> 1536 -> 384 split into {a.experts} "
        f"experts ({1536 // a.experts} neurons) by balanced k-means; routers trained "
        f"{a.router_epochs} epoch(s) on {len(train_s)} sentences (WikiText-2 valid + first 90 % "
        f"of tiny-shakespeare); evaluation on {a.eval_sentences} random sentences per corpus, "
        f"max {a.max_len} tokens. Sparsity enforcement: "
        + (f"{a.sparsify_steps} steps (GELU -> ReLU, Hoyer weight {a.sparsity_weight}, cosine "
           "distillation)." if a.sparsify_steps else "none (the GELU model converted as is).")
        + f" Latency: one batch of {lat_batch.shape[0]} sentences x {lat_batch.shape[2]} tokens, "
        f"{a.threads} thread(s); dense model {dense_ms:.1f} ms.",
        "",
        "| tau | FFN FLOPs run % | FFN FLOPs saved % | "
        + " | ".join(f"{n}: cosine / NN agreement %" for n in names)
        + " | latency ms | speed-up |",
        "|---:|---:|---:|" + "---|" * len(names) + "---:|---:|",
    ]
    for r in rows:
        cells = " | ".join(f"{r[n]['cosine']:.4f} / {100 * r[n]['nn_agreement']:.1f}"
                           for n in names)
        lines.append(
            f"| {r['tau']} | {100 * r['ffn_fraction']:.1f} | {100 * (1 - r['ffn_fraction']):.1f} "
            f"| {cells} | {r['latency_ms']:.1f} | {dense_ms / r['latency_ms']:.2f}x |"
        )
    for key, rep in sparsity.items():
        lines += ["", f"### Activation sparsity of MiniLM-L6 FFNs ({key} enforcement; padding "
                  "tokens included)", "", rep.table()]
    lines.append(f"Load average at the end: {[round(v, 2) for v in os.getloadavg()]}.")
    md = "\n".join(lines) + "\n"
    write_results(a.out, md)
    write_json_atomic(Path(a.out).with_suffix(".json"), {
        "args": vars(a), "machine": machine, "dense_ms": dense_ms, "rows": rows,
        "sparsity": {k: v.to_dict() for k, v in sparsity.items()},
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
