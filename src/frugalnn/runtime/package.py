"""An export directory and the runner that drives it.

Layout of an export directory::

    OUT/manifest.json   format, kind ("static" or a method's plugin name), graph files,
                        input shape and dtype, ``inputs`` (each graph input's name,
                        per-example shape, ``null`` on a dynamic axis, and dtype; the
                        keys of a dict input, see :mod:`frugalnn.runtime.inputs`),
                        the method's loop settings, budget values;
                        ``int8`` for a QDQ int8 graph (scheme, calibration, sizes;
                        see :mod:`frugalnn.runtime.int8`)
    OUT/<graph files>   model.onnx for a static model; segments/heads/experts for a method
    OUT/check.json      the numerical check against the PyTorch model on real data

A *runner* is what runs an export: ``runner(x) -> logits`` plus the budget
knob (``budget_name``, ``budget_values()``, ``full_budget()``,
``set_budget(v)``), so an exported input-dependent model keeps its knob. A
static model's runner calls its one graph. An input-dependent model's runner
comes from its method's exporter, ``<plugin package>.export`` (see
:data:`frugalnn.plugins.PLUGINS`, part ``export``), which this module finds by
name and never imports directly. Such a module provides::

    KIND: str                                      # the plugin name, written as the kind
    claims(model) -> bool                          # is this model one of mine?
    export_parts(model, example, fmt, out_dir, opset, *, layout="auto") -> dict
        # writes the graph files into out_dir; returns {"graphs": {name: file}, "loop": {...}}
    load_runner(manifest, graphs) -> runner        # graphs: {name: callable on a runtime}
    DICT_INPUTS: bool (optional)                   # export_parts takes a dict of tensors
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from frugalnn.errors import UserError
from frugalnn.plugins import PLUGINS, import_optional
from frugalnn.runtime.graphs import RUNTIMES_OF, OrtGraph, load_graph
from frugalnn.runtime.inputs import TENSOR_INPUT, ordered

__all__ = [
    "CHECK",
    "MANIFEST",
    "DictInputRunner",
    "StaticRunner",
    "exporter_for",
    "input_names_of",
    "load_exported",
    "method_exporters",
    "read_manifest",
]

MANIFEST = "manifest.json"
CHECK = "check.json"
FORMAT_TAG = "frugalnn-export"


def method_exporters() -> list[ModuleType]:
    """Every plugin's export module (those whose plugin declares ``export``)."""
    out = []
    for plugin in PLUGINS:
        if getattr(plugin, "export", False):
            module = import_optional(f"{plugin.package}.export")
            if module is not None:
                out.append(module)
    return out


def exporter_for(model: Any) -> ModuleType | None:
    """The method exporter that claims ``model``; ``None`` for a static model.

    A model holding an input-dependent module that no exporter claims is refused.
    """
    from frugalnn.cost.ledger import DynamicModule

    for module in method_exporters():
        if module.claims(model):
            return module
    dynamic = [(n, m) for n, m in model.named_modules() if isinstance(m, DynamicModule)]
    if dynamic:
        name, module = dynamic[0]
        kinds = ", ".join(m.KIND for m in method_exporters()) or "none"
        raise UserError(
            f"no exporter for the input-dependent layer {name or '(the model)'!r} "
            f"({type(module).__name__}); exportable input-dependent methods: {kinds}")
    return None


def _kind_module(kind: str) -> ModuleType:
    for module in method_exporters():
        if kind == module.KIND:
            return module
    raise UserError(f"this export needs the {kind!r} method's exporter, which is not available")


class StaticRunner:
    """A static model's one graph, with the (trivial) budget knob of a static model.

    ``input_names``: the graph's inputs (:mod:`frugalnn.runtime.inputs`); a model exported
    on a dict of tensors is called with such a dict, fed by name.
    """

    budget_name = "none"

    def __init__(self, graph: Callable[..., Any], input_names: list[str] | None = None) -> None:
        self.graph = graph
        self.input_names = list(input_names or [TENSOR_INPUT])

    def __call__(self, x: Any) -> Any:
        if not isinstance(x, dict) and self.input_names == [TENSOR_INPUT]:
            return self.graph(x)
        args = ordered(x, self.input_names)
        if isinstance(self.graph, OrtGraph):  # by name: a graph may not read every input
            return self.graph(dict(zip(self.input_names, args)))
        return self.graph(*args)

    def budget_values(self) -> list[float]:
        return []

    def full_budget(self) -> float | None:
        return None

    def set_budget(self, value: float) -> None:
        raise UserError("a static exported model has no budget knob")


class DictInputRunner:
    """An input-dependent export made on the one tensor of a single-key dict input
    (``{"pixel_values": x}``): takes the dict or the tensor; the rest is the runner's."""

    def __init__(self, runner: Any, key: str) -> None:
        self.runner = runner
        self.key = key

    def __call__(self, x: Any) -> Any:
        if isinstance(x, dict):
            x = ordered(x, [self.key])[0]
        return self.runner(x)

    def __getattr__(self, name: str) -> Any:  # the knob and the runner's own state
        return getattr(self.runner, name)


def input_names_of(manifest: dict[str, Any]) -> list[str]:
    """The graph input names a manifest records (``["input"]`` for older exports)."""
    return [str(i["name"]) for i in manifest.get("inputs") or []] or [TENSOR_INPUT]


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The manifest of an export directory (one-line error if it is not one)."""
    file = Path(path) / MANIFEST
    try:
        manifest = json.loads(file.read_text())
    except (OSError, json.JSONDecodeError):
        raise UserError(f"{path} is not a frugalnn export (no readable {MANIFEST}); "
                        "create it with `frugalnn export`") from None
    if manifest.get("format_tag") != FORMAT_TAG:
        raise UserError(f"{file} is not a frugalnn export manifest")
    return manifest


def load_exported(path: str | Path, *, runtime: str | None = None, device: str = "cpu",
                  threads: int | None = None) -> Any:
    """The runner of an export directory, its graphs loaded on ``runtime``."""
    path = Path(path)
    manifest = read_manifest(path)
    fmt = manifest["format"]
    if runtime is not None and runtime not in RUNTIMES_OF[fmt]:
        raise UserError(f"a {fmt} export runs on {', '.join(RUNTIMES_OF[fmt])}, not {runtime!r}")
    graphs = {name: load_graph(path / file, runtime, device=device, threads=threads)
              for name, file in manifest["graphs"].items()}
    if manifest["kind"] == "static":
        return StaticRunner(graphs["model"], input_names_of(manifest))
    runner = _kind_module(manifest["kind"]).load_runner(manifest, graphs)
    key = manifest.get("input_key")
    return DictInputRunner(runner, str(key)) if key else runner
