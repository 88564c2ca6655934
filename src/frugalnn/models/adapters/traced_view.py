"""Staged views of models torch.fx can trace, cut at their blocks or at named modules.

Blocks are found as the children of ``layer1``, ``layer2``, ... stages
(torchvision-style ResNets), of a ``blocks`` / ``features`` / ``layers`` /
``stages`` container (timm-style ViTs, VGG-style CNNs), or of a plain
``nn.Sequential``. A cut is valid when exactly one value crosses it; the
blocks are traced as single calls, so their own code runs unchanged.
"""

from __future__ import annotations

import fnmatch
import operator
import re
from typing import Any

import torch
from torch import fx, nn

from frugalnn.errors import UserError
from frugalnn.models.adapters.view import LivePart, StagedView

__all__ = ["BLOCK_CONTAINERS", "TracedPart", "example_pattern", "find_blocks", "fx_view",
           "pattern_view"]

#: Names of the child holding a model's blocks, in the order they are tried.
BLOCK_CONTAINERS = ("blocks", "features", "layers", "stages")
_STAGE_NAME = re.compile(r"^layer(\d+)$")
_POOLS = (nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d)
_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.LeakyReLU,
                nn.ELU, nn.Hardswish, nn.Mish, nn.PReLU, nn.SELU, nn.Softplus)


def find_blocks(model: nn.Module) -> list[str] | None:
    """Qualified names of the model's blocks, in definition order, or ``None``."""
    children = dict(model.named_children())
    stages = sorted((int(m.group(1)), name) for name in children
                     if (m := _STAGE_NAME.match(name))
                     and isinstance(children[name], (nn.Sequential, nn.ModuleList)))
    if stages:
        return [f"{name}.{c}" for _, name in stages for c, _m in children[name].named_children()]
    for want in BLOCK_CONTAINERS:
        name = next((n for n in children if n.lstrip("_") == want), None)  # also ``_blocks``
        box = children.get(name) if name else None
        if isinstance(box, (nn.Sequential, nn.ModuleList)) and len(box) >= 2:
            units = _units(list(box.named_children()))
            if units:
                return [f"{name}.{c}" for c in units]
    if isinstance(model, nn.Sequential):
        return _units(list(children.items()))
    return None


def _units(children: list[tuple[str, nn.Module]]) -> list[str] | None:
    """The block-like children of a container: its composite children (blocks, stages),
    else (a flat list of layers) its pooling layers, else its activations."""
    composite = [n for n, m in children if next(m.children(), None) is not None]
    if len(composite) >= 2:
        return composite
    for kinds in (_POOLS, _ACTIVATIONS):
        hits = [n for n, m in children if isinstance(m, kinds)]
        if len(hits) >= 2:
            return hits
    return None


def example_pattern(model: nn.Module) -> str:
    """An ``exit_after`` value that names some of ``model``'s modules."""
    children = list(model.named_children())
    for name, child in children:
        if len(list(child.children())) >= 2:
            return f"{name}.*"
    return ",".join(name for name, _c in children[:3]) or "name1,name2"


def _matches(name: str, pattern: str) -> bool:
    parts, pats = name.split("."), pattern.split(".")
    return len(parts) == len(pats) and all(fnmatch.fnmatchcase(n, p)
                                           for n, p in zip(parts, pats))


def _pattern_modules(model: nn.Module, patterns: list[str]) -> list[str]:
    names = [n for n, _m in model.named_modules() if n]
    found: list[str] = []
    for pattern in patterns:
        hits = [n for n in names if _matches(n, pattern)]
        if not hits:
            sample = ", ".join(n for n in names if "." not in n)[:200]
            raise UserError(f"exit_after {pattern!r} matches no module of {type(model).__name__} "
                            f"(its top-level modules: {sample}; '*' matches one name part)")
        found += [n for n in hits if n not in found]
    for a in found:
        for b in found:
            if b.startswith(a + "."):
                raise UserError(f"exit points {a!r} and {b!r} are nested; name one of them "
                                "in exit_after")
    return found


class _Tracer(fx.Tracer):
    """Traces through everything except the blocks (and stock ``torch.nn`` layers)."""

    def __init__(self, leaves: set[str]) -> None:
        super().__init__()
        self.leaves = leaves
        self.parents = {".".join(n.split(".")[:i]) for n in leaves
                        for i in range(1, n.count(".") + 1)}

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if module_qualified_name in self.leaves:
            return True
        if module_qualified_name in self.parents:
            return False
        return super().is_leaf_module(m, module_qualified_name)


def _trace(model: nn.Module, leaves: list[str]) -> fx.Graph:
    try:
        return _Tracer(set(leaves)).trace(model)
    except Exception as exc:  # fx reports untraceable code with many exception types
        first = (str(exc).strip().splitlines() or [""])[0][:160]
        raise UserError(
            f"cannot split {type(model).__name__} into blocks: torch.fx cannot trace its "
            f"forward ({type(exc).__name__}: {first}); early exits on it need a frugalnn "
            "StagedModel (embed/blocks/classify)") from None


def _call_sites(model: nn.Module, nodes: list[fx.Node], names: list[str]) -> list[int]:
    """The node index of the one call of each named module, in execution order."""
    where: dict[str, list[int]] = {n: [] for n in names}
    for i, node in enumerate(nodes):
        if node.op == "call_module" and node.target in where:
            where[str(node.target)].append(i)
    for name, hits in where.items():
        if len(hits) != 1:
            how = "is never called by" if not hits else f"runs {len(hits)} times in"
            raise UserError(f"module {name!r} {how} {type(model).__name__}.forward; exit points "
                            "must be modules that run once")
    return sorted(hits[0] for hits in where.values())


def _is_batch_size(node: fx.Node) -> bool:
    """Whether ``node`` is a tensor's batch size (``x.size(0)``, ``x.shape[0]``): every
    state has the same, so a later segment takes it from its own input."""
    if node.op == "call_method" and node.target == "size":
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        return dim == 0
    if node.op == "call_function" and node.target is operator.getitem and node.args[1] == 0:
        src = node.args[0]
        return isinstance(src, fx.Node) and (
            (src.op == "call_function" and src.target is getattr and src.args[1] == "shape")
            or (src.op == "call_method" and src.target == "size" and len(src.args) == 1))
    return False


def _live_across(nodes: list[fx.Node], cut: int) -> list[fx.Node]:
    """Values computed at or before node ``cut`` and used after it (attributes and batch
    sizes excepted: a segment reads the former itself and takes the latter from its input)."""
    index = {n: i for i, n in enumerate(nodes)}
    return [n for n in nodes[: cut + 1]
            if n.op != "get_attr" and not _is_batch_size(n)
            and any(index[u] > cut for u in n.users)]


def _single_live(model: nn.Module, nodes: list[fx.Node], cut: int, where: str) -> fx.Node:
    live = _live_across(nodes, cut)
    if len(live) != 1:
        names = ", ".join(n.name for n in live) or "none"
        raise UserError(f"cannot cut {type(model).__name__} {where}: {len(live)} values cross "
                        f"that point ({names}), early exits need exactly one; choose other exit "
                        "points with exit_after")
    return live[0]


class TracedPart(LivePart):
    """One segment of a traced forward, run against the model itself.

    The generated code reads every module, parameter and buffer on the model
    at each call (``self.layer1[0]``, ``self.cls_token``), as
    :class:`LivePart` does.
    """

    def __init__(self, root: nn.Module, graph: fx.Graph) -> None:
        targets = [str(n.target) for n in graph.nodes if n.op == "call_module"]
        super().__init__(root, **{t.replace(".", "_"): t for t in targets})
        code = graph.python_code(root_module="self")
        scope = dict(code.globals)
        # The source is torch.fx's rendering of the model's own traced forward, as
        # ``fx.GraphModule`` compiles it; only its ``self`` differs (the model).
        exec(compile(code.src, f"<{type(root).__name__} part>", "exec"), scope)  # noqa: S102
        object.__setattr__(self, "_fn", scope["forward"])
        self.code = code.src

    def forward(self, *args: Any) -> Any:
        return self._fn(self._root, *args)


def _segment(model: nn.Module, nodes: list[fx.Node], lo: int, hi: int,
             state_in: fx.Node | None, state_out: fx.Node | None) -> TracedPart:
    """A module running nodes ``lo..hi`` (inclusive), from ``state_in`` (``None``: the model's
    own inputs) to ``state_out`` (``None``: the model's own output)."""
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    if state_in is not None:
        env[state_in] = graph.placeholder("state")

    def arg(node: fx.Node) -> fx.Node:
        if node not in env:
            if node.op == "get_attr":
                env[node] = graph.node_copy(node, arg)
            elif _is_batch_size(node) and state_in is not None:
                env[node] = graph.call_method("size", (env[state_in], 0))
            else:  # excluded by the single-live-value check
                raise AssertionError(f"{node.name} crosses a cut")
        return env[node]

    for node in nodes[lo: hi + 1]:
        if node.op == "get_attr":
            continue  # copied where used
        if node.op == "output":
            graph.output(fx.map_arg(node.args[0], arg))
            continue
        env[node] = graph.node_copy(node, arg)
    if state_out is not None:
        graph.output(arg(state_out))
    graph.lint()
    return TracedPart(model, graph)


def fx_view(model: nn.Module, blocks: list[str]) -> StagedView:
    """Cut at the first block's input and every block's output."""
    nodes = list(_trace(model, blocks).nodes)
    sites = _call_sites(model, nodes, blocks)
    by_site = {i: str(nodes[i].target) for i in sites}
    order = [by_site[i] for i in sites]
    start = _single_live(model, nodes, sites[0] - 1, f"before {order[0]!r}")
    outs = [_single_live(model, nodes, i, f"after {by_site[i]!r}") for i in sites]
    embed = _segment(model, nodes, 0, sites[0] - 1, None, start)
    parts, prev, lo = [], start, sites[0]
    for i, out in zip(sites, outs):
        parts.append(_segment(model, nodes, lo, i, prev, out))
        prev, lo = out, i + 1
    classify = _segment(model, nodes, lo, len(nodes) - 1, prev, None)
    return StagedView(model, embed, parts, classify, block_names=order, structure="traced",
                      pool=_pool_of(model))


def pattern_view(model: nn.Module, patterns: list[str]) -> StagedView:
    """Cut after every named module; the last block runs the model's head."""
    names = _pattern_modules(model, patterns)
    nodes = list(_trace(model, names).nodes)
    sites = _call_sites(model, nodes, names)
    order = [str(nodes[i].target) for i in sites]
    outs = [_single_live(model, nodes, i, f"after {str(nodes[i].target)!r}") for i in sites]
    placeholders = [n for n in nodes if n.op == "placeholder"]
    used = [p for p in placeholders if p.users]
    if len(used) != 1:
        raise UserError(f"{type(model).__name__}.forward takes {len(used)} inputs; exit points "
                        "by exit_after need a model with one input")
    parts, prev, lo = [], None, 0
    for i, out in zip(sites, outs):
        parts.append(_segment(model, nodes, lo, i, prev, out))
        prev, lo = out, i + 1
    parts.append(_segment(model, nodes, lo, len(nodes) - 1, prev, None))
    spec = ",".join(patterns)
    return StagedView(model, nn.Identity(), parts, nn.Identity(),
                      block_names=[*order, "output"], structure="exit_after",
                      pool=_pool_of(model), exit_after=spec)


def _pool_of(model: nn.Module) -> str | None:
    """``"cls"`` when the model has a CLS token (token heads then read it)."""
    return "cls" if isinstance(getattr(model, "cls_token", None), torch.Tensor) else None
