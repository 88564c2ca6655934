"""Feed-forward (FFN) sites of any ``nn.Module``.

MoE conversion, adaptive computation modules and sparsity analysis work on a
model's FFNs, described by :class:`frugalnn.models.base.FFNSite`. A model that
defines ``ffn_sites()`` (the frugalnn models) is asked first; otherwise the
module tree is read by structure:

* MLP modules ``fc2(act(fc1(x)))`` with children ``fc1`` / ``fc2`` (or
  ``lin1`` / ``lin2``, ``dense_h_to_4h`` / ``dense_4h_to_h``) and an activation
  ``act`` (or ``act_fn``, ``activation_fn``, ``activation``): timm, frugalnn,
  Hugging Face ViT (transformers 5) and others;
* gated (GLU / SwiGLU) MLPs ``down(act(gate(x)) * up(x))``: Llama-style
  ``gate_proj`` / ``up_proj`` / ``down_proj``, timm's ``fc1_g`` / ``fc1_x`` /
  ``fc2``, Mixtral-style ``w1`` / ``w3`` / ``w2``;
* Hugging Face BERT-style layers: ``intermediate.dense`` +
  ``intermediate.intermediate_act_fn`` + ``output.dense``. The site is the
  ``intermediate`` module; installing a replacement puts it there and makes
  ``output.dense`` an ``Identity``, so the layer's dropout, residual and
  LayerNorm stay as they were.

Otherwise ``pattern`` (``fnmatch`` on module names, e.g.
``encoder.layer.*.intermediate`` or ``model.layers.*.mlp``) names the FFN
modules; a named module may also be an ``nn.Sequential`` of ``Linear``,
activation, optional ``Dropout`` and ``Linear`` (never found automatically:
classifier heads have that shape too). Every candidate is checked on a small
random input: the module must compute what its site formula says.

Site names are the module paths in the model, so a checkpoint's recorded
names find the same sites in a rebuilt model. Subtrees of modules that
replaced an FFN (``replaces_ffn = True``: MoE and ACM layers) are skipped, so
converted sites are not found again.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from frugalnn.errors import UserError
from frugalnn.models.base import FFNSite

__all__ = ["find_ffn_sites"]

#: What the one-line error suggests when nothing is recognised.
PATTERN_HINT = (
    "name the FFN modules with --ffn-pattern (ffn_pattern= in Python), "
    "e.g. 'encoder.layer.*.intermediate' or 'model.layers.*.mlp'"
)


class _Activation(nn.Module):
    """A plain function used as an FFN activation, as a module."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


def _as_module(act: Any) -> nn.Module | None:
    if isinstance(act, nn.Module):
        return act
    return _Activation(act) if callable(act) else None


def _is_act(m: Any) -> bool:
    """An activation: callable, no parameters, not a Linear or container of layers."""
    if not isinstance(m, nn.Module):
        return callable(m)
    return not isinstance(m, (nn.Linear, nn.Dropout)) and not any(True for _ in m.parameters())


def _linear_pair(fc1: Any, fc2: Any) -> bool:
    return (isinstance(fc1, nn.Linear) and isinstance(fc2, nn.Linear)
            and fc1.out_features == fc2.in_features)


def _setter(parent: nn.Module, attr: str) -> Callable[[nn.Module], None]:
    def install(module: nn.Module) -> None:
        setattr(parent, attr, module)

    return install


def _split(name: str) -> tuple[str, str]:
    parent, _, attr = name.rpartition(".")
    return parent, attr


#: Child names of plain MLPs ``down(act(up(x)))``: (up, down).
_PLAIN = (("fc1", "fc2"), ("lin1", "lin2"), ("dense_h_to_4h", "dense_4h_to_h"))
#: Child names of gated MLPs ``down(act(gate(x)) * up(x))``: (gate, up, down).
_GATED = (("gate_proj", "up_proj", "down_proj"), ("fc1_g", "fc1_x", "fc2"), ("w1", "w3", "w2"))
#: Names an MLP's activation goes by.
_ACTS = ("act", "act_fn", "activation_fn", "activation")


def _child_act(m: nn.Module) -> nn.Module | None:
    for attr in _ACTS:
        act = _as_module(getattr(m, attr, None))
        if act is not None:
            return act
    return None


def _mlp(name: str, m: nn.Module, parent: nn.Module | None) -> FFNSite | None:
    """A plain (``fc1 / act / fc2``, ...) or gated (``gate_proj / up_proj / down_proj``,
    ...) MLP module, installed by replacing the module itself."""
    if parent is None:
        return None
    norm = getattr(m, "norm", None)
    if norm is not None and not isinstance(norm, nn.Identity):
        return None  # a norm between act and fc2 is not part of the site formula
    act = _child_act(m)
    if act is None:
        return None
    install = _setter(parent, _split(name)[1])
    for g, u, d in _GATED:
        gate, up, down = getattr(m, g, None), getattr(m, u, None), getattr(m, d, None)
        if isinstance(gate, nn.Linear) and _linear_pair(up, down) \
                and (gate.in_features, gate.out_features) == (up.in_features, up.out_features):
            return FFNSite(name, up, act, down, install, gate=gate)
    for u, d in _PLAIN:
        up, down = getattr(m, u, None), getattr(m, d, None)
        if _linear_pair(up, down):
            return FFNSite(name, up, act, down, install)
    return None


def _hf_intermediate(name: str, inter: nn.Module, layer: nn.Module | None) -> FFNSite | None:
    """A Hugging Face ``intermediate`` (dense + act) whose layer has ``output.dense``."""
    if layer is None or getattr(layer, "intermediate", None) is not inter:
        return None
    fc1 = getattr(inter, "dense", None)
    act = _as_module(getattr(inter, "intermediate_act_fn", None))
    fc2 = getattr(getattr(layer, "output", None), "dense", None)
    if act is None or not _linear_pair(fc1, fc2):
        return None

    def install(module: nn.Module) -> None:
        # The module computes the whole FFN; the output block keeps its dropout,
        # residual and LayerNorm, with its dense layer made a no-op.
        layer.intermediate = module
        layer.output.dense = nn.Identity()

    return FFNSite(name, fc1, act, fc2, install)


def _sequential(name: str, m: nn.Module, parent: nn.Module | None) -> FFNSite | None:
    """``nn.Sequential(Linear, act, [Dropout...], Linear)`` (only when named by a pattern)."""
    if parent is None or not isinstance(m, nn.Sequential) or len(m) < 3:
        return None
    parts = list(m)
    middle = [p for p in parts[1:-1] if not isinstance(p, nn.Dropout)]
    if len(middle) != 1 or not _is_act(middle[0]) or not _linear_pair(parts[0], parts[-1]):
        return None
    return FFNSite(name, parts[0], middle[0], parts[-1], _setter(parent, _split(name)[1]))


_AUTOMATIC = (_mlp, _hf_intermediate)


def _formula(site: FFNSite, x: torch.Tensor) -> torch.Tensor:
    h = site.act(site.fc1(x))
    if site.gate is not None:
        h = site.act(site.gate(x)) * site.fc1(x)
    return site.fc2(h)


def _computes_site(module: nn.Module, site: FFNSite, half: bool = False) -> bool:
    """Does ``module`` compute the site formula (``half``: only ``act(fc1(x))``, what a
    Hugging Face ``intermediate`` computes)?"""
    w = site.fc1.weight
    if w.device.type == "meta":
        return True
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, site.fc1.in_features, generator=gen).to(w.device, w.dtype)
    was = module.training
    module.eval()
    try:
        with torch.no_grad():
            got = module(x)
            want = site.act(site.fc1(x)) if half else _formula(site, x)
    except Exception:  # noqa: BLE001 - any failure means "not this formula"
        return False
    finally:
        module.train(was)
    if not isinstance(got, torch.Tensor) or got.shape != want.shape:
        return False
    return bool(torch.allclose(got, want, rtol=1e-3, atol=1e-4 * (1 + want.abs().max().item())))


def _walk(model: nn.Module) -> list[tuple[str, nn.Module, nn.Module | None]]:
    """``(name, module, parent)`` in definition order, skipping FFN replacements' insides."""
    out: list[tuple[str, nn.Module, nn.Module | None]] = []

    def visit(prefix: str, m: nn.Module, parent: nn.Module | None) -> None:
        out.append((prefix, m, parent))
        if getattr(m, "replaces_ffn", False):
            return
        for child_name, child in m.named_children():
            visit(f"{prefix}.{child_name}" if prefix else child_name, child, m)

    visit("", model, None)
    return out


def _recognised(model: nn.Module) -> list[FFNSite]:
    sites: list[FFNSite] = []
    inside: list[str] = []  # names of modules already taken as FFNs (do not descend)
    for name, m, parent in _walk(model):
        if getattr(m, "replaces_ffn", False) or any(name.startswith(p) for p in inside):
            continue
        for match in _AUTOMATIC:
            site = match(name, m, parent)
            if site is not None and _computes_site(m, site, match is _hf_intermediate):
                sites.append(site)
                inside.append(name + ".")
                break
    return sites


def _named(model: nn.Module, pattern: str) -> list[FFNSite]:
    matched = [(n, m, p) for n, m, p in _walk(model) if n and fnmatch.fnmatchcase(n, pattern)]
    if not matched:
        raise UserError(f"the FFN pattern {pattern!r} matches no module of the model; "
                        "module names look like 'encoder.layer.0.intermediate'")
    sites = []
    for name, m, parent in matched:
        if getattr(m, "replaces_ffn", False):
            continue  # already converted
        site, half = None, False
        for match in (*_AUTOMATIC, _sequential):
            site, half = match(name, m, parent), match is _hf_intermediate
            if site is not None:
                break
        inter = getattr(m, "intermediate", None)
        if site is None and isinstance(inter, nn.Module):  # a whole HF layer was named
            if getattr(inter, "replaces_ffn", False):
                continue
            site, half, m = _hf_intermediate(f"{name}.intermediate", inter, m), True, inter
        if site is None or not _computes_site(m, site, half):
            raise UserError(
                f"module {name!r} ({type(m).__name__}) matched by the FFN pattern {pattern!r} "
                "is not a feed-forward layer fc2(act(fc1(x))) or down(act(gate(x)) * up(x))"
            )
        sites.append(site)
    return sites


def find_ffn_sites(
    model: nn.Module,
    pattern: str | None = None,
    *,
    purpose: str = "this method",
    required: bool = True,
) -> list[FFNSite]:
    """The feed-forward sites of ``model`` (see the module docstring for what is found).

    ``pattern`` names the FFN modules (``fnmatch`` on module names) instead of
    the automatic search. With ``required`` (default), finding none raises a
    one-line :class:`UserError` that says which option to give; ``purpose``
    names what needs the FFNs.
    """
    if pattern:
        sites = _named(model, pattern)
    else:
        own = getattr(model, "ffn_sites", None)
        sites = list(own()) if callable(own) else []
        if not sites:
            sites = _recognised(model)
    if not sites and required:
        spec = getattr(model, "frugalnn_spec", None) or {}
        name = spec.get("name", type(model).__name__)
        if pattern:
            raise UserError(f"every module matched by the FFN pattern {pattern!r} is already "
                            f"converted; {purpose} has no FFN left to work on")
        raise UserError(
            f"model {name!r} has no feed-forward (FFN) layers that frugalnn recognises; "
            f"{purpose} needs them: {PATTERN_HINT} (a CNN has none)"
        )
    return sites
