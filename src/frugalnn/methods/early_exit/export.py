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

A model that takes a dict of tensors (a Hugging Face text classifier:
``input_ids``, ``attention_mask``[, ``token_type_ids``]) has one graph input per
key, named by the key, in ``segment0`` and ``backbone``; a state that is a flat
dict of tensors (``{"hidden", "mask"}``) is flattened in a fixed key order
(``loop["state_keys"]``) into graph inputs ``state_in.<key>`` and outputs
``state_out.<key>``. Batch and token-sequence axes stay dynamic.

:class:`EarlyExitRunner` runs them like :meth:`EarlyExitModel.forward`: after
each head the rows that exit are written out and dropped from the batch, so
later segments run on fewer rows, which is where the saving comes from (every
tensor of a dict state is cut to the rows kept). The
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
from frugalnn.models.base import hidden_of
from frugalnn.runtime.graphs import SUFFIX, OrtGraph, graph_bytes
from frugalnn.runtime.inputs import TENSOR_INPUT, dynamic_axes, input_names, ordered
from frugalnn.utils.batch import batch_len
from frugalnn.utils.io import write_bytes_atomic

__all__ = ["DICT_INPUTS", "KIND", "EarlyExitRunner", "claims", "export_parts", "load_runner"]

KIND = "early_exit"
#: :func:`export_parts` takes a model's dict input itself (one graph input per key).
DICT_INPUTS = True


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

    def forward(self, state: Any, prev: torch.Tensor | None = None) -> Any:
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


def _state_before_head(seg: _Segment, state: Any) -> Any:
    bb = seg.backbone
    if seg.embed:
        state = bb.embed(state)
    for block in bb.blocks[seg.start:seg.stop]:
        state = block(state)
    return state


class _Flat(nn.Module):
    """A segment of a model that takes a dict or passes a dict state, seen as a module of
    positional tensors: the input's tensors (``in_keys`` order; one tensor when ``None``)
    and ``prev`` in, the state's tensors (``state_keys`` order) and the logits out."""

    def __init__(self, seg: _Segment, in_keys: list[str] | None,
                 state_keys: list[str] | None, *, with_prev: bool) -> None:
        super().__init__()
        self.seg = seg
        self.in_keys, self.state_keys, self.with_prev = in_keys, state_keys, with_prev
        # A fresh module is in training mode; exporting restores the mode it finds, which
        # would put the shared backbone into training mode (dropout): take the segment's.
        self.train(seg.training)

    def forward(self, *tensors: torch.Tensor) -> Any:
        n = 1 if self.in_keys is None else len(self.in_keys)
        x: Any = tensors[0] if self.in_keys is None else dict(zip(self.in_keys, tensors[:n]))
        out = self.seg(x, tensors[n] if self.with_prev else None)
        if self.seg.head is None:
            return out
        state, logits = out
        if self.state_keys is None:
            return state, logits
        return (*(state[k] for k in self.state_keys), logits)


def _state_keys(state: Any, where: str) -> list[str] | None:
    """``None`` for a tensor state, the keys of a flat dict of tensors; else one line."""
    if isinstance(state, torch.Tensor):
        return None
    if isinstance(state, dict) and state and all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        return list(state)
    raise UserError(f"early-exit export needs the state between blocks to be a tensor or a "
                    f"flat dict of tensors; {where} it is a {type(state).__name__} of other "
                    "values, so this model's early exits run in PyTorch only")


def _other_length(example: dict[str, torch.Tensor],
                  axes: dict[str, dict[int, str]]) -> dict[str, torch.Tensor]:
    """``example`` with every sequence axis one token shorter (longer if it is 1 long)."""
    out = {}
    for name, t in example.items():
        if 1 in axes.get(name, {}):
            t = t[:, :-1] if t.shape[1] > 1 else torch.cat([t, t], dim=1)
        out[name] = t
    return out


def _state_axes(model: EarlyExitModel, example: Any, keys: list[str],
                in_axes: dict[str, dict[int, str]]) -> dict[str, dict[int, str]]:
    """Dynamic axes of each state tensor: the batch, and every axis whose length follows the
    input's sequence (found by embedding the example at another length)."""
    axes: dict[str, dict[int, str]] = {k: {0: "batch"} for k in keys}
    as_dict = example if isinstance(example, dict) else {TENSOR_INPUT: example}
    if not any(1 in a for a in in_axes.values()):
        return axes
    probe = _other_length(as_dict, in_axes)
    probe_x = probe if isinstance(example, dict) else probe[TENSOR_INPUT]
    full, short = model.backbone.embed(example), model.backbone.embed(probe_x)
    for k in keys:
        for i, (a, b) in enumerate(zip(full[k].shape, short[k].shape)):
            if i and a != b:
                axes[k][i] = "sequence"
    return axes


def claims(model: Any) -> bool:
    return isinstance(model, EarlyExitModel)


def _write(module: nn.Module, inputs: tuple, fmt: str, out_dir: Path, name: str, opset: int,
           *, input_names: list[str], output_names: list[str],
           axes: dict[str, dict[int, str]] | None = None) -> str:
    file = name + SUFFIX[fmt]
    write_bytes_atomic(out_dir / file, graph_bytes(
        module, inputs, fmt, input_names=input_names, output_names=output_names,
        num_outputs=len(output_names), opset=opset, what=f"early-exit {name}",
        dynamic_axes=axes))
    return file


def _tensor_list(t: torch.Tensor) -> list:
    return t.detach().float().cpu().tolist()


@torch.no_grad()
def export_parts(model: EarlyExitModel, example: Any, fmt: str, out_dir: Path,
                 opset: int, *, layout: str = "auto") -> dict[str, Any]:
    """Write the segments, the final part and the whole backbone; return the manifest part.

    ``example``: a tensor or a dict of tensors (one graph input per key)."""
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
    in_names = input_names(example)  # a tensor or a dict of tensors, else one line
    in_keys = in_names if isinstance(example, dict) else None
    embedded = model.backbone.embed(example)
    keys = _state_keys(embedded, "after the embedding")
    flat = in_keys is not None or keys is not None
    # Graph names: a tensor input is segment0's ``state_in`` and the backbone's ``input``;
    # a dict input's keys name both; a dict state is ``state_in.<key>`` / ``state_out.<key>``.
    seg0_names = in_names if in_keys is not None else ["state_in"]
    state_in = ["state_in"] if keys is None else [f"state_in.{k}" for k in keys]
    state_out = ["state_out"] if keys is None else [f"state_out.{k}" for k in keys]
    axes: dict[str, dict[int, str]] | None = None
    bb_axes: dict[str, dict[int, str]] | None = None
    if flat:
        in_axes = dynamic_axes(example if in_keys is not None else {TENSOR_INPUT: example})
        of_state = _state_axes(model, example, keys, in_axes) if keys is not None else {}
        axes = {**{n: a for n, a in zip(seg0_names, in_axes.values())},
                **{f"{d}.{k}": a for k, a in of_state.items() for d in ("state_in", "state_out")}}
        bb_axes = dict(zip(in_names, in_axes.values()))
    inputs: tuple = tuple(ordered(example, in_names)) if in_keys is not None else (example,)
    graphs: dict[str, str] = {}
    prev: torch.Tensor | None = None
    state: Any = example
    start = 0
    for h, pos in enumerate(model.positions):
        seg = _Segment(model, start, pos + 1, embed=h == 0, head=h).eval()
        with_prev = model.cascade and h > 0
        seg.kernel = _pool_kernel(model.heads[h], hidden_of(_state_before_head(seg, state)))
        names = (seg0_names if h == 0 else state_in) + (["prev"] if with_prev else [])
        args = (*inputs, prev) if with_prev else inputs
        module = _Flat(seg, in_keys if h == 0 else keys, keys, with_prev=with_prev) if flat \
            else seg
        graphs[f"segment{h}"] = _write(module, args, fmt, out_dir, f"segment{h}", opset,
                                       input_names=names, output_names=[*state_out, "logits"],
                                       axes=axes)
        state, prev = seg(state, prev)
        if _state_keys(state, f"after block {pos}") != keys:
            raise UserError(f"early-exit export needs the same state keys after every block; "
                            f"after block {pos} they are {', '.join(state)}, after the "
                            f"embedding {', '.join(keys or [])}")
        inputs = (state,) if keys is None else tuple(state[k] for k in keys)
        start = pos + 1
    final = _Segment(model, start, len(model.backbone.blocks), embed=False, head=None).eval()
    graphs["final"] = _write(_Flat(final, keys, keys, with_prev=False) if flat else final,
                             inputs, fmt, out_dir, "final", opset, input_names=state_in,
                             output_names=["logits"], axes=axes)
    whole = _Segment(model, 0, len(model.backbone.blocks), embed=True, head=None).eval()
    if in_keys is not None:
        graphs["backbone"] = _write(_Flat(whole, in_keys, None, with_prev=False),
                                    tuple(ordered(example, in_names)), fmt, out_dir, "backbone",
                                    opset, input_names=in_names, output_names=["logits"],
                                    axes=bb_axes)
    else:
        graphs["backbone"] = _write(whole, (example,), fmt, out_dir, "backbone", opset,
                                    input_names=["input"], output_names=["logits"],
                                    axes={TENSOR_INPUT: axes["state_in"]} if axes else None)
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
    if flat:  # graph names of a dict input or a dict state (tensor models keep the defaults)
        loop.update(input_names=in_keys, state_keys=keys, state_inputs=state_in,
                    state_outputs=state_out)
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
        #: Graph input names of a dict input (``None``: one tensor) and of the state.
        self.input_names: list[str] | None = loop.get("input_names")
        self.state_inputs: list[str] = loop.get("state_inputs") or ["state_in"]
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

    @staticmethod
    def _run(graph: Any, names: list[str], tensors: tuple) -> Any:
        """``graph`` on ``tensors``: by name on ONNX Runtime (an ONNX graph drops the inputs
        it does not read, such as a mask the classifier ignores), else in order."""
        if isinstance(graph, OrtGraph):
            return graph(dict(zip(names, tensors)))
        return graph(*tensors)

    def __call__(self, x: Any) -> torch.Tensor:
        """Logits of ``x``: a tensor, or a dict holding the export's input names."""
        names = self.input_names or [TENSOR_INPUT]
        inputs = ordered(x, names) if self.input_names is not None else (x,)
        n = batch_len(inputs[0])
        exit_at = torch.full((n,), self.num_internal, dtype=torch.long)
        if self.threshold == self.full_budget():
            self.last_exits = exit_at
            return self._run(self.graphs["backbone"], names, inputs)
        active = torch.arange(n)
        out: torch.Tensor | None = None
        # The state's tensors in graph order (one for a tensor state).
        state: tuple = inputs
        prev: torch.Tensor | None = None
        log_probs: list[torch.Tensor] = []
        exit_lps: list[torch.Tensor] = []
        keep_exits = self.fin_w is not None
        memory: policies.PatienceState | None = None
        for h in range(self.num_internal):
            with_prev = self.cascade and h > 0
            in_names = (self.input_names or ["state_in"]) if h == 0 else self.state_inputs
            outs = self._run(self.graphs[f"segment{h}"],
                             [*in_names, "prev"] if with_prev else in_names,
                             (*state, prev) if with_prev else state)
            state, logits = tuple(outs[:-1]), outs[-1]
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
            state = tuple(t.index_select(0, keep) for t in state)  # every tensor of it
            prev = prev.index_select(0, keep)
            log_probs = [t.index_select(0, keep) for t in log_probs]
            exit_lps = [t.index_select(0, keep) for t in exit_lps]
            memory = memory.select(keep) if memory is not None else None
        if active.numel():
            final = self._run(self.graphs["final"], self.state_inputs, state)
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
