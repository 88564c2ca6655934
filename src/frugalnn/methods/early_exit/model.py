"""The early-exit model: a staged backbone plus internal classifiers that really exit.

``attach_heads(backbone, positions=...)`` returns an :class:`EarlyExitModel`;
a backbone that is not a frugalnn :class:`StagedModel` is seen through
:func:`frugalnn.models.adapters.staged.as_staged` (same modules, no copies).
Its forward pass is the real batched inference: after each head, the rows
whose prediction satisfies the exit policy are written to the output and
*removed from the batch*; the remaining blocks run only on the rest. Every
row is charged, in the active cost ledger, exactly what was computed for it:
the embedding, the blocks it went through, the heads evaluated on it, and the
final classifier if it got there. Per-stage costs are measured once per input
shape with :func:`frugalnn.cost.count.count_flops` on a one-example batch.

The exits are numbered ``0 .. num_internal``: the internal heads in block
order, then the backbone's own classifier. At the policy's full budget no head
can fire, heads are skipped, and the model computes exactly the backbone's
outputs at exactly the backbone's cost.

Optionally (:meth:`EarlyExitModel.add_final_ensemble`) the rows that reach
the end get a learned weighted geometric mean of every exit's output and the
backbone's own instead of the backbone's output alone: the heads were
computed for those rows anyway, so the combination costs a few hundred FLOPs.
At the full budget no head runs and the backbone's output is returned as is.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import _disable_current_modes

from frugalnn.cost.count import count_flops, static_flops_excluding_dynamic
from frugalnn.cost.ledger import DynamicModule, charge, record, subset
from frugalnn.errors import UserError
from frugalnn.methods.early_exit import policies
from frugalnn.methods.early_exit.heads import ExitHead, resolve_head_kind
from frugalnn.models.base import StagedModel, State, hidden_of, select_rows
from frugalnn.transforms import record_transform, register_transform
from frugalnn.utils.batch import batch_len

TRANSFORM_NAME = "early_exit"


class GeometricEnsemble(nn.Module):
    """Zero-Time-Waste ensembling: exit ``i`` predicts ``sum_{j<=i} w_ij log p_j + b_i``.

    A weighted geometric mean of the probabilities of heads ``0..i``. Starts at
    ``w = I, b = 0`` (each exit is its own head) and is trained afterwards on
    the frozen cascade (:func:`frugalnn.methods.early_exit.training.train_ensemble`).
    """

    def __init__(self, num_heads: int, num_classes: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.eye(num_heads))
        self.bias = nn.Parameter(torch.zeros(num_heads, num_classes))

    def combine(self, i: int, log_probs: Sequence[torch.Tensor]) -> torch.Tensor:
        """Combined logits of exit ``i`` from the log-probabilities of heads ``0..i``."""
        stacked = torch.stack(list(log_probs[: i + 1]), dim=0)
        w = self.weight[i, : i + 1].to(stacked.dtype)
        # An elementwise product summed over heads: each row's result does not depend on
        # the other rows in the batch (the real path shrinks the batch, the offline sweep
        # does not), and it is cheaper than einsum's dispatch at batch size 1.
        return (stacked * w.view(-1, 1, 1)).sum(0) + self.bias[i]


class FinalEnsemble(nn.Module):
    """The last exit as ``sum_j w_j log p_j + b`` over every exit (internal, then final).

    ``p_j`` are the probabilities the internal exits decided on (ensembled ones
    for ZTW) and the backbone's own. Starts as the backbone's log-probabilities
    (``w = (0, ..., 0, 1)``, ``b = 0``) and is fitted afterwards
    (:func:`frugalnn.methods.early_exit.training.train_final_ensemble`) on
    examples the backbone was *not* trained on: on its training rows the backbone
    looks more reliable than it is, and the fit would trust it too much.
    """

    def __init__(self, num_exits: int, num_classes: int) -> None:
        super().__init__()
        weight = torch.zeros(num_exits)
        weight[-1] = 1.0
        self.weight = nn.Parameter(weight)
        self.bias = nn.Parameter(torch.zeros(num_classes))

    def combine(self, log_probs: Sequence[torch.Tensor]) -> torch.Tensor:
        """Combined logits from the log-probabilities of every exit (final last)."""
        stacked = torch.stack(list(log_probs), dim=0)
        return (stacked * self.weight.to(stacked.dtype).view(-1, 1, 1)).sum(0) + self.bias


class _Call(nn.Module):
    """Wraps a callable so the FLOP counter can run it like a module."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, *args: Any) -> Any:
        return self.fn(*args)


@dataclass
class StageCosts:
    """FLOPs per row of each stage (measured on one example of a given input shape)."""

    embed: float
    blocks: list[float]
    heads: list[float]
    ensemble: list[float]
    classify: float
    final_ensemble: float = 0.0

    def backbone(self) -> float:
        return self.embed + sum(self.blocks) + self.classify


def _first_row(x: Any) -> Any:
    return select_rows(x, torch.arange(1, device=_device_of(x)))


def _device_of(x: Any) -> torch.device:
    if isinstance(x, dict):  # a dict state, or a model's own dict input (input_ids, ...)
        t = x.get("hidden")
        if not isinstance(t, torch.Tensor):
            t = next(v for v in x.values() if isinstance(v, torch.Tensor))
        return t.device
    return x.device


def _shape_key(x: Any) -> tuple:
    if isinstance(x, dict):
        return tuple(sorted((k, tuple(v.shape[1:])) for k, v in x.items()))
    return tuple(x.shape[1:])


def _has_dynamic(module: nn.Module) -> bool:
    return any(isinstance(m, DynamicModule) for m in module.modules())


def _block_flops(block: nn.Module, state: State) -> float:
    # A block holding its own dynamic module (e.g. a mixture-of-experts FFN) charges
    # the ledger for that part itself; count only the static rest here.
    if _has_dynamic(block):
        return float(static_flops_excluding_dynamic(block, (state,)))
    return float(count_flops(block, state))


class EarlyExitModel(DynamicModule):
    """A :class:`StagedModel` with internal classifiers and an exit policy.

    Budget knob (``frugalnn.budget.Budgeted``): the policy's threshold
    (``budget_name`` is ``"threshold"`` or ``"patience"``).
    """

    def __init__(
        self,
        backbone: StagedModel,
        positions: list[int],
        heads: nn.ModuleList,
        *,
        policy: str = "maxprob",
        cascade: bool = False,
        ensemble: bool = False,
        final_ensemble: bool = False,
        num_classes: int,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.positions = list(positions)
        self.heads = heads
        self.cascade = cascade
        self.num_classes = num_classes
        self.ensemble: GeometricEnsemble | None = (
            GeometricEnsemble(len(positions), num_classes) if ensemble else None
        )
        self.final_ensemble: FinalEnsemble | None = (
            FinalEnsemble(len(positions) + 1, num_classes) if final_ensemble else None
        )
        self.feature_kind = backbone.feature_kind
        self.policy = policies.check_policy(policy)
        self.threshold = policies.full_budget(policy, self.num_internal)
        self.freeze_backbone = False
        self._head_at = {p: i for i, p in enumerate(self.positions)}
        self._costs: dict[tuple, StageCosts] = {}

    # -- structure -------------------------------------------------------------
    @property
    def num_internal(self) -> int:
        return len(self.positions)

    @property
    def num_exits(self) -> int:
        return len(self.positions) + 1

    def exit_points(self) -> list[str]:
        """Where each exit sits: the module after which it exits (``block <i>`` for
        backbones without names), then ``final``."""
        names = getattr(self.backbone, "block_names", None)
        return [names[p] if names else f"block {p}" for p in self.positions] + ["final"]

    def train(self, mode: bool = True) -> EarlyExitModel:
        """As ``nn.Module.train``, but a frozen backbone stays in eval mode (BN statistics)."""
        super().train(mode)
        if self.freeze_backbone:
            self.backbone.eval()
        return self

    def add_ensemble(self) -> GeometricEnsemble:
        """Add (identity-initialised) geometric ensembling and record it for checkpoints."""
        if self.ensemble is None:
            p = next(self.heads.parameters())
            self.ensemble = GeometricEnsemble(self.num_internal, self.num_classes).to(p.device)
            self._update_record(ensemble=True)
            self._costs.clear()  # measured without it
        return self.ensemble

    def add_final_ensemble(self) -> FinalEnsemble:
        """Add the final-exit ensemble (starts as the backbone's output) and record it."""
        if self.final_ensemble is None:
            p = next(self.heads.parameters())
            self.final_ensemble = FinalEnsemble(self.num_exits, self.num_classes).to(p.device)
            self._update_record(final_ensemble=True)
            self._costs.clear()  # measured without it
        return self.final_ensemble

    def _update_record(self, **changes: Any) -> None:
        history = [dict(h) for h in getattr(self, "frugalnn_transforms", [])]
        for entry in reversed(history):
            if entry["name"] == TRANSFORM_NAME:
                entry["args"] = {**entry["args"], **changes}
                break
        self.frugalnn_transforms = history

    # -- budget knob -----------------------------------------------------------
    @property
    def budget_name(self) -> str:
        return "patience" if self.policy == "patience" else "threshold"

    def budget_values(self) -> list[float]:
        return policies.budget_values(self.policy, self.num_internal)

    def full_budget(self) -> float:
        return policies.full_budget(self.policy, self.num_internal)

    def set_budget(self, value: float) -> None:
        self.threshold = policies.check_threshold(self.policy, value, self.num_internal)

    def set_policy(self, policy: str, threshold: float | None = None) -> None:
        """Switch exit policy; the threshold resets to its full budget unless given."""
        self.policy = policies.check_policy(policy)
        self._update_record(policy=policy)
        self.threshold = self.full_budget()
        if threshold is not None:
            self.set_budget(threshold)

    def at_full_budget(self) -> bool:
        return self.threshold == self.full_budget()

    # -- costs -----------------------------------------------------------------
    def stage_costs(self, x: Any) -> StageCosts:
        """Per-row FLOPs of every stage for inputs shaped like ``x`` (cached per shape)."""
        key = _shape_key(x)
        if key not in self._costs:
            # Measured outside any active ledger (an empty context has none) and outside
            # any active dispatch mode: a FLOP counter around the first call
            # (``frugalnn.measure``, ``frugalnn profile``) would otherwise also count this
            # measurement's passes, and report about three times what a call costs.
            with _disable_current_modes():
                self._costs[key] = contextvars.Context().run(self._measure_costs,
                                                             _first_row(x))
        return self._costs[key]

    @torch.no_grad()
    def _measure_costs(self, x1: Any) -> StageCosts:
        was_training = self.training
        self.eval()
        try:
            bb = self.backbone
            embed = float(count_flops(_Call(bb.embed), x1))
            state = bb.embed(x1)
            blocks, heads, ens = [], [], []
            prev: torch.Tensor | None = None
            log_probs: list[torch.Tensor] = []
            for b, block in enumerate(bb.blocks):
                blocks.append(_block_flops(block, state))
                state = block(state)
                h = self._head_at.get(b)
                if h is None:
                    continue
                head = self.heads[h]
                heads.append(float(count_flops(head, state, prev)))
                logits = head(state, prev)
                prev = logits
                if self.ensemble is not None:
                    log_probs.append(F.log_softmax(logits, dim=1))
                    ens.append(float(count_flops(_Call(self.ensemble.combine), h, log_probs)))
                else:
                    ens.append(0.0)
            final = bb.classify(state)
            classify = float(count_flops(_Call(bb.classify), state))
            final_ens = 0.0
            if self.final_ensemble is not None:
                # The combination's cost depends only on the shapes: log-softmax of every
                # exit, then the weighted sum.
                final_ens = float(count_flops(
                    _Call(self.finish), [final] * self.num_internal, final))
            return StageCosts(embed, blocks, heads, ens, classify, final_ens)
        finally:
            self.train(was_training)

    def exit_costs(self, x: Any) -> list[float]:
        """Per-row FLOPs of stopping at each exit, every earlier head evaluated."""
        c = self.stage_costs(x)
        out = []
        spent = c.embed
        done = 0
        for h, p in enumerate(self.positions):
            spent += sum(c.blocks[done : p + 1]) + c.heads[h] + c.ensemble[h]
            done = p + 1
            out.append(spent)
        out.append(spent + sum(c.blocks[done:]) + c.classify + c.final_ensemble)
        return out

    # -- all-exits passes (training and offline evaluation) ----------------------
    def head_features(self, x: Any) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Every head's (parameter-free) reduced features, and the final logits."""
        bb = self.backbone
        state = bb.embed(x)
        feats = []
        for b, block in enumerate(bb.blocks):
            state = block(state)
            h = self._head_at.get(b)
            if h is not None:
                feats.append(self.heads[h].features(state))
        return feats, bb.classify(state)

    def heads_from_features(self, feats: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Raw logits of each internal head (cascaded when ``cascade``)."""
        out: list[torch.Tensor] = []
        prev = None
        for head, f in zip(self.heads, feats):
            logits = head.classify(f, prev)
            out.append(logits)
            prev = logits
        return out

    def combine(self, head_logits: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Exit outputs of the internal heads (ensembled when an ensemble is present)."""
        if self.ensemble is None:
            return list(head_logits)
        log_probs = [F.log_softmax(z, dim=1) for z in head_logits]
        return [self.ensemble.combine(i, log_probs) for i in range(len(log_probs))]

    def exit_outputs(self, x: Any) -> list[torch.Tensor]:
        """Logits of every exit for every row (no exiting): internal exits then final.

        With a final ensemble the last entry is the ensembled final exit (what a
        row reaching the end gets below the full budget), not the backbone's output.
        """
        return self.outputs_from_features(*self.head_features(x))

    def outputs_from_features(
        self, feats: Sequence[torch.Tensor], final: torch.Tensor
    ) -> list[torch.Tensor]:
        """Every exit's output from the heads' reduced features and the backbone's logits."""
        internal = self.combine(self.heads_from_features(feats))
        return internal + [self.finish(internal, final)]

    def finish(self, exit_logits: Sequence[torch.Tensor], final: torch.Tensor) -> torch.Tensor:
        """The last exit's output from the internal exits' outputs and the backbone's."""
        if self.final_ensemble is None:
            return final
        lps = [F.log_softmax(z, dim=1) for z in exit_logits]
        return self.final_ensemble.combine([*lps, F.log_softmax(final, dim=1)])

    # -- real inference ----------------------------------------------------------
    def forward(self, x: Any) -> torch.Tensor:
        costs = self.stage_costs(x)
        bb = self.backbone
        n = batch_len(x)
        spent = torch.zeros(n, dtype=torch.float64)
        exit_at = torch.full((n,), self.num_internal, dtype=torch.long)
        use_heads = not self.at_full_budget()
        device = _device_of(x)
        active = torch.arange(n, device=device)  # rows (of this call) still running
        active_cpu = active.cpu()
        shrunk = False
        out: torch.Tensor | None = None
        prev: torch.Tensor | None = None
        log_probs: list[torch.Tensor] = []
        keep_exits = use_heads and self.final_ensemble is not None
        exit_lps: list[torch.Tensor] = []  # every exit's decision, for the final ensemble
        memory: policies.PatienceState | None = None
        # Every row still running has run the same stages, so one running sum is its
        # cost so far; it is written to a row when the row leaves (no per-block
        # tensor updates, which would dominate at batch size 1).
        cost_so_far = costs.embed

        def rows_ctx() -> contextlib.AbstractContextManager:
            return subset(active_cpu) if shrunk else contextlib.nullcontext()

        with rows_ctx():
            state = bb.embed(x)
        for b, block in enumerate(bb.blocks):
            with rows_ctx():
                state = block(state)
            cost_so_far += costs.blocks[b]
            h = self._head_at.get(b)
            if h is None or not use_heads:
                continue
            logits = self.heads[h](state, prev)
            cost_so_far += costs.heads[h] + costs.ensemble[h]
            prev = logits
            if self.ensemble is not None:
                log_probs.append(F.log_softmax(logits, dim=1))
                decision = self.ensemble.combine(h, log_probs)
            else:
                decision = logits
            decision_lp = F.log_softmax(decision, dim=1)
            if keep_exits:
                exit_lps.append(decision_lp)
            exits, memory = policies.exit_mask(self.policy, self.threshold, decision_lp, memory)
            if not bool(exits.any()):
                continue
            if bool(exits.all()):
                # Every remaining row leaves here (always so at batch size 1): no
                # masks, gathers or scatters, which cost a CPU as much as a small block.
                if out is None:
                    out = decision
                else:
                    out[active] = decision
                exit_at[active_cpu] = h
                spent[active_cpu] = cost_so_far
                active = active[:0]
                break
            if out is None:
                out = decision.new_empty((n, decision.shape[1]))
            out[active[exits]] = decision[exits]
            leaving = active_cpu[exits.cpu()]
            exit_at[leaving] = h
            spent[leaving] = cost_so_far
            keep = (~exits).nonzero().squeeze(1)
            active, active_cpu, shrunk = active[keep], active_cpu[keep.cpu()], True
            if active.numel() == 0:
                break
            state = select_rows(state, keep)
            prev = prev[keep]
            log_probs = [t[keep] for t in log_probs]
            exit_lps = [t[keep] for t in exit_lps]
            memory = memory.select(keep) if memory is not None else None
        if active.numel():
            with rows_ctx():
                final = bb.classify(state)
            spent[active_cpu] = cost_so_far + costs.classify
            if keep_exits:
                assert self.final_ensemble is not None
                final = self.final_ensemble.combine([*exit_lps, F.log_softmax(final, dim=1)])
                spent[active_cpu] += costs.final_ensemble
            if out is None:
                out = final  # nobody exited: exactly the backbone's output
            else:
                out[active] = final.to(out.dtype)
        charge(spent)
        record("exit_index", exit_at.to(torch.float64))
        assert out is not None
        return out


# -- construction ------------------------------------------------------------------
def parse_positions(positions: str | Sequence[int], num_blocks: int) -> list[int]:
    """Block indices (0-based, "after block i") that get an internal head.

    ``"every"``: every block but the last; ``"every:k"``: blocks k-1, 2k-1, ...;
    a list (or comma-separated string) of indices. The last block is followed
    by the backbone's own classifier, the final exit, so it takes no head.
    """
    last = num_blocks - 2
    if last < 0:
        raise UserError(f"the backbone has {num_blocks} block(s); early exits need at least 2")
    if isinstance(positions, str):
        spec = positions.strip().lower()
        if spec == "every":
            return list(range(num_blocks - 1))
        if spec.startswith("every:"):
            try:
                k = int(spec.split(":", 1)[1])
            except ValueError:
                k = 0
            if k < 1:
                raise UserError(f"bad positions {positions!r}; use every:K with an integer K >= 1")
            out = list(range(k - 1, num_blocks - 1, k))
            if not out:
                raise UserError(
                    f"positions {positions!r} place no head among {num_blocks} blocks; use a "
                    f"smaller K (at most {num_blocks - 1})"
                )
            return out
        try:
            items = [int(p) for p in spec.split(",") if p.strip()]
        except ValueError:
            raise UserError(
                f"bad positions {positions!r}; use 'every', 'every:K' or block indices like '2,5,8'"
            ) from None
    else:
        items = [int(p) for p in positions]
    if not items:
        raise UserError("no head positions given; use 'every', 'every:K' or a list of indices")
    bad = [p for p in items if not 0 <= p <= last]
    if bad:
        raise UserError(
            f"head positions {bad} out of range: this backbone has {num_blocks} blocks, so heads "
            f"go after blocks 0..{last} (the last block is followed by the final classifier)"
        )
    return sorted(set(items))


def _dict_probe(spec: dict[str, Sequence[Any]], device: torch.device) -> dict[str, torch.Tensor]:
    """A one-example dict input from ``{key: [dtype, *shape]}`` (masks all ones)."""
    out = {}
    for key, (dtype, *shape) in spec.items():
        make = torch.ones if "mask" in key else torch.zeros
        out[key] = make((1, *[int(s) for s in shape]),
                        dtype=torch.long if dtype == "long" else torch.float32, device=device)
    return out


def _dict_spec(example: dict[str, Any]) -> dict[str, list[Any]]:
    """``{key: [dtype, *shape]}`` of a dict input (recorded so checkpoints rebuild heads)."""
    spec = {}
    for key, value in example.items():
        if not isinstance(value, torch.Tensor):
            raise UserError(f"example input {key!r} is a {type(value).__name__}; dict inputs "
                            "must hold tensors")
        kind = "float" if value.is_floating_point() else "long"
        spec[key] = [kind, *[int(s) for s in value.shape[1:]]]
    return spec


def _example_input(model: nn.Module, shape: Sequence[int] | None, dtype: str | None) -> Any:
    """A one-example probe input, from the arguments or the model registry."""
    if shape is None:
        spec = getattr(model, "frugalnn_spec", None)
        if not spec:
            raise UserError(
                "cannot infer the backbone's input shape; pass example_input= (one batch) or "
                "input_shape=(C, H, W) to attach_heads"
            )
        from frugalnn.models import model_info

        info = model_info(spec["name"])
        shape = list(info.input_shape)
        kw = spec.get("kwargs", {})
        if "input_shape" in kw:
            shape = list(kw["input_shape"])
        elif kw.get("in_features"):
            shape = [int(kw["in_features"])]
        elif info.input_dtype == "float" and len(shape) == 3:
            shape[0] = kw.get("in_channels", shape[0])
            if "image_size" in kw:
                shape[1] = shape[2] = kw["image_size"]
        dtype = dtype or info.input_dtype
    if not shape:  # a model outside the registry that does not declare its input
        raise UserError("cannot infer the backbone's input shape; pass example_input= (one "
                        "batch) or input_shape= to attach_heads")
    device = next(model.parameters()).device
    if dtype == "long":
        probe = torch.zeros((1, *shape), dtype=torch.long, device=device)
        if len(shape) == 2 and shape[0] == 2:  # (ids, mask) layout: mark tokens as real
            probe[:, 1] = 1
        return probe
    return torch.zeros((1, *shape), device=device)


def attach_heads(
    model: nn.Module,
    positions: str | Sequence[int] = "every",
    head: str = "auto",
    *,
    cascade: bool = False,
    ensemble: bool = False,
    final_ensemble: bool = False,
    policy: str = "maxprob",
    pool_size: int = 4,
    input_shape: Sequence[int] | None = None,
    input_dtype: str | None = None,
    example_input: Any = None,
    input_dict: dict[str, Sequence[Any]] | None = None,
    exit_after: str | Sequence[str] | None = None,
) -> EarlyExitModel:
    """Wrap a model with internal classifiers at ``positions``.

    ``model`` is a :class:`StagedModel` or any classifier that
    :func:`frugalnn.models.adapters.staged.as_staged` can view as one
    (torchvision-style CNNs, ``nn.Sequential``, timm-style ViTs, Hugging Face
    BERT/ViT classifiers, or exit points named by ``exit_after``); the view
    shares the model's modules, so its weights are the backbone's. Heads are
    created fresh (untrained); the backbone's own classifier is the last exit.
    ``example_input`` (one batch) or ``input_shape``/``input_dtype`` (one
    example, no batch; read from the model registry when not given) or
    ``input_dict`` (``{key: [dtype, *shape]}`` for dict inputs) size the heads.
    """
    if isinstance(model, EarlyExitModel):
        raise UserError("this model already has early exits; attach heads to the plain backbone")
    from frugalnn.models.adapters.staged import as_staged, feature_kind_of

    original = model
    backbone = as_staged(model, exit_after)
    num_blocks = len(backbone.blocks)
    pos = parse_positions(positions, num_blocks)
    policies.check_policy(policy)
    if pool_size < 1:
        raise UserError(f"pool_size must be >= 1, got {pool_size}")
    device = next(backbone.parameters()).device
    if example_input is None:
        example_input = (_dict_probe(input_dict, device) if input_dict
                         else _example_input(original, input_shape, input_dtype))
    if input_shape is None and isinstance(example_input, torch.Tensor):
        # Recorded so that a checkpoint rebuilds the heads for the same input shape.
        input_shape = list(example_input.shape[1:])
        input_dtype = "long" if example_input.dtype == torch.long else "float"
    if input_dict is None and isinstance(example_input, dict):
        input_dict = _dict_spec(example_input)
    was_training = backbone.training
    backbone.eval()
    with torch.no_grad():
        state = backbone.embed(select_rows(example_input, torch.arange(1, device=device)))
        shapes: dict[int, tuple[int, ...]] = {}
        for b, block in enumerate(backbone.blocks):
            state = block(state)
            if b in pos:
                if backbone is not original:  # a view: states must suit a head
                    kind_here = feature_kind_of(state)
                    if backbone.feature_kind is None:  # a traced view: the state tells
                        backbone.feature_kind = kind_here
                shapes[b] = tuple(hidden_of(state).shape[1:])
        logits = backbone.classify(state)
    backbone.train(was_training)
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        raise UserError(f"{type(original).__name__} returns {_describe(logits)}; early exits "
                        "need a classifier returning (batch, classes) logits")
    num_classes = int(logits.shape[-1])
    kind = resolve_head_kind(head, backbone)
    heads = nn.ModuleList()
    for i, b in enumerate(pos):
        shp = shapes[b]
        if kind == "pool":
            if len(shp) != 3:
                raise UserError(f"block {b} gives shape {shp}; image heads need (C, H, W) states")
            channels, spatial = shp[0], min(shp[1], shp[2])
        else:
            spatial = None
            channels = int(torch.Size(shp).numel()) if kind == "linear" else shp[-1]
        heads.append(
            ExitHead(
                kind, channels, num_classes, pool_size=pool_size, spatial=spatial,
                cascade_in=num_classes if cascade and i > 0 else 0,
            )
        )
    ee = EarlyExitModel(
        backbone, pos, heads.to(device), policy=policy, cascade=cascade, ensemble=ensemble,
        final_ensemble=final_ensemble, num_classes=num_classes,
    ).to(device)
    ee.train(was_training)
    ee.frugalnn_spec = getattr(original, "frugalnn_spec", None)
    ee.frugalnn_transforms = list(getattr(original, "frugalnn_transforms", []))
    args: dict[str, Any] = {
        "positions": pos, "head": kind, "cascade": cascade, "ensemble": ensemble,
        "final_ensemble": final_ensemble, "policy": policy, "pool_size": pool_size,
    }
    if getattr(backbone, "exit_after", None) is not None:
        args["exit_after"] = backbone.exit_after  # rebuilds the same staged view
    if input_dict is not None:
        args["input_dict"] = {k: list(v) for k, v in input_dict.items()}
    elif input_shape is not None:
        args["input_shape"] = [int(s) for s in input_shape]
        args["input_dtype"] = input_dtype or "float"
    record_transform(ee, TRANSFORM_NAME, args)
    return ee


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    return f"a {type(value).__name__}"


@register_transform(TRANSFORM_NAME)
def _rebuild(model: nn.Module, **args: Any) -> EarlyExitModel:
    """Rebuild the structure recorded by :func:`attach_heads` (weights load afterwards)."""
    return attach_heads(model, **args)
