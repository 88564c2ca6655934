"""How much of SmolLM2-135M's SwiGLU FFN compute can routing skip at all, before fine-tuning?

A bound for the MoE target on SmolLM2 (>= 40 % of FFN FLOPs removed at
<= 5 % perplexity increase): every FFN of the model runs in full, and then
only the parts an *oracle* keeps are added up. No router can pick better
parts from less information, so a perplexity here is the best any router
reaches on this model without training it further.

Parts:

- ``neuron-h``: single neurons, scored by ``|act(gate) * up|`` (the exact
  contribution size of the hidden unit). Skipping them would remove a
  fraction ``s`` of the FFN FLOPs if a free predictor existed.
- ``neuron-gate``: single neurons scored by ``|act(gate)|`` alone: the gate
  projection runs in full, so only ``up`` and ``down`` are skipped
  (``2 s / 3`` of the FFN FLOPs). A real chooser, not a bound.
- ``neuron-predicted``: single neurons ranked by a rank-``r`` linear predictor
  fitted on the partition windows (``--predictor-ranks``): ``gate`` and ``up``
  each projected onto the top ``r`` principal directions of their outputs on
  those windows, the score ``|act(gate~) * up~|``. The predictor costs
  ``2 r (d + h)`` multiply-adds per token against ``3 d h`` for the FFN, so the
  FLOPs removed are the skipped fraction less that share: a real router.
- ``experts``: frugalnn's MoE conversion (``frugalnn.moe``, ``--experts`` per
  FFN, partition ``--splits``, no router training), its experts scored by the
  norm of their true output: the bound for that partition.

Each part kind is kept either per token (the top ``1 - s`` of every token's
parts) or pooled (the top ``1 - s`` of all parts of all tokens in a batch, so
that some tokens keep more than others, as ``tau`` routing allows).

Data: WikiText-2 (tokenised release) with SmolLM2's tokenizer in
non-overlapping windows of ``--context`` tokens; the MoE partition sees the
first half of the ``--val-windows`` validation windows, perplexities are
scored on the second half. Test is not read: this picks no operating point.

    make smollm
    python benchmarks/smollm2_ffn_bound.py --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
import copy
from collections.abc import Callable

import torch
from _common import log, results_header, write_results
from real_smollm2 import scored
from torch import nn
from torch.utils.data import Subset

import frugalnn
from frugalnn.data.base import resolve_data_dir
from frugalnn.data.pretrained_eval import wikitext2_subwords
from frugalnn.methods.moe.layer import MoEFFN
from frugalnn.models.published import smollm2_tokenizer

#: The fraction of parts skipped (kept: ``1 - s``); shared by every wrapped FFN.
SKIP = {"s": 0.0, "pooled": False}


def keep_mask(score: torch.Tensor, skip: float, pooled: bool) -> torch.Tensor:
    """``score`` ``(rows, parts)`` -> bool mask keeping the top ``1 - skip`` parts of each
    row, or (``pooled``) of all rows together, each part's score then taken relative to
    its row's total, as ``tau`` routing compares scores within a token (ties at the cut
    are kept)."""
    if skip <= 0:
        return torch.ones_like(score, dtype=torch.bool)
    if pooled:
        score = score / score.sum(-1, keepdim=True).clamp_min(1e-12)
        flat = score.flatten()
        drop = min(int(round(flat.numel() * skip)), flat.numel() - 1)
        cut = flat.kthvalue(drop + 1).values if drop > 0 else flat.min()
        return score >= cut
    keep = max(1, int(round(score.shape[-1] * (1 - skip))))
    return score >= score.topk(keep, dim=-1).values[..., -1:]


class NeuronOracle(nn.Module):
    """A gated FFN (``gate_proj``, ``up_proj``, ``down_proj``, ``act_fn``) that adds only
    the neurons ``keep_mask`` keeps, scored by ``score(act(gate), act(gate) * up)``."""

    def __init__(self, mlp: nn.Module,
                 score: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.mlp, self.score = mlp, score

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.mlp
        g = m.act_fn(m.gate_proj(x))
        h = g * m.up_proj(x)
        s = self.score(g, h).reshape(-1, h.shape[-1])
        mask = keep_mask(s, SKIP["s"], SKIP["pooled"]).reshape(h.shape)
        return m.down_proj(h * mask)


def output_subspace(x: torch.Tensor, layer: nn.Linear, rank: int) -> torch.Tensor:
    """The top ``rank`` principal directions ``(out, rank)`` of ``layer``'s outputs on the
    rows ``x``: projecting onto them is the rank-``rank`` map closest to ``layer`` on
    these inputs in squared error."""
    y = layer(x).double()
    return torch.linalg.eigh(y.T @ y).eigenvectors[:, -rank:].float()


class NeuronPredicted(nn.Module):
    """A gated FFN that adds only the neurons whose predicted contribution
    ``|act(gate~) * up~|`` is kept, ``gate~`` / ``up~`` being rank-``rank`` maps fitted
    on the inputs ``x`` the FFN saw. The FFN still runs in full (the perplexity of a
    router that skips the rest)."""

    def __init__(self, mlp: nn.Module, x: torch.Tensor, rank: int) -> None:
        super().__init__()
        self.mlp = mlp
        with torch.no_grad():
            maps = []
            for proj in (mlp.gate_proj, mlp.up_proj):
                v = output_subspace(x, proj, rank)
                maps.append((proj.weight.T @ v, (proj.bias @ v) if proj.bias is not None
                             else torch.zeros(rank), v.T.contiguous()))
        (self.g_in, self.g_bias, self.g_out), (self.u_in, self.u_bias, self.u_out) = maps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.mlp
        g_hat = m.act_fn((x @ self.g_in + self.g_bias) @ self.g_out)
        u_hat = (x @ self.u_in + self.u_bias) @ self.u_out
        h = m.act_fn(m.gate_proj(x)) * m.up_proj(x)
        s = (g_hat * u_hat).abs().reshape(-1, h.shape[-1])
        mask = keep_mask(s, SKIP["s"], SKIP["pooled"]).reshape(h.shape)
        return m.down_proj(h * mask)


def is_gated_ffn(m: nn.Module) -> bool:
    return all(hasattr(m, k) for k in ("gate_proj", "up_proj", "down_proj"))


def ffn_inputs(model: nn.Module, data: Subset, batch_size: int) -> dict[nn.Module, torch.Tensor]:
    """Every gated FFN's input rows ``(tokens, d)`` on ``data``."""
    seen: dict[nn.Module, list[torch.Tensor]] = {}
    hooks = [m.register_forward_pre_hook(
        lambda mod, args: seen.setdefault(mod, []).append(args[0].reshape(-1, args[0].shape[-1])))
        for m in model.modules() if is_gated_ffn(m)]
    try:
        with torch.no_grad():
            for i in range(0, len(data), batch_size):
                model(torch.stack([data[j][0] for j in range(i, min(i + batch_size, len(data)))]))
    finally:
        for h in hooks:
            h.remove()
    return {m: torch.cat(v) for m, v in seen.items()}


class ExpertOracle(nn.Module):
    """A :class:`MoEFFN` whose experts are kept by the norm of their true output."""

    def __init__(self, layer: MoEFFN) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m, s = self.layer, self.layer.expert_size
        x2 = x.reshape(-1, x.shape[-1])
        h = m.hidden(x2)
        ys = torch.stack([h[:, e * s:(e + 1) * s] @ m.fc2_weight_t[e * s:(e + 1) * s]
                          for e in range(m.num_experts)], 1)
        mask = keep_mask(ys.norm(dim=-1), SKIP["s"], SKIP["pooled"])
        y = (ys * mask.unsqueeze(-1)).sum(1) + m.fc2_bias
        return y.reshape(*x.shape[:-1], -1)


def swap_in(model: nn.Module, wrap: Callable[[nn.Module], nn.Module | None]) -> int:
    """Replace every submodule for which ``wrap`` returns a module; return how many."""
    n = 0
    for name, child in list(model.named_children()):
        new = wrap(child)
        if new is not None:
            setattr(model, name, new)
            n += 1
        else:
            n += swap_in(child, wrap)
    return n


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", help="data directory (default: $FRUGALNN_DATA)")
    p.add_argument("--context", type=int, default=256, help="tokens per window (256)")
    p.add_argument("--val-windows", type=int, default=16,
                   help="first N validation windows: half for the partition, half scored")
    p.add_argument("--batch-size", type=int, default=4, help="windows per batch")
    p.add_argument("--skips", type=float, nargs="+", default=[0.25, 0.4, 0.5, 0.6])
    p.add_argument("--experts", type=int, nargs="+", default=[8, 32])
    p.add_argument("--splits", nargs="+", default=["kmeans", "coactivation"])
    p.add_argument("--predictor-ranks", type=int, nargs="*", default=[32, 64],
                   help="ranks of the neuron predictor (none: skip it)")
    p.add_argument("--no-oracles", action="store_true",
                   help="only the predicted neurons (a quick look; the oracles are the bound)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="benchmarks/results/real_smollm2_bound.md")
    a = p.parse_args(argv)
    data_dir = resolve_data_dir(a.data_dir)
    torch.manual_seed(0)
    torch.set_num_threads(a.threads)
    dense = frugalnn.create_model("smollm2_135m").eval()
    val = wikitext2_subwords(data_dir, "valid", smollm2_tokenizer(), a.context,
                             limit=a.val_windows)
    half = len(val) // 2
    fit, scored_windows = Subset(val, range(half)), Subset(val, range(half, len(val)))
    base = scored(dense, scored_windows, a.batch_size)[0]["ppl"]
    log(f"dense ppl {base:.2f} on {len(scored_windows)} windows")

    # (parts, FFN FLOPs removed as a function of the skipped fraction, model)
    models: list[tuple[str, Callable[[float], float], nn.Module]] = []
    oracles = [] if a.no_oracles else [
        ("neuron-h (oracle)", lambda g, h: h.abs(), lambda s: s),
        ("neuron-gate (chooser)", lambda g, h: g.abs(), lambda s: 2 * s / 3)]
    for name, score, removed in oracles:
        model = copy.deepcopy(dense)
        swap_in(model, lambda c, s=score: NeuronOracle(c, s) if is_gated_ffn(c) else None)
        models.append((name, removed, model))
    inputs = ffn_inputs(dense, fit, a.batch_size) if a.predictor_ranks else {}
    d, h = dense.config.hidden_size, dense.config.intermediate_size
    for rank in a.predictor_ranks:
        model = copy.deepcopy(dense)
        pairs = dict(zip(dense.modules(), model.modules(), strict=True))
        x_of = {pairs[m]: x for m, x in inputs.items()}
        swap_in(model, lambda c, r=rank, x_of=x_of: NeuronPredicted(c, x_of[c], r)
                if is_gated_ffn(c) else None)
        share = 2 * rank * (d + h) / (3 * d * h)  # the predictor's cost / the FFN's
        models.append((f"neuron-predicted (rank {rank})", lambda s, c=share: s - c, model))
    for split in [] if a.no_oracles else a.splits:
        for experts in a.experts:
            log(f"MoE conversion: {experts} experts, split {split}")
            cfg = frugalnn.MoEConfig(experts=experts, expert_split=split, router_epochs=0,
                                     batch_size=a.batch_size, seed=0, latency_repeats=1)
            moe = frugalnn.moe(copy.deepcopy(dense), cfg, train_data=fit)
            swap_in(moe, lambda c: ExpertOracle(c) if isinstance(c, MoEFFN) else None)
            models.append((f"{experts} experts, {split} (oracle)", lambda s: s, moe))

    rows = ["| parts | kept per | skipped | FFN FLOPs removed | ppl | vs dense |",
            "|---|---|---:|---:|---:|---:|"]
    for name, removed, model in models:
        for pooled in (False, True):
            for s in a.skips:
                SKIP.update(s=s, pooled=pooled)
                ppl = scored(model, scored_windows, a.batch_size)[0]["ppl"]
                log(f"{name} {'pooled' if pooled else 'token'} skip {s}: ppl {ppl:.2f}")
                rows.append(f"| {name} | {'batch (pooled)' if pooled else 'token'} | "
                            f"{s:.0%} | {removed(s):.0%} | {ppl:.2f} | "
                            f"{100 * (ppl / base - 1):+.1f} % |")
    SKIP.update(s=0.0, pooled=False)
    text = results_header(
        "SmolLM2-135M: how much FFN compute an oracle router could skip",
        notes=f"WikiText-2 validation (tokenised release, SmolLM2's tokenizer), windows of "
        f"{a.context} tokens: the MoE partitions see windows 1-{half}, perplexity is "
        f"scored on windows {half + 1}-{len(val)} ({len(scored_windows) * a.context} tokens); "
        "test "
        f"is not read. Dense perplexity on them: {base:.2f}. Every FFN runs in full and only "
        "the kept parts are added: an oracle, the best any router could choose before "
        "fine-tuning. `kept per token`: the top parts of every token; `batch (pooled)`: "
        f"the top parts of all {a.batch_size * a.context} tokens of a batch together, each "
        "part scored relative to its token's total (so a token may keep more or fewer). FFN "
        "FLOPs removed: the fraction a router with free scores would save (neuron-gate "
        "computes the gate in full: 2/3 of the skipped fraction; neuron-predicted: the "
        "skipped fraction less the predictor's 2r(d+h) / 3dh share of the FFN).")
    write_results(a.out, text + "\n" + "\n".join(rows) + "\n")


if __name__ == "__main__":
    main()
