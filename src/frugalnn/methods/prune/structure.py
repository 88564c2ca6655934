"""Channel pruning through torch-pruning, and the ``"prune"`` transformation that replays it.

:func:`prune_channels` removes whole output channels (with everything that
depends on them: batch norms, the next layer's inputs, residual partners)
with torch-pruning's ``MetaPruner`` and group magnitude importance, in
``steps`` small increments until the model's MACs (torch-pruning's count) are
``flops`` times fewer, or by a fixed per-layer ``ratio``. The last Linear (the
classifier) is never pruned. It records the ``"prune"`` transformation: the
example input shape and, per pruning group, its root layer, torch-pruning's
handler and how many channels went. Replaying that on a freshly built model
(any channels of the right count: the weights are loaded afterwards) gives
the pruned structure, so :func:`frugalnn.train.checkpoint.load_model`
rebuilds a pruned checkpoint from JSON and safetensors like any other.
"""

from __future__ import annotations

import fnmatch
from typing import Any

import torch
from torch import nn

from frugalnn.errors import UserError
from frugalnn.transforms import record_transform, register_transform

__all__ = ["ATTENTION_PROJECTIONS", "TRANSFORM", "channel_counts", "input_layout", "macs",
           "prune_channels", "replay_pruning"]

TRANSFORM = "prune"


def _tp() -> Any:
    try:
        import torch_pruning
    except ImportError:
        raise UserError("structured pruning needs torch-pruning: pip install "
                        "'torch-pruning==1.6.1' --no-deps (or the [prune] extra)") from None
    return torch_pruning


def macs(model: nn.Module, example: Any) -> float:
    """Multiply-accumulates of one forward of ``example`` (torch-pruning's count)."""
    ops, _ = _tp().utils.count_ops_and_params(model, example)
    return float(ops)


def channel_counts(model: nn.Module) -> dict[str, int]:
    """Output channels (features) of every Conv2d / Linear, by name."""
    out: dict[str, int] = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            out[name] = m.out_channels
        elif isinstance(m, nn.Linear):
            out[name] = m.out_features
    return out


#: Names of the Linear layers whose outputs attention splits into heads of a fixed size:
#: their output channels stay (torch-pruning cannot see the reshape into heads).
ATTENTION_PROJECTIONS = frozenset({
    "q_proj", "k_proj", "v_proj", "query", "key", "value", "qkv", "q", "k", "v",
    "c_attn", "Wqkv", "query_key_value", "q_lin", "k_lin", "v_lin",
})


def _ignored(model: nn.Module, only: list[str] | None,
             exclude: list[str] | None) -> list[nn.Module]:
    """Layers whose output channels stay: the classifier, attention's query/key/value
    projections, ``exclude`` matches, and with ``only`` every Conv2d / Linear that
    matches none of its patterns."""
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    linears = [m for _, m in layers if isinstance(m, nn.Linear)]
    keep = linears[-1:]
    for name, m in layers:
        if ((only is not None and not _matches(name, only)) or _matches(name, exclude)
                or (isinstance(m, nn.Linear) and name.rsplit(".", 1)[-1] in ATTENTION_PROJECTIONS)):
            keep.append(m)
    return keep


def input_layout(example: Any) -> dict[str, Any]:
    """What the ``"prune"`` transformation records of the traced input: ``input_shape``
    of a tensor, or ``inputs`` (key -> shape and dtype) of a dict of tensors."""
    if isinstance(example, dict):
        return {"inputs": {k: {"shape": list(v.shape[1:]), "dtype": str(v.dtype).split(".")[-1]}
                           for k, v in example.items()}}
    return {"input_shape": list(example.shape[1:])}


def _zeros_like_layout(input_shape: list[int] | None,
                       inputs: dict[str, Any] | None) -> Any:
    if inputs is not None:
        out = {}
        for key, value in inputs.items():
            dtype = getattr(torch, str(value["dtype"]), None)
            if not isinstance(dtype, torch.dtype):
                raise UserError(f"the prune record names an unknown input dtype {value['dtype']!r}")
            out[key] = torch.zeros(1, *value["shape"], dtype=dtype)
        return out
    return torch.zeros(1, *(input_shape or []))


def _matches(name: str, patterns: list[str] | None) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns or ())


def prune_channels(model: nn.Module, example: Any, *, flops: float | None = None,
                   ratio: float | None = None, importance: str = "l2", steps: int = 100,
                   max_ratio: float = 0.9, global_pruning: bool = False,
                   round_to: int | None = None, include: list[str] | None = None,
                   exclude: list[str] | None = None) -> dict[str, Any]:
    """Prune ``model`` in place to ``flops``-fold fewer MACs or by ``ratio``; return the plan.

    The plan: MACs before/after, steps taken, channel counts before/after and
    the recorded groups. ``include`` / ``exclude``: fnmatch patterns on the
    names of the layers whose output channels may be removed (their dependants
    follow). A ``flops`` target not reached at ``max_ratio`` is a
    :class:`UserError`.
    """
    tp = _tp()
    if (flops is None) == (ratio is None):
        raise UserError("give one pruning target: flops=X or ratio=R")
    p = {"l1": 1, "l2": 2}.get(importance)
    if p is None:
        raise UserError(f"unknown importance {importance!r}; use l1 or l2")
    names = {m: n for n, m in model.named_modules()}
    before_counts = channel_counts(model)
    base = macs(model, example)
    n_steps = steps if flops is not None else 1
    pruner = tp.pruner.MetaPruner(
        model, example, importance=tp.importance.GroupMagnitudeImportance(p=p),
        global_pruning=global_pruning,
        pruning_ratio=max_ratio if flops is not None else float(ratio),
        iterative_steps=n_steps, ignored_layers=_ignored(model, include, exclude),
        round_to=round_to)
    merged: dict[tuple[str, str], int] = {}
    now, taken = base, 0
    for _ in range(n_steps):
        if flops is not None and now <= base / flops:
            break
        for group in pruner.step(interactive=True):
            dep, idxs = group[0]
            key = (names[dep.target.module], dep.handler.__name__)
            merged[key] = merged.get(key, 0) + len(idxs)
            group.prune()
        taken += 1
        now = macs(model, example)
    if flops is not None and now > base / flops:
        raise UserError(f"pruning reached only {base / now:.2f}x fewer MACs at ratio "
                        f"{max_ratio}; ask for less than flops={flops:g} or raise max_ratio")
    groups = [[name, handler, n] for (name, handler), n in merged.items()]
    record_transform(model, TRANSFORM, {**input_layout(example), "groups": groups})
    return {"macs_before": base, "macs_after": now, "steps": taken, "groups": groups,
            "channels_before": before_counts, "channels_after": channel_counts(model)}


@register_transform(TRANSFORM)
def replay_pruning(model: nn.Module, groups: list[list[Any]],
                   input_shape: list[int] | None = None,
                   inputs: dict[str, Any] | None = None) -> nn.Module:
    """Remove the recorded number of channels of every recorded group (structure only)."""
    tp = _tp()
    example = _zeros_like_layout(input_shape, inputs)
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=example)
    for name, handler, n in groups:
        module = model.get_submodule(name)
        fn = getattr(graph.get_pruner_of_module(module), handler)
        graph.get_pruning_group(module, fn, idxs=list(range(int(n)))).prune()
    layout = {"inputs": inputs} if inputs is not None else {"input_shape": list(input_shape or [])}
    record_transform(model, TRANSFORM, {**layout, "groups": groups})
    return model
