"""Whole-model low-rank compression: find layers, choose ranks, swap in chains.

``compress_model`` replaces every eligible layer of a model, in place, by its
factorised chain (:mod:`frugalnn.methods.lowrank.layers`) with ranks chosen by a
criterion (:mod:`frugalnn.methods.lowrank.rank`, or the latency-aware selector), and
returns a per-layer plan with costs before and after. It records the
``"lowrank"`` transformation (method and the ranks of every replaced layer),
so :func:`frugalnn.train.checkpoint.load_model` rebuilds the structure from a
checkpoint and then loads the fine-tuned weights.

``layer_targets`` override the target for some layers: ``"PATTERN:SPEC"``
(an fnmatch pattern on the module name, then a target such as ``flops=3``);
the first matching pattern wins. Different stages of a network differ in how
much a rank costs in time and in accuracy, so one ratio everywhere is rarely
the best plan (ResNet-56 measurements on a 2-core AMD EPYC, 2026-12-02).

Eligible layers: for ``cp``/``tucker``/``tt``, ``Conv2d`` with a kernel larger
than 1x1 and ``groups=1``, and capsule transformations
(:mod:`frugalnn.methods.lowrank.capsule`, always by the linear chain); for ``svd``,
``Linear`` and 1x1 ``Conv2d``; a nonlinear
method (``tt-nl``, :mod:`frugalnn.methods.lowrank.nonlinear`) takes its linear one's
layers and ranks. A model
with none, or a target under which no layer gets cheaper, is a ``UserError``.

The compressed model also gets a run-time knob, ``rank_fraction``: every chain
uses only its leading fraction of components (1.0 = the compressed model as
chosen). It is attached by giving the instance a subclass of its own class
that adds the four knob methods, so state-dict names and the staged interface
stay those of the base model and other transformations can stack on it.
"""

from __future__ import annotations

import fnmatch
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from frugalnn.errors import UserError
from frugalnn.methods.lowrank import capsule
from frugalnn.methods.lowrank import layers as L
from frugalnn.methods.lowrank import nonlinear as NL
from frugalnn.methods.lowrank.geometry import ConvSpec, linear_spec
from frugalnn.methods.lowrank.rank import (
    MODEL_KINDS,
    Criterion,
    chain_cost,
    dense_cost,
    select_ranks,
)
from frugalnn.transforms import record_transform, register_transform
from frugalnn.utils.batch import call_model

TRANSFORM = "lowrank"
BUDGET_VALUES = (0.25, 0.5, 0.75, 1.0)


@dataclass
class LayerTarget:
    """An eligible layer: where it is, its geometry and its input size per example."""

    name: str
    module: nn.Module
    spec: ConvSpec | capsule.CapsuleSpec
    hw: tuple[int, int]  # input (h, w) of a conv; (tokens, 1) of a Linear

    @property
    def kind(self) -> str:
        if isinstance(self.spec, capsule.CapsuleSpec):
            return "capsule"
        return "linear" if isinstance(self.module, nn.Linear) else "conv"


@dataclass
class LayerPlan:
    """What happened to one eligible layer (ranks ``None``: kept dense, see ``reason``)."""

    name: str
    kind: str
    shape: str
    ranks: tuple[int, ...] | None
    reason: str
    dense_params: int
    dense_flops: int
    params: int
    flops: int
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ranks"] = list(self.ranks) if self.ranks is not None else None
        return d


def _eligible(module: nn.Module, method: str) -> bool:
    if capsule.is_capsule_layer(module):
        return method in capsule.METHODS
    if isinstance(module, nn.Linear):
        return method == "svd"
    if not isinstance(module, nn.Conv2d) or module.groups != 1 or module.padding_mode != "zeros":
        return False
    one_by_one = tuple(module.kernel_size) == (1, 1)
    return one_by_one if method == "svd" else not one_by_one


def _computes_its_base(module: nn.Module, x: Any, out: Any) -> bool:
    """Whether a Conv2d / Linear subclass that overrides ``forward`` still computes what the
    plain layer computes on this input. One that does more (a conv padding "same" inside
    its forward, as EfficientNet's does) would lose that work in a factorised chain."""
    for base in (nn.Conv2d, nn.Linear):
        if isinstance(module, base) and type(module).forward is not base.forward:
            if not isinstance(x, torch.Tensor) or not isinstance(out, torch.Tensor):
                return False
            plain = base.forward(module, x)
            return plain.shape == out.shape and torch.allclose(plain, out, atol=1e-6, rtol=1e-5)
    return True


def _matches(name: str, patterns: list[str] | None) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns or [])


def find_layers(model: nn.Module, method: str, example_input: Any,
                include: list[str] | None = None,
                exclude: list[str] | None = None) -> list[LayerTarget]:
    """Eligible layers of ``model`` for ``method``, with input sizes from one forward.

    ``include``/``exclude`` are shell-style patterns on module names
    (``blocks.*.conv1``); one example of ``example_input`` is run to see sizes.
    """
    if method not in L.METHODS + NL.METHODS:
        raise UserError(f"unknown method {method!r}; choose one of "
                        f"{', '.join(L.METHODS + NL.METHODS)}")
    # Layers inside an existing chain are already factors: never factorise them again.
    chains = [n + "." for n, m in model.named_modules() if isinstance(m, L.FactorizedLayer)]
    found = {
        name: m for name, m in model.named_modules()
        if name and _eligible(m, NL.linear_method(method))
        and (include is None or _matches(name, include))
        and not _matches(name, exclude) and not any(name.startswith(c) for c in chains)
    }
    sizes: dict[str, tuple[int, int]] = {}
    altered: set[str] = set()

    def hook(name: str):
        def fn(module: nn.Module, inputs: tuple[Any, ...], out: Any) -> None:
            x = inputs[0]
            if not _computes_its_base(module, x, out):
                altered.add(name)
            if isinstance(module, nn.Conv2d):
                sizes[name] = (int(x.shape[-2]), int(x.shape[-1]))
            elif not isinstance(module, nn.Linear):  # a capsule layer: sizes in its geometry
                sizes[name] = (1, 1)
            else:
                sizes[name] = (max(1, x.numel() // (x.shape[0] * module.in_features)), 1)
        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in found.items()]
    try:
        with torch.no_grad():
            was = model.training
            model.eval()
            call_model(model, _first_example(example_input))
            model.train(was)
    finally:
        for h in handles:
            h.remove()
    targets = []
    for name, m in found.items():
        if name not in sizes or name in altered:
            continue  # never called in forward (nothing to gain), or more than a plain layer
        targets.append(LayerTarget(name, m, _spec(m, name), sizes[name]))
    return targets


def parse_layer_targets(texts: list[str] | None) -> list[tuple[str, Criterion]]:
    """``["PATTERN:SPEC", ...]`` as (pattern, criterion) pairs; latency and model-* targets
    are whole-model only."""
    out = []
    for text in texts or []:
        pattern, sep, spec = str(text).rpartition(":")
        if not sep or not pattern:
            raise UserError(
                f"bad layer target {text!r}; use PATTERN:TARGET, e.g. 'blocks.2*:flops=3'"
            )
        crit = Criterion.parse(spec)
        if crit.kind == "latency" or crit.kind in MODEL_KINDS:
            raise UserError(f"layer target {text!r}: a {crit.kind} target is whole-model; "
                            "give it as --target")
        out.append((pattern, crit))
    return out


def _first_example(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return x[:1]
    if isinstance(x, dict):
        return {k: v[:1] for k, v in x.items()}
    return x


def _spec(m: nn.Module, name: str) -> ConvSpec | capsule.CapsuleSpec:
    if capsule.is_capsule_layer(m):
        return capsule.CapsuleSpec.of(m)
    return linear_spec(m) if isinstance(m, nn.Linear) else ConvSpec.of(m, name)


def _build(target: LayerTarget, method: str, ranks: tuple[int, ...], depthwise: str,
           from_weights: bool, whiten: Any = None) -> nn.Module:
    opts: dict[str, Any] = {"depthwise": depthwise} if method == "cp" else {}
    if whiten is not None:
        opts["whiten"] = whiten
    m = target.module
    if isinstance(target.spec, capsule.CapsuleSpec):
        return capsule.factorise(m, NL.linear_method(method), ranks, from_weights)
    if NL.is_nonlinear(method):
        return NL.build(m, method, ranks, from_weights)
    if isinstance(m, nn.Linear):
        if from_weights:
            return L.SVDLinear.from_linear(m, ranks[0], whiten)
        layer = L.SVDLinear(m.in_features, m.out_features, ranks[0], m.bias is not None)
        return layer.to(m.weight.device, m.weight.dtype)
    if from_weights:
        return L.from_conv(m, method, ranks, **opts)
    return L.empty_like_conv(m, method, ranks, **opts)


def plan_row(target: LayerTarget, method: str, ranks: tuple[int, ...] | None, reason: str,
             depthwise: str = "separable") -> LayerPlan:
    s = target.spec
    if isinstance(s, capsule.CapsuleSpec):
        dp, df = s.dense_params(), s.dense_flops()
        if ranks is None:
            return LayerPlan(target.name, target.kind, s.describe(), None, reason, dp, df, dp, df)
        lin = NL.linear_method(method)
        return LayerPlan(target.name, target.kind, s.describe(), tuple(ranks), reason, dp, df,
                         capsule.chain_params(lin, s, ranks), capsule.chain_flops(lin, s, ranks))
    shape = f"{s.in_channels}->{s.out_channels} k{s.kernel[0]}x{s.kernel[1]} s{s.stride[0]}"
    dp, df = dense_cost(s, target.hw, "params"), dense_cost(s, target.hw, "flops")
    if ranks is None:
        return LayerPlan(target.name, target.kind, shape, None, reason, dp, df, dp, df)
    lin = NL.linear_method(method)  # a nonlinear chain: the linear one's costs + its kinks
    return LayerPlan(
        target.name, target.kind, shape, tuple(ranks), reason, dp, df,
        chain_cost(lin, s, ranks, target.hw, "params", depthwise)
        + NL.extra_params(method, s, tuple(ranks)),
        chain_cost(lin, s, ranks, target.hw, "flops", depthwise),
    )


def _gains(model: nn.Module, targets: list[LayerTarget], method: str,
           ladders: dict[str, list[Any]], depthwise: str, whiten: dict[str, Any],
           batch: Any) -> dict[str, float]:
    """Each layer's output gain on a calibration ``batch`` (:mod:`.sensitivity`), probed
    at a step of its ladder (``ladders[name]``)."""
    from frugalnn.methods.lowrank.sensitivity import output_sensitivity, probe_modules

    probes = probe_modules({t.name: (t, ladders[t.name]) for t in targets},
                           lambda t, ranks: _build(t, method, ranks, depthwise, True,
                                                   whiten.get(t.name)).train(t.module.training))
    return output_sensitivity(model, probes, batch)


def _allocated(model: nn.Module, targets: list[LayerTarget], method: str, crit: Criterion,
               example_input: Any, depthwise: str, multiple: int,
               weights: dict[str, torch.Tensor], whiten: dict[str, Any] | None = None,
               gain_batch: Any = None) -> dict[str, tuple[Any, str, dict[str, Any]]]:
    """Ranks of a ``model-flops`` / ``model-params`` target (:mod:`.allocate`); with a
    calibration ``gain_batch``, each layer's energy weighed by its measured output gain."""
    from frugalnn.methods.lowrank.allocate import allocate, ladder

    caps = [t.name for t in targets if t.kind == "capsule"]
    if caps:
        raise UserError(f"a {crit.kind} target allocates convolution and linear ranks only; "
                        f"leave capsule layer {caps[0]!r} out (--exclude)")
    measure = crit.kind.removeprefix("model-")
    if measure == "params":
        total = float(sum(p.numel() for p in model.parameters()))
    else:
        from frugalnn.cost.count import flops_per_example

        was = model.training
        model.eval()  # as find_layers runs it: no BatchNorm statistics move
        try:
            with torch.no_grad():
                total = float(flops_per_example(model, _first_example(example_input)))
        finally:
            model.train(was)
    ladders = {t.name: ladder(method, t, measure, depthwise, multiple, weights.get(t.name))
               for t in targets}
    gains = None
    if gain_batch is not None:
        gains = _gains(model, targets, method, ladders, depthwise, whiten or {}, gain_batch)
    return allocate(targets, method, crit.value, total, measure=measure, depthwise=depthwise,
                    multiple=multiple, weights=weights, gains=gains, ladders=ladders)


def compress_model(
    model: nn.Module,
    method: str,
    target: str | Criterion,
    example_input: Any,
    *,
    include: list[str] | None = None,
    exclude: list[str] | None = None,
    depthwise: str = "separable",
    latency: dict[str, Any] | None = None,
    layer_targets: list[str] | None = None,
    rank_multiple: int = 1,
    calibration: Any = None,
    gain_examples: int = 0,
    gain_data: Any = None,
) -> tuple[nn.Module, list[LayerPlan]]:
    """Factorise the eligible layers of ``model`` in place; return it and the plan.

    ``calibration`` (batches of inputs, e.g. a loader of training examples) makes the
    SVD data-aware (:mod:`frugalnn.methods.lowrank.calibrate`): ranks and factors
    from the layers' outputs on those inputs rather than from their weights alone.
    For a ``model-*`` target with ``gain_examples`` > 0, each layer's output gain is
    measured on that many examples of the first batch of ``gain_data`` (default:
    ``calibration``) and weighs the allocation (:mod:`.sensitivity`), for every method.

    ``layer_targets`` (``"PATTERN:SPEC"``) override ``target`` for matching
    layers; ``rank_multiple`` aligns the ranks of ``flops``/``params`` targets
    (see :mod:`frugalnn.methods.lowrank.rank`). ``latency`` (for ``target="latency=F"``)
    holds options of
    :func:`frugalnn.methods.lowrank.latency_select.choose_ranks` (batch size, device,
    repeats); the measured table is stored in each plan row's ``extra``.
    """
    crit = target if isinstance(target, Criterion) else Criterion.parse(target)
    overrides = parse_layer_targets(layer_targets)
    if rank_multiple < 1:
        raise UserError(f"--rank-multiple must be >= 1, got {rank_multiple}")
    if crit.kind == "latency" and (overrides or rank_multiple > 1):
        raise UserError("a latency target chooses every rank itself; drop --layer-target and "
                        "--rank-multiple, or use a flops/params target")
    if calibration is not None and (method != "svd" or crit.kind == "latency"):
        raise UserError("data-aware compression (--data-aware) works with --method svd and a "
                        "rank, flops, params, model-*, energy or vbmf target")
    gain_data = gain_data if gain_data is not None else calibration
    if gain_examples > 0 and (gain_data is None or crit.kind not in MODEL_KINDS):
        raise UserError("--gain-examples weighs a whole-model allocation: it needs a "
                        "model-flops / model-params target and examples to measure on")
    if crit.kind in MODEL_KINDS and overrides:
        raise UserError(f"a {crit.kind} target allocates every layer's rank itself; drop "
                        "--layer-target, or use a per-layer flops/params target")
    targets = find_layers(model, method, example_input, include, exclude)
    lin = NL.linear_method(method)  # ranks of a nonlinear chain are its linear chain's
    if not targets:
        kinds = "Linear or 1x1 Conv2d" if lin == "svd" else "KxK Conv2d (K>1, groups=1)"
        raise UserError(
            f"{type(model).__name__} has nothing to factorise with --method {method}: no {kinds} "
            "layer is used in its forward pass; try another method"
        )
    unused = [pat for pat, _ in overrides
              if not any(fnmatch.fnmatchcase(t.name, pat) for t in targets)]
    if unused:
        raise UserError(f"layer target pattern(s) {', '.join(map(repr, unused))} match no "
                        f"eligible layer (e.g. {targets[0].name!r}); check the module names")
    whiten: dict[str, Any] = {}
    weights: dict[str, torch.Tensor] = {}  # the matrices whose spectra set the ranks
    if calibration is not None:
        from frugalnn.methods.lowrank.calibrate import effective_weight, input_whitening

        caps = [t.name for t in targets if t.kind == "capsule"]
        if caps:
            raise UserError(f"--data-aware calibrates linear and 1x1 convolution layers; leave "
                            f"capsule layer {caps[0]!r} out (--exclude)")

        whiten = input_whitening(model, {t.name: t.module for t in targets}, calibration)
        weights = {t.name: effective_weight(t.module, whiten[t.name]) for t in targets}
    if crit.kind == "latency":
        from frugalnn.methods.lowrank.latency_select import choose_ranks

        caps = [t.name for t in targets if t.kind == "capsule"]
        if caps:
            raise UserError(f"a latency target chooses convolution ranks only; leave capsule "
                            f"layer {caps[0]!r} out (--exclude) or give a flops/params target")

        chosen = choose_ranks(model, targets, lin, crit.value, example_input,
                              depthwise=depthwise, **(latency or {}))
    elif crit.kind in MODEL_KINDS:
        gain_batch = None
        if gain_data is not None and gain_examples > 0:  # measured output gains
            from frugalnn.utils.batch import inputs_of, take, to_device

            device = next(model.parameters()).device
            gain_batch = to_device(take(inputs_of(next(iter(gain_data))), gain_examples),
                                   device)
        chosen = _allocated(model, targets, lin, crit, example_input, depthwise, rank_multiple,
                            weights, whiten, gain_batch)
    else:
        chosen = {}
        for t in targets:
            layer_crit = next((c for pat, c in overrides if fnmatch.fnmatchcase(t.name, pat)), crit)
            if isinstance(t.spec, capsule.CapsuleSpec):
                ranks = capsule.select_ranks(lin, t.spec, t.module.weight, layer_crit,
                                             rank_multiple)
            else:
                ranks = select_ranks(lin, t.spec, weights.get(t.name, t.module.weight), t.hw,
                                     layer_crit, depthwise, rank_multiple)
            aligned = rank_multiple > 1 and layer_crit.kind in ("flops", "params")
            label = f"{layer_crit}" + (f", multiple of {rank_multiple}" if aligned else "")
            chosen[t.name] = (ranks, label if ranks else f"not cheaper under {layer_crit}", {})
    if whiten:
        chosen = {n: (r, f"{why}, data-aware" if r else why, extra)
                  for n, (r, why, extra) in chosen.items()}
    plan = [plan_row(t, method, *chosen[t.name][:2], depthwise) for t in targets]
    for row, t in zip(plan, targets):
        row.extra.update(chosen[t.name][2])
        row.extra["input_hw"] = list(t.hw)
    if all(p.ranks is None for p in plan):
        raise UserError(
            f"no layer gets cheaper under target {crit} with --method {method}; "
            "relax the target (e.g. a smaller ratio or a lower energy)"
        )
    for row, t in zip(plan, targets):
        if row.ranks is not None:
            # the chain takes the replaced layer's mode, so an eval-mode model stays
            # eval throughout (BatchNorm folding refuses training-mode convolutions)
            layer = _build(t, method, row.ranks, depthwise, True,
                           whiten.get(t.name)).train(t.module.training)
            model.set_submodule(t.name, layer)
    layers = {p.name: list(p.ranks) for p in plan if p.ranks is not None}
    record_transform(model, TRANSFORM, {"method": method, "depthwise": depthwise,
                                        "layers": layers})
    attach_rank_knob(model)
    return model, plan


@register_transform(TRANSFORM)
def rebuild_lowrank(model: nn.Module, method: str, layers: dict[str, list[int]],
                    depthwise: str = "separable") -> nn.Module:
    """Rebuild the factorised structure recorded by :func:`compress_model` (weights untrained)."""
    for name, ranks in layers.items():
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise UserError(
                f"checkpoint names layer {name!r}, which this model does not have; "
                "was it saved from another model?"
            ) from None
        target = LayerTarget(name, module, _spec(module, name), (1, 1))
        layer = _build(target, method, tuple(ranks), depthwise, False).train(module.training)
        model.set_submodule(name, layer)
    attach_rank_knob(model)
    return model


def factorised_layers(model: nn.Module) -> list[L.FactorizedLayer]:
    return [m for m in model.modules() if isinstance(m, L.FactorizedLayer)]


class RankKnob:
    """The budget knob of a compressed model: fraction of every chain's rank in use."""

    budget_name = "rank_fraction"

    def budget_values(self) -> list[float]:
        return list(BUDGET_VALUES)

    def full_budget(self) -> float:
        return 1.0

    def set_budget(self, value: float) -> None:
        value = float(value)
        if not 0.0 < value <= 1.0:
            raise UserError(f"rank_fraction must be in (0, 1], got {value}")
        for layer in factorised_layers(self):  # type: ignore[arg-type]
            layer.set_rank_fraction(value)


_KNOB_CLASSES: dict[type, type] = {}


def attach_rank_knob(model: nn.Module) -> nn.Module:
    """Give ``model`` the ``rank_fraction`` knob (its class becomes a knob subclass)."""
    cls = type(model)
    if isinstance(model, RankKnob):
        return model
    if cls not in _KNOB_CLASSES:
        _KNOB_CLASSES[cls] = type(f"LowRank{cls.__name__}", (cls, RankKnob), {})
    model.__class__ = _KNOB_CLASSES[cls]
    return model


def plan_totals(plan: list[LayerPlan]) -> dict[str, float]:
    """Sums over the eligible layers and the resulting compression ratios."""
    dp = sum(p.dense_params for p in plan)
    df = sum(p.dense_flops for p in plan)
    pp = sum(p.params for p in plan)
    pf = sum(p.flops for p in plan)
    return {
        "layers_factorised": sum(p.ranks is not None for p in plan),
        "layers_eligible": len(plan),
        "dense_params": dp, "params": pp, "dense_flops": df, "flops": pf,
        "params_ratio": dp / max(pp, 1), "flops_ratio": df / max(pf, 1),
    }


def plan_markdown(plan: list[LayerPlan]) -> str:
    """The per-layer plan as a Markdown table (FLOPs per example)."""
    lines = [
        "| layer | shape | ranks | params dense -> low-rank | FLOPs dense -> low-rank | "
        "dense ms | low-rank ms | note |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for p in plan:
        ranks = ",".join(map(str, p.ranks)) if p.ranks else "dense"
        dms = p.extra.get("dense_ms")
        lms = p.extra.get("lowrank_ms")
        lines.append(
            f"| {p.name} | {p.shape} | {ranks} | {p.dense_params:,} -> {p.params:,} | "
            f"{p.dense_flops:,} -> {p.flops:,} | "
            f"{'' if dms is None else f'{dms:.3f}'} | {'' if lms is None else f'{lms:.3f}'} | "
            f"{p.reason} |"
        )
    return "\n".join(lines) + "\n"
