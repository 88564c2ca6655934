"""A staged view (``embed / blocks / classify``) of any classification model.

Early exits need a model as a sequence of blocks with a state passed from one
to the next (:class:`~frugalnn.models.base.StagedModel`). :func:`as_staged`
builds that view of a user's model without copying anything: the view's parts
call the model's own modules, so the model's weights are the view's.

What is recognised:

* a frugalnn :class:`StagedModel`: returned as it is (a
  :class:`~frugalnn.models.base.WrappedModel` around another model: the view
  of that model);
* Hugging Face encoders for classification (``BertForSequenceClassification``
  and BERT-like text classifiers; ``ViTForImageClassification`` and ViT-like
  image classifiers): the embeddings, one block per encoder layer, and the
  model's own head (BERT: pooler, dropout, classifier; ViT: final LayerNorm,
  CLS token, classifier). Text inputs are the model's own dict
  (``input_ids``, optional ``attention_mask`` / ``token_type_ids``),
  ``(B, T)`` token ids or a ``(B, 2, T)`` ids+mask tensor; the state is
  ``{"hidden", "mask"}``. The view returns the logits;
* any other model ``torch.fx`` can trace whose blocks are found: the children
  of ``layer1``, ``layer2``, ... ``Sequential`` stages (torchvision-style
  ResNets), of a ``blocks`` / ``features`` / ``layers`` / ``stages``
  ``ModuleList`` or ``Sequential`` (timm-style ViTs, VGG-style CNNs), or of a
  plain ``nn.Sequential``: composite children (blocks, stages), else, in a
  flat list of layers, the pooling layers, else the activations. The traced
  graph is cut at the input of the first block and at every block's output:
  ``embed`` is everything before the first block, each block one segment,
  ``classify`` everything after the last block;
* exit points named by the user (``exit_after``: a pattern such as
  ``"layer1.*"``, where ``*`` matches one name component, or a list of module
  names): the graph is cut after each named module; the segments between the
  cuts are the blocks and the last block includes the model's own head
  (``embed`` and ``classify`` are identities), so every named module is an exit.

A cut is valid when exactly one value crosses it (that value is the state;
batch sizes, ``x.size(0)``, are taken from the state instead);
the blocks are traced as single calls (not through), so their own code, its
training-mode switches included, runs unchanged. The parts find the model's
modules by path at every call (:class:`LivePart`), so a module replaced in the
model later is the one that runs. A decoder language model has no classifier
to exit from and is refused in one line.
"""

from __future__ import annotations

import fnmatch
import operator
import re
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import fx, nn

from frugalnn.errors import UserError
from frugalnn.models.base import StagedModel, State, WrappedModel

__all__ = ["LivePart", "StagedView", "TracedPart", "as_staged", "feature_kind_of",
           "parse_exit_after"]

#: Names of the child holding a model's blocks, in the order they are tried.
BLOCK_CONTAINERS = ("blocks", "features", "layers", "stages")
_STAGE_NAME = re.compile(r"^layer(\d+)$")
_POOLS = (nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d)
_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.LeakyReLU,
                nn.ELU, nn.Hardswish, nn.Mish, nn.PReLU, nn.SELU, nn.Softplus)


class StagedView(StagedModel):
    """A user's model seen as ``classify(blocks(embed(x)))``.

    ``model`` is the original model (the only registered child, so the state
    dict is the model's under ``model.``); the parts are kept outside the
    module tree because they hold the same modules. ``block_names[i]`` names
    the point after block ``i`` (an exit point); ``exit_after`` is what
    rebuilds the view (``None``: recognised automatically).
    """

    def __init__(
        self,
        model: nn.Module,
        embed: nn.Module,
        blocks: Sequence[nn.Module],
        classify: nn.Module,
        *,
        block_names: Sequence[str],
        structure: str,
        feature_kind: str | None = None,
        pool: str | None = None,
        exit_after: str | list[str] | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        object.__setattr__(self, "_parts", (embed, nn.ModuleList(blocks), classify))
        self.block_names = list(block_names)
        self.structure = structure
        #: ``None`` until a probe shows the state (:func:`feature_kind_of`).
        self.feature_kind = feature_kind  # type: ignore[assignment]
        if pool is not None:
            self.pool = pool
        self.exit_after = exit_after
        self.frugalnn_spec = getattr(model, "frugalnn_spec", None)

    @property
    def blocks(self) -> nn.ModuleList:  # type: ignore[override]
        return self._parts[1]

    def embed(self, x: Any) -> State:
        return self._parts[0](x)

    def classify(self, state: State) -> torch.Tensor:
        return self._parts[2](state)

    def extra_repr(self) -> str:
        return f"structure={self.structure!r}, blocks={len(self.blocks)}"


class LivePart(nn.Module):
    """A part of a view that finds the model's modules by path at every call.

    ``paths`` maps local names to module paths in the model (``None``: absent).
    A module replaced in the model later (BN folding, quantisation, low-rank
    factors) is then the one that runs, and ``.to()`` on the model moves what
    the part uses. The model is not a child (the view registers it);
    ``modules()`` lists the modules the part uses, as they are now.
    """

    def __init__(self, root: nn.Module, **paths: str | None) -> None:
        super().__init__()
        object.__setattr__(self, "_root", root)
        self.paths = paths

    def __call__(self, *args: Any) -> Any:
        # Straight to ``forward``: no module hooks, so a FLOP counter's module tracker
        # sees only the model's own modules (by their paths), not this unregistered part.
        return self.forward(*args)

    def sub(self, name: str) -> nn.Module:
        path = self.paths[name]
        return self._root.get_submodule(path) if path else self._root

    def named_modules(self, memo: set[nn.Module] | None = None, prefix: str = "",
                      remove_duplicate: bool = True) -> Any:
        self._modules.clear()
        for name, path in self.paths.items():
            if path is not None:
                self._modules[name] = self.sub(name)
        return super().named_modules(memo, prefix, remove_duplicate)


def feature_kind_of(state: State) -> str:
    """``image`` / ``tokens`` / ``vector`` for a ``(B, C, H, W)`` / ``(B, T, D)`` / ``(B, D)``
    state (dict states: their ``hidden`` tensor)."""
    h = state.get("hidden") if isinstance(state, dict) else state
    if not isinstance(h, torch.Tensor):
        raise UserError(f"a block passes on a {type(state).__name__}, not a tensor; early exits "
                        "need tensor states between blocks (choose other exit points)")
    kinds = {4: "image", 3: "tokens", 2: "vector"}
    if h.dim() not in kinds:
        raise UserError(f"a block passes on a tensor of shape {tuple(h.shape)}; early exits need "
                        "(B, C, H, W), (B, T, D) or (B, D) states")
    return kinds[h.dim()]


def parse_exit_after(exit_after: str | Sequence[str] | None) -> list[str] | None:
    """The patterns of ``exit_after`` (a comma-separated string or a list), or ``None``."""
    if exit_after is None:
        return None
    items = exit_after.split(",") if isinstance(exit_after, str) else list(exit_after)
    patterns = [str(p).strip() for p in items if str(p).strip()]
    if not patterns:
        raise UserError("exit_after names no module; give a pattern like 'layer1.*' or module "
                        "names like 'layer1.0,layer2.0'")
    return patterns


def as_staged(model: nn.Module, exit_after: str | Sequence[str] | None = None) -> StagedModel:
    """An ``embed / blocks / classify`` view of ``model`` (see the module docstring).

    ``exit_after``: a pattern (``"layer1.*"``; ``*`` matches one name
    component) or module names after which to exit, instead of the automatic
    choice. A :class:`StagedModel` is returned as it is.
    """
    patterns = parse_exit_after(exit_after)
    base = getattr(model, "base", None)
    if isinstance(model, WrappedModel) and isinstance(base, nn.Module) \
            and not isinstance(base, StagedModel):
        # A conversion that installed its layers inside a user's model (MoE, ACM): the
        # view is of that model, whose modules now include the installed layers.
        return as_staged(base, exit_after)
    if isinstance(model, StagedModel):
        if patterns is not None:
            raise UserError(f"{type(model).__name__} is already staged (embed/blocks/classify); "
                            "choose its exits with positions= (--positions), not exit_after")
        return model
    if not isinstance(model, nn.Module):
        raise UserError(f"early exits need a torch nn.Module, got {type(model).__name__}")
    if _is_hf(model):
        _refuse_language_model(model)
        if patterns is None:
            view = _hf_view(model)
            if view is not None:
                return view
    if patterns is not None:
        return _pattern_view(model, patterns)
    blocks = _find_blocks(model)
    if blocks is None:
        raise UserError(
            f"{type(model).__name__} is not a staged model and its blocks are not recognised; "
            "name the exit points with exit_after= (CLI: --exit-after), e.g. "
            f"{_example_pattern(model)!r}")
    return _fx_view(model, blocks)


# -- Hugging Face encoders --------------------------------------------------------------
def _is_hf(model: nn.Module) -> bool:
    return getattr(getattr(model, "config", None), "model_type", None) is not None


def _refuse_language_model(model: nn.Module) -> None:
    name = type(model).__name__
    config = model.config  # type: ignore[union-attr]
    if (getattr(config, "is_decoder", False) or hasattr(model, "lm_head")
            or name.endswith(("ForCausalLM", "LMHeadModel"))):
        raise UserError(f"{name} is a language model; early exits need a classifier (one "
                        "label per example), so they do not apply to it")


def _layer_list(base: nn.Module) -> nn.ModuleList | None:
    layers = getattr(base, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        layers = getattr(getattr(base, "encoder", None), "layer", None)
    return layers if isinstance(layers, nn.ModuleList) and len(layers) else None


def _mask_function() -> Callable[..., Any]:
    from transformers.masking_utils import create_bidirectional_mask

    return create_bidirectional_mask


def _hf_view(model: nn.Module) -> StagedView | None:
    base = getattr(model, "base_model", None)
    head = getattr(model, "classifier", None)
    if base is None or base is model or head is None or not hasattr(base, "embeddings"):
        return None
    layers = _layer_list(base)
    if layers is None:
        return None
    path = {id(m): n for n, m in model.named_modules()}
    layer_paths = [path[id(layer)] for layer in layers]
    name = type(model).__name__
    names = [f"layer.{i}" for i in range(len(layers))]
    embed = path[id(base.embeddings)]
    if name.endswith("ForSequenceClassification"):
        pooler, dropout = getattr(base, "pooler", None), getattr(model, "dropout", None)
        classify = _HFTextClassify(model, pooler=path.get(id(pooler)),
                                   dropout=path.get(id(dropout)), classifier="classifier")
        return StagedView(model, _HFTextEmbed(model, embeddings=embed),
                          [_HFTextBlock(model, layer=p) for p in layer_paths], classify,
                          block_names=names, structure="huggingface-text", feature_kind="tokens",
                          pool="cls")
    norm = getattr(base, "layernorm", None)
    if name.endswith("ForImageClassification") and isinstance(norm, nn.Module):
        return StagedView(model, _HFImageEmbed(model, embeddings=embed),
                          [_HFImageBlock(model, layer=p) for p in layer_paths],
                          _HFImageClassify(model, norm=path[id(norm)], classifier="classifier"),
                          block_names=names, structure="huggingface-image",
                          feature_kind="tokens", pool="cls")
    return None


def _text_inputs(x: Any) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """``(input_ids, attention_mask, token_type_ids)`` of a dict, a ``(B, T)`` ids tensor or
    a ``(B, 2, T)`` ids+mask tensor."""
    if isinstance(x, dict):
        if "input_ids" not in x:
            raise UserError(f"text models take a dict with 'input_ids'; got keys {sorted(x)}")
        return x["input_ids"], x.get("attention_mask"), x.get("token_type_ids")
    if isinstance(x, torch.Tensor) and x.dim() == 3 and x.shape[1] == 2:
        return x[:, 0].long(), x[:, 1].long(), None
    if isinstance(x, torch.Tensor) and x.dim() == 2 and not x.is_floating_point():
        return x, None, None
    shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
    raise UserError("text models take {'input_ids', 'attention_mask'} dicts, (B, T) token ids "
                    f"or (B, 2, T) ids+mask tensors, got {shape}")


class _HFTextEmbed(LivePart):
    def forward(self, x: Any) -> dict[str, torch.Tensor]:
        ids, mask, types = _text_inputs(x)
        hidden = self.sub("embeddings")(input_ids=ids, token_type_ids=types)
        if mask is None:
            mask = torch.ones_like(ids)
        return {"hidden": hidden, "mask": mask}


class _HFTextBlock(LivePart):
    """One encoder layer; the attention mask is built as the model builds it."""

    def forward(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        hidden = state["hidden"]
        mask = _mask_function()(config=self._root.config, inputs_embeds=hidden,
                                attention_mask=state["mask"])
        out = self.sub("layer")(hidden, mask)
        return {**state, "hidden": out[0] if isinstance(out, tuple) else out}


class _HFTextClassify(LivePart):
    def forward(self, state: dict[str, torch.Tensor]) -> torch.Tensor:
        hidden = state["hidden"]
        classifier = self.sub("classifier")
        if self.paths["pooler"] is None:  # the classifier reads the sequence (RoBERTa-style)
            return classifier(hidden)
        pooled = self.sub("pooler")(hidden)
        if self.paths["dropout"] is not None:
            pooled = self.sub("dropout")(pooled)
        return classifier(pooled)


class _HFImageEmbed(LivePart):
    def forward(self, x: Any) -> torch.Tensor:
        pixels = x["pixel_values"] if isinstance(x, dict) else x
        embeddings = self.sub("embeddings")
        return embeddings(pixels.to(next(embeddings.parameters()).dtype))


class _HFImageBlock(LivePart):
    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        mask = _mask_function()(config=self._root.config, inputs_embeds=hidden,
                                attention_mask=None)
        out = self.sub("layer")(hidden, mask)
        return out[0] if isinstance(out, tuple) else out


class _HFImageClassify(LivePart):
    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.sub("classifier")(self.sub("norm")(hidden)[:, 0, :])


# -- blocks of other models ----------------------------------------------------------------
def _find_blocks(model: nn.Module) -> list[str] | None:
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


def _example_pattern(model: nn.Module) -> str:
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


def _fx_view(model: nn.Module, blocks: list[str]) -> StagedView:
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


def _pattern_view(model: nn.Module, patterns: list[str]) -> StagedView:
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
