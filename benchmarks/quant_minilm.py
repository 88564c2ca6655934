"""MiniLM-L6, dynamic int8: embedding fidelity, size and one-thread latency against float.

all-MiniLM-L6-v2 (the ``bert_minilm`` adapter) embeds WikiText-2 *test* lines
(the first ``--sentences`` prose lines, as in ``lowrank_minilm.py``); every
encoder ``nn.Linear`` (attention projections, FFN) is quantised by the int8
recipe (:func:`frugalnn.methods.quant.recipe.quantize`): ``dynamic`` (int8
weights, activations quantised per batch) and ``weight_only`` (int8 weights,
float activations); ``dynamic+uint8`` also stores the embedding tables in 8 bits
(``QuantConfig(embeddings="uint8")``). Fidelity is the mean (and minimum) cosine similarity of
each sentence embedding to the float model's, and the top-1 agreement of
nearest-neighbour retrieval among the sentences. Latency is the median of
``--repeats`` calls at batch ``--latency-batch`` x ``--max-len`` tokens on
``--threads`` thread(s), float and int8 timed alternately in the same process
(``--passes`` rounds), on the PyTorch CPU kernels each model really runs on.
Dynamic quantisation has no random element, so there is one run (no seeds).

Needs ``make bert`` and the data directory. Run timing under the shared lock:
``flock /tmp/frugalnn-timing.lock python benchmarks/quant_minilm.py``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from _common import log, results_header, write_results

from frugalnn.cost.count import format_bytes, measure
from frugalnn.cost.latency import measure_latency
from frugalnn.methods.quant.recipe import QuantConfig, quantize
from frugalnn.models import create_model
from frugalnn.models.bert import encode_texts


def wikitext_lines(data_dir: str, split: str, limit: int) -> list[str]:
    """The first ``limit`` prose lines of a WikiText-2 split (more than 8 words, no titles)."""
    text = (Path(data_dir) / "text" / "wikitext-2" / f"{split}.txt").read_text()
    return [ln.strip() for ln in text.splitlines() if len(ln.split()) > 8
            and not ln.strip().startswith("=")][:limit]


def embed(model: torch.nn.Module, x: torch.Tensor, batch: int = 32) -> torch.Tensor:
    with torch.inference_mode():
        return torch.cat([model(x[i:i + batch]) for i in range(0, len(x), batch)])


def fidelity(out: torch.Tensor, ref: torch.Tensor) -> dict[str, float]:
    cos = F.cosine_similarity(out, ref, dim=-1)
    r = F.normalize(ref, dim=-1)
    ref_nn = (r @ r.T).fill_diagonal_(-2).argmax(1)
    got = (F.normalize(out, dim=-1) @ r.T).fill_diagonal_(-2).argmax(1)
    return {"cos_mean": float(cos.mean()), "cos_min": float(cos.min()),
            "nn_agree": float((got == ref_nn).float().mean())}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=os.environ.get("FRUGALNN_DATA"))
    p.add_argument("--sentences", type=int, default=256)
    p.add_argument("--max-len", type=int, default=128)
    p.add_argument("--latency-batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--passes", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--modes", default="dynamic,dynamic+uint8,weight_only",
                   help="recipe modes; MODE+uint8 also stores the embedding tables in 8 bits")
    p.add_argument("--markdown", default="benchmarks/results/quant_minilm.md")
    args = p.parse_args(argv)
    if not args.data_dir:
        print("set --data-dir or FRUGALNN_DATA", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    x = encode_texts(wikitext_lines(args.data_dir, "test", args.sentences), max_len=args.max_len)
    xb = x[: args.latency_batch]
    base = create_model("bert_minilm").eval()
    ref = embed(base, x)
    models = {"float": base}
    for name in args.modes.split(","):
        log(f"quantising ({name})")
        mode, _, emb = name.partition("+")
        models[name] = quantize(base, QuantConfig(mode=mode, embeddings=emb or None))
    times: dict[str, list[float]] = {k: [] for k in models}
    for i in range(args.passes):
        for name, model in models.items():  # alternate, so load drifts hit all alike
            rec = measure_latency(model, xb, warmup=2, repeats=args.repeats,
                                  threads=args.threads)
            times[name].append(rec.median_ms)
        log(f"timing pass {i + 1}/{args.passes}")
    rows = []
    base_cost = measure(base, x[:1], depth=0)
    base_ms = statistics.median(times["float"])
    for name, model in models.items():
        cost = measure(model, x[:1], depth=0)
        fid = fidelity(embed(model, x), ref) if name != "float" else {
            "cos_mean": 1.0, "cos_min": 1.0, "nn_agree": 1.0}
        ms = statistics.median(times[name])
        prec = ", ".join(f"{k} {v / 1e6:.1f} M" for k, v in cost.flops_by_precision.items())
        rows.append(f"| {name} | {fid['cos_mean']:.4f} | {fid['cos_min']:.4f} | "
                    f"{fid['nn_agree']:.3f} | {format_bytes(cost.model_bytes)} "
                    f"({base_cost.model_bytes / cost.model_bytes:.2f}x smaller) | {prec} | "
                    f"{ms:.1f} (passes: {', '.join(f'{t:.1f}' for t in times[name])}) | "
                    f"{base_ms / ms:.2f}x |")
    text = results_header("MiniLM-L6: dynamic and weight-only int8 against float") + "\n".join([
        "",
        f"{len(x)} WikiText-2 test lines, {args.max_len} tokens; latency at batch "
        f"{args.latency_batch} x {args.max_len} tokens on {args.threads} thread(s), median of "
        f"{args.repeats} calls per pass, median over {args.passes} alternating passes; int8 "
        f"engine `{torch.backends.quantized.engine}` (PyTorch CPU kernels). FLOPs per sentence "
        "of 128 tokens by precision (attention products stay fp32 in every mode).",
        "",
        "| model | mean cosine to float | min cosine | NN agreement | size (state dict) | "
        "FLOPs/sentence by precision | ms / batch | speed-up |",
        "|---|---|---|---|---|---|---|---|",
        *rows, ""])
    write_results(args.markdown, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
