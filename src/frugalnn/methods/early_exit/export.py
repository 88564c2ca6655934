"""Early exits outside PyTorch: exported segments driven by a small runtime loop.

An :class:`EarlyExitModel` cannot be one graph: which rows go on past a head
depends on the data, and the exporters either refuse that control flow
(``torch.export``: GuardOnDataDependentSymNode) or freeze one path of it
(``torch.jit.trace``). So the model is cut at its heads:

- ``segment<h>``: (embedding,) the blocks up to head ``h``, then head ``h``;
  inputs ``state_in`` (and ``prev``, the previous head's logits, for cascaded
  heads), outputs ``state_out`` and ``logits``;
- ``final``: the blocks after the last head and the backbone's classifier;
- ``backbone``: the whole backbone in one graph, what the full budget runs.

:class:`EarlyExitRunner` runs them like :meth:`EarlyExitModel.forward`: after
each head the rows that exit are written out and dropped from the batch, so
later segments run on fewer rows, which is where the saving comes from. The
exit policy, the geometric ensemble and the final ensemble (a few hundred
FLOPs) run in the loop itself, from weights stored in the manifest. The
threshold stays settable (:meth:`EarlyExitRunner.set_budget`, checked against
the policy's range).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from frugalnn.cost.ledger import DynamicModule
from frugalnn.errors import UserError
from frugalnn.methods.early_exit import policies
from frugalnn.methods.early_exit.model import EarlyExitModel
from frugalnn.runtime.graphs import SUFFIX, graph_bytes
from frugalnn.utils.io import write_bytes_atomic

__all__ = ["KIND", "EarlyExitRunner", "claims", "export_parts", "load_runner"]

KIND = "early_exit"


class _Segment(nn.Module):
    """Blocks ``start:stop`` of the backbone (after its embedding when ``embed``), then
    head ``head`` (returning the state and its logits) or the classifier."""

    def __init__(self, model: EarlyExitModel, start: int, stop: int, *, embed: bool,
                 head: int | None) -> None:
        super().__init__()
        # The backbone's embed/classify are its methods, so the backbone itself is held
        # (an exporter keeps only the parameters a graph uses, except TorchScript).
        self.backbone = model.backbone
        self.embed = embed
        self.start, self.stop = start, stop
        self.head = model.heads[head] if head is not None else None
        #: Pooling windows of an image head as constants (set by :func:`export_parts`):
        #: the tracer would otherwise derive them from the traced shape, and the ONNX
        #: exporter refuses a kernel size that is not a constant.
        self.kernel: tuple[int, int] | None = None

    def forward(self, state: torch.Tensor, prev: torch.Tensor | None = None) -> Any:
        bb = self.backbone
        if self.embed:
            state = bb.embed(state)
        for block in bb.blocks[self.start:self.stop]:
            state = block(state)
        if self.head is None:
            return bb.classify(state)
        if self.kernel is not None:
            feats = torch.cat([F.avg_pool2d(state, self.kernel),
                               F.max_pool2d(state, self.kernel)], dim=1).flatten(1)
            return state, self.head.classify(feats, prev)
        return state, self.head(state, prev)


def _pool_kernel(head: nn.Module, state: torch.Tensor) -> tuple[int, int] | None:
    """The head's fixed pooling windows for states shaped like ``state`` (image heads whose
    map divides evenly, the windows :class:`ExitHead` itself uses), else ``None``."""
    s = getattr(head, "pool_size", 0)
    if getattr(head, "kind", "") != "pool" or not s or state.dim() != 4:
        return None
    height, width = state.shape[-2:]
    if height % s or width % s:
        return None
    return (height // s, width // s)


def _state_before_head(seg: _Segment, state: torch.Tensor) -> torch.Tensor:
    bb = seg.backbone
    if seg.embed:
        state = bb.embed(state)
    for block in bb.blocks[seg.start:seg.stop]:
        state = block(state)
    return state


def claims(model: Any) -> bool:
    return isinstance(model, EarlyExitModel)


def _write(module: nn.Module, inputs: tuple, fmt: str, out_dir: Path, name: str, opset: int,
           *, input_names: list[str], output_names: list[str]) -> str:
    file = name + SUFFIX[fmt]
    write_bytes_atomic(out_dir / file, graph_bytes(
        module, inputs, fmt, input_names=input_names, output_names=output_names,
        num_outputs=len(output_names), opset=opset, what=f"early-exit {name}"))
    return file


def _tensor_list(t: torch.Tensor) -> list:
    return t.detach().float().cpu().tolist()


@torch.no_grad()
def export_parts(model: EarlyExitModel, example: torch.Tensor, fmt: str, out_dir: Path,
                 opset: int, *, layout: str = "auto") -> dict[str, Any]:
    """Write the segments, the final part and the whole backbone; return the manifest part."""
    if layout not in ("auto", "segments"):
        raise UserError(f"early exits are exported as segments; layout {layout!r} does not "
                        "apply to them")
    model.eval()
    blocks_with_dynamic = [b for b, block in enumerate(model.backbone.blocks)
                           if any(isinstance(m, DynamicModule) for m in block.modules())]
    if blocks_with_dynamic:
        raise UserError(
            f"block {blocks_with_dynamic[0]} of this early-exit backbone is itself "
            "input-dependent; export of nested input-dependent modules is not supported")
    if not isinstance(example, torch.Tensor) or not isinstance(model.backbone.embed(example),
                                                                torch.Tensor):
        raise UserError("early-exit export needs a tensor input and tensor states between "
                        "blocks; this model takes or passes a dict (e.g. a Hugging Face text "
                        "model with its attention mask), so its early exits run in PyTorch only")
    state: Any = example
    graphs: dict[str, str] = {}
    prev: torch.Tensor | None = None
    start = 0
    for h, pos in enumerate(model.positions):
        seg = _Segment(model, start, pos + 1, embed=h == 0, head=h).eval()
        with_prev = model.cascade and h > 0
        inputs = (state, prev) if with_prev else (state,)
        seg.kernel = _pool_kernel(model.heads[h], _state_before_head(seg, state))
        names = ["state_in", "prev"] if with_prev else ["state_in"]
        graphs[f"segment{h}"] = _write(seg, inputs, fmt, out_dir, f"segment{h}", opset,
                                       input_names=names, output_names=["state_out", "logits"])
        state, prev = seg(*inputs)
        start = pos + 1
    final = _Segment(model, start, len(model.backbone.blocks), embed=False, head=None).eval()
    graphs["final"] = _write(final, (state,), fmt, out_dir, "final", opset,
                             input_names=["state_in"], output_names=["logits"])
    whole = _Segment(model, 0, len(model.backbone.blocks), embed=True, head=None).eval()
    graphs["backbone"] = _write(whole, (example,), fmt, out_dir, "backbone", opset,
                                input_names=["input"], output_names=["logits"])
    loop = {
        "policy": model.policy, "positions": list(model.positions),
        "num_internal": model.num_internal, "num_classes": model.num_classes,
        "cascade": bool(model.cascade),
        "ensemble": None if model.ensemble is None else {
            "weight": _tensor_list(model.ensemble.weight),
            "bias": _tensor_list(model.ensemble.bias)},
        "final_ensemble": None if model.final_ensemble is None else {
            "weight": _tensor_list(model.final_ensemble.weight),
            "bias": _tensor_list(model.final_ensemble.bias)},
    }
    return {"graphs": graphs, "loop": loop, "budget_name": model.budget_name}


class EarlyExitRunner:
    """The exported early-exit model: segments run on the rows still in the batch."""

    def __init__(self, manifest: dict[str, Any], graphs: dict[str, Any]) -> None:
        loop = manifest["loop"]
        self.graphs = graphs
        self.policy = policies.check_policy(loop["policy"])
        self.num_internal = int(loop["num_internal"])
        self.cascade = bool(loop["cascade"])
        self.budget_name = "patience" if self.policy == "patience" else "threshold"
        ens, fin = loop.get("ensemble"), loop.get("final_ensemble")
        self.ens_w = torch.tensor(ens["weight"]) if ens else None
        self.ens_b = torch.tensor(ens["bias"]) if ens else None
        self.fin_w = torch.tensor(fin["weight"]) if fin else None
        self.fin_b = torch.tensor(fin["bias"]) if fin else None
        self.threshold = self.full_budget()
        #: Exit index of each row of the last call (``num_internal`` = the final exit).
        self.last_exits: torch.Tensor | None = None

    # -- budget knob ------------------------------------------------------------
    def budget_values(self) -> list[float]:
        return policies.budget_values(self.policy, self.num_internal)

    def full_budget(self) -> float:
        return policies.full_budget(self.policy, self.num_internal)

    def set_budget(self, value: float) -> None:
        self.threshold = policies.check_threshold(self.policy, value, self.num_internal)

    # -- the loop -----------------------------------------------------------------
    def _combine(self, h: int, log_probs: list[torch.Tensor]) -> torch.Tensor:
        assert self.ens_w is not None and self.ens_b is not None
        stacked = torch.stack(log_probs[: h + 1], dim=0)
        w = self.ens_w[h, : h + 1].to(stacked.dtype)
        return (stacked * w.view(-1, 1, 1)).sum(0) + self.ens_b[h]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        n = int(x.shape[0])
        exit_at = torch.full((n,), self.num_internal, dtype=torch.long)
        if self.threshold == self.full_budget():
            self.last_exits = exit_at
            return self.graphs["backbone"](x)
        active = torch.arange(n)
        out: torch.Tensor | None = None
        state: torch.Tensor = x
        prev: torch.Tensor | None = None
        log_probs: list[torch.Tensor] = []
        exit_lps: list[torch.Tensor] = []
        keep_exits = self.fin_w is not None
        memory: policies.PatienceState | None = None
        for h in range(self.num_internal):
            segment = self.graphs[f"segment{h}"]
            state, logits = segment(state, prev) if self.cascade and h > 0 else segment(state)
            prev = logits
            if self.ens_w is not None:
                log_probs.append(F.log_softmax(logits, dim=1))
                decision = self._combine(h, log_probs)
            else:
                decision = logits
            decision_lp = F.log_softmax(decision, dim=1)
            if keep_exits:
                exit_lps.append(decision_lp)
            exits, memory = policies.exit_mask(self.policy, self.threshold, decision_lp, memory)
            if not bool(exits.any()):
                continue
            exits = exits.cpu()
            if bool(exits.all()):
                if out is None:
                    out = decision
                else:
                    out[active] = decision.to(out.dtype)
                exit_at[active] = h
                active = active[:0]
                break
            if out is None:
                out = decision.new_empty((n, decision.shape[1]))
            out[active[exits]] = decision[exits]
            exit_at[active[exits]] = h
            keep = (~exits).nonzero().squeeze(1)
            active = active[keep]
            # index_select: a plain row gather (advanced indexing is several times slower
            # on CPU for a large state).
            state, prev = state.index_select(0, keep), prev.index_select(0, keep)
            log_probs = [t.index_select(0, keep) for t in log_probs]
            exit_lps = [t.index_select(0, keep) for t in exit_lps]
            memory = memory.select(keep) if memory is not None else None
        if active.numel():
            final = self.graphs["final"](state)
            if keep_exits:
                assert self.fin_w is not None and self.fin_b is not None
                stacked = torch.stack([*exit_lps, F.log_softmax(final, dim=1)], dim=0)
                final = (stacked * self.fin_w.to(stacked.dtype).view(-1, 1, 1)).sum(0) + self.fin_b
            if out is None:
                out = final
            else:
                out[active] = final.to(out.dtype)
        self.last_exits = exit_at
        assert out is not None
        return out


def load_runner(manifest: dict[str, Any], graphs: dict[str, Any]) -> EarlyExitRunner:
    return EarlyExitRunner(manifest, graphs)
