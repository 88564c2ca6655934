"""Activation sparsity: how many intermediate activations are zero, and where.

Mixture-of-experts conversion (and any sparse kernel) pays off only when
activations are sparse, so this module answers, per activation layer of any
model: the fraction of exact zeros and of near-zeros (``|a| < eps``), how that
fraction is distributed over examples and over tokens (for images: spatial
positions), and how many neurons (channels) are dead (never non-zero) or always
active (never zero).

Activations are found without model-specific code: a
:class:`~torch.overrides.TorchFunctionMode` intercepts every call of an
elementwise activation function (``relu``, ``gelu``, ``silu``, ...), whether it
comes from an ``nn.ReLU`` module or a functional ``F.relu`` inside a block,
and names it after the module that made the call (module hooks keep a stack
of the running modules). For models that expose FFN sites (transformers), only
the FFN activations are kept by default, labelled by their site name.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from frugalnn.errors import UserError
from frugalnn.utils.batch import batch_len, call_model, to_device

__all__ = ["LayerSparsity", "SparsityReport", "activation_sparsity"]

_ACTIVATIONS: dict[Any, str] = {
    F.relu: "relu",
    torch.relu: "relu",
    torch.relu_: "relu",
    torch.Tensor.relu: "relu",
    F.relu6: "relu6",
    F.gelu: "gelu",
    F.silu: "silu",
    F.leaky_relu: "leaky_relu",
    F.elu: "elu",
    F.hardswish: "hardswish",
}
_MAX_SAMPLES = 200_000  # per-token fractions kept per layer (for histograms)


@dataclass
class LayerSparsity:
    """Accumulated statistics of one activation layer."""

    name: str
    kind: str
    numel: int = 0
    zeros: int = 0
    near_zeros: int = 0
    per_example: list[np.ndarray] = field(default_factory=list)
    per_token: list[np.ndarray] = field(default_factory=list)
    fired: torch.Tensor | None = None  # per neuron: positions with a != 0
    fired_eps: torch.Tensor | None = None  # per neuron: positions with |a| >= eps
    positions: int = 0  # per neuron: positions seen
    _tokens_kept: int = 0

    def update(self, a: torch.Tensor, eps: float) -> None:
        a = a.detach()
        if a.dim() < 2:
            return
        zero = a == 0
        near = a.abs() < eps
        self.numel += a.numel()
        self.zeros += int(zero.sum())
        self.near_zeros += int(near.sum())
        self.per_example.append(zero.flatten(1).float().mean(1).cpu().numpy())
        # Neuron axis: channels of images (dim 1), last dim of token/feature tensors.
        neuron_dim = 1 if a.dim() == 4 else a.dim() - 1
        nz = (~zero).movedim(neuron_dim, -1).reshape(-1, a.shape[neuron_dim])
        nz_eps = (~near).movedim(neuron_dim, -1).reshape(-1, a.shape[neuron_dim])
        if a.dim() >= 3 and self._tokens_kept < _MAX_SAMPLES:
            tok = zero.movedim(neuron_dim, -1).reshape(-1, a.shape[neuron_dim]).float().mean(1)
            tok = tok[: _MAX_SAMPLES - self._tokens_kept]
            self.per_token.append(tok.cpu().numpy())
            self._tokens_kept += tok.numel()
        fired = nz.sum(0).cpu().long()
        fired_eps = nz_eps.sum(0).cpu().long()
        if self.fired is None or self.fired.shape != fired.shape:
            self.fired, self.fired_eps = fired, fired_eps
        else:
            self.fired += fired
            self.fired_eps += fired_eps
        self.positions += nz.shape[0]

    # -- summaries -------------------------------------------------------------------
    @property
    def zero_fraction(self) -> float:
        return self.zeros / self.numel if self.numel else float("nan")

    @property
    def near_zero_fraction(self) -> float:
        return self.near_zeros / self.numel if self.numel else float("nan")

    def example_fractions(self) -> np.ndarray:
        return np.concatenate(self.per_example) if self.per_example else np.zeros(0)

    def token_fractions(self) -> np.ndarray:
        return np.concatenate(self.per_token) if self.per_token else np.zeros(0)

    def fire_rate(self) -> np.ndarray:
        if self.fired is None or not self.positions:
            return np.zeros(0)
        return (self.fired.double() / self.positions).numpy()

    def summary(self) -> dict[str, Any]:
        ex = self.example_fractions()
        tok = self.token_fractions()
        neurons = 0 if self.fired is None else int(self.fired.numel())
        return {
            "layer": self.name,
            "activation": self.kind,
            "values": self.numel,
            "zero_fraction": self.zero_fraction,
            "near_zero_fraction": self.near_zero_fraction,
            "example_zero_fraction": _quantiles(ex),
            "token_zero_fraction": _quantiles(tok) if tok.size else None,
            "neurons": neurons,
            "dead": int((self.fired == 0).sum()) if neurons else 0,
            "dead_eps": int((self.fired_eps == 0).sum()) if neurons else 0,
            "always_active": int((self.fired == self.positions).sum()) if neurons else 0,
        }


def _quantiles(v: np.ndarray) -> dict[str, float]:
    if not v.size:
        return {}
    q = np.quantile(v, [0.0, 0.1, 0.5, 0.9, 1.0])
    return {
        "mean": float(v.mean()), "min": float(q[0]), "p10": float(q[1]), "median": float(q[2]),
        "p90": float(q[3]), "max": float(q[4]),
    }


@dataclass
class SparsityReport:
    """Per-layer sparsity of a model over a data set; ``save`` writes table, JSON and plots."""

    layers: list[LayerSparsity]
    eps: float
    examples: int
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        total = sum(layer.numel for layer in self.layers)
        zeros = sum(layer.zeros for layer in self.layers)
        near = sum(layer.near_zeros for layer in self.layers)
        return {
            **self.meta,
            "eps": self.eps,
            "examples": self.examples,
            "overall_zero_fraction": zeros / total if total else float("nan"),
            "overall_near_zero_fraction": near / total if total else float("nan"),
            "layers": [layer.summary() for layer in self.layers],
        }

    def table(self) -> str:
        """Markdown table, one row per layer."""
        lines = [
            f"| layer | act | zeros % | abs<{self.eps:g} % | per-example zeros % "
            "(p10 / median / p90) | per-token zeros % (p10 / p90) | neurons | dead | "
            "dead (eps) | always active |",
            "|---|---|---:|---:|---|---|---:|---:|---:|---:|",
        ]
        for s in (layer.summary() for layer in self.layers):
            ex, tok = s["example_zero_fraction"], s["token_zero_fraction"]
            ex_s = f"{100 * ex['p10']:.1f} / {100 * ex['median']:.1f} / {100 * ex['p90']:.1f}"
            tok_s = f"{100 * tok['p10']:.1f} / {100 * tok['p90']:.1f}" if tok else "-"
            lines.append(
                f"| {s['layer']} | {s['activation']} | {100 * s['zero_fraction']:.1f} | "
                f"{100 * s['near_zero_fraction']:.1f} | {ex_s} | {tok_s} | {s['neurons']} | "
                f"{s['dead']} | {s['dead_eps']} | {s['always_active']} |"
            )
        d = self.to_dict()
        lines.append("")
        lines.append(
            f"Overall: {100 * d['overall_zero_fraction']:.1f} % exact zeros, "
            f"{100 * d['overall_near_zero_fraction']:.1f} % with |a| < {self.eps:g}, over "
            f"{self.examples} examples."
        )
        return "\n".join(lines) + "\n"

    def save(self, out_dir: str | Path) -> list[Path]:
        """Write ``sparsity.json``, ``sparsity.md`` and PNG plots into ``out_dir``."""
        from frugalnn.utils.io import write_json_atomic, write_text_atomic

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        files = [
            write_json_atomic(out / "sparsity.json", self.to_dict()),
            write_text_atomic(out / "sparsity.md", "# Activation sparsity\n\n" + self.table()),
        ]
        files += self.plot(out)
        return files

    def plot(self, out: Path) -> list[Path]:
        """Bar chart of zero fractions, histograms over examples/tokens and neuron fire rates."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        names = [layer.name for layer in self.layers]
        paths = []
        fig, ax = plt.subplots(figsize=(max(5, 0.5 * len(names) + 2), 3.5))
        xs = np.arange(len(names))
        ax.bar(xs - 0.2, [100 * layer.zero_fraction for layer in self.layers], 0.4, label="a == 0")
        ax.bar(xs + 0.2, [100 * layer.near_zero_fraction for layer in self.layers], 0.4,
               label=f"|a| < {self.eps:g}")
        ax.set_xticks(xs, names, rotation=60, ha="right", fontsize=7)
        ax.set_ylabel("% of activations")
        ax.set_ylim(0, 100)
        ax.legend(fontsize=8)
        ax.set_title("Activation sparsity per layer")
        paths.append(_savefig(fig, out / "sparsity_per_layer.png"))

        for what, getter, xlabel in (
            ("examples", LayerSparsity.example_fractions, "fraction of zeros in one example"),
            ("tokens", LayerSparsity.token_fractions, "fraction of zeros in one token/position"),
            ("neurons", LayerSparsity.fire_rate, "fraction of positions where the neuron fires"),
        ):
            data = [(layer.name, getter(layer)) for layer in self.layers]
            data = [(n, v) for n, v in data if v.size]
            if not data:
                continue
            cols = min(4, len(data))
            rows = math.ceil(len(data) / cols)
            fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 2.2 * rows), squeeze=False)
            for ax, (name, v) in zip(axes.flat, data):
                ax.hist(v, bins=40, range=(0, 1), color="tab:blue")
                ax.set_title(name, fontsize=7)
                ax.tick_params(labelsize=6)
            for ax in list(axes.flat)[len(data):]:
                ax.axis("off")
            fig.supxlabel(xlabel, fontsize=8)
            fig.suptitle(f"Distribution over {what}", fontsize=9)
            paths.append(_savefig(fig, out / f"sparsity_{what}.png"))
        return paths


def _savefig(fig: Any, path: Path) -> Path:
    import os
    import tempfile

    import matplotlib.pyplot as plt

    fig.tight_layout()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=110)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        Path(tmp).unlink(missing_ok=True)
    return path


def _relu6_bounds(args: tuple, kwargs: dict[str, Any]) -> bool:
    """Whether an ``F.hardtanh`` call clamps to ``[0, 6]`` (a ReLU6)."""
    low = args[1] if len(args) > 1 else kwargs.get("min_val", -1.0)
    high = args[2] if len(args) > 2 else kwargs.get("max_val", 1.0)
    return float(low) == 0.0 and float(high) == 6.0


class _Capture(TorchFunctionMode):
    """Sends the output of every activation call to a callback with the calling module."""

    def __init__(self, stack: list[str], callback: Any) -> None:
        super().__init__()
        self.stack = stack
        self.callback = callback

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        out = func(*args, **(kwargs or {}))
        kind = _ACTIVATIONS.get(func)
        if func is F.hardtanh and _relu6_bounds(args, kwargs or {}):
            kind = "relu6"  # nn.ReLU6 runs F.hardtanh(x, 0, 6)
        if kind is not None and isinstance(out, torch.Tensor):
            self.callback(self.stack[-1] if self.stack else "", kind, out)
        return out


def _inputs(loader: Iterable[Any], device: str | torch.device, max_batches: int | None):
    """Model inputs of the first ``max_batches`` batches: ``x`` of ``(x, y)`` batches, a
    dict batch without its ``"labels"`` (Hugging Face style), or the batch itself."""
    for i, batch in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            return
        if isinstance(batch, (list, tuple)):
            batch = batch[0]
        elif isinstance(batch, dict):
            batch = {k: v for k, v in batch.items() if k != "labels"}
        yield to_device(batch, device)


def activation_sparsity(
    model: nn.Module,
    loader: Iterable[Any],
    *,
    eps: float = 1e-3,
    max_batches: int | None = None,
    device: str | torch.device = "cpu",
    only_ffn: bool | None = None,
    meta: dict[str, Any] | None = None,
    ffn_pattern: str | None = None,
) -> SparsityReport:
    """Measure activation sparsity of ``model`` on the inputs of ``loader``.

    ``only_ffn`` (default: when the model has FFN sites) keeps only the FFN
    hidden activations of transformers; otherwise every activation call is a
    layer (e.g. both ReLUs of a ResNet basic block). FFN sites are found by
    :func:`frugalnn.models.adapters.ffn.find_ffn_sites` (``ffn_pattern`` names
    them in a model it does not recognise); for a gated FFN the activation
    measured is ``act(gate(x))``. Dict inputs reach Hugging Face models as
    keyword arguments.
    """
    from frugalnn.models.adapters.ffn import find_ffn_sites

    if eps < 0:
        raise UserError(f"eps must be >= 0, got {eps}")
    sites = find_ffn_sites(model, ffn_pattern, required=bool(ffn_pattern))
    if only_ffn is None:
        only_ffn = bool(sites)
    names = {id(m): n for n, m in model.named_modules()}
    site_of_act = {names.get(id(s.act)): s.name for s in sites}
    if only_ffn and not sites:
        raise UserError("the model has no FFN sites; run without --only-ffn")
    stack: list[str] = []
    layers: dict[str, LayerSparsity] = {}
    calls: dict[str, int] = {}

    def on_activation(module_name: str, kind: str, out: torch.Tensor) -> None:
        if only_ffn:
            if module_name not in site_of_act:
                return
            label = site_of_act[module_name]
        else:
            key = f"{module_name or 'model'}:{kind}"
            calls[key] = calls.get(key, 0) + 1
            label = key if calls[key] == 1 else f"{key}#{calls[key]}"
        if label not in layers:
            layers[label] = LayerSparsity(label, kind)
        layers[label].update(out, eps)

    def pre(mod: nn.Module, _args: Any) -> None:
        stack.append(names[id(mod)])

    def post(_mod: nn.Module, _args: Any, _out: Any) -> None:
        stack.pop()

    handles = []
    for m in model.modules():
        handles.append(m.register_forward_pre_hook(pre))
        handles.append(m.register_forward_hook(post))
    examples = 0
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for x in _inputs(loader, device, max_batches):
                calls.clear()
                stack.clear()
                with _Capture(stack, on_activation):
                    call_model(model, x)
                examples += batch_len(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if not layers:
        raise UserError(
            "no activation functions were called by this model (relu, gelu, silu, ...); "
            "nothing to analyse"
        )
    return SparsityReport(list(layers.values()), eps, examples, dict(meta or {}))


def load_report_summary(path: str | Path) -> dict[str, Any]:
    """The ``sparsity.json`` written by :meth:`SparsityReport.save`."""
    return json.loads(Path(path).read_text())
