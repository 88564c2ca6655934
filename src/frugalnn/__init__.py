"""frugalnn: make neural networks cheaper to run, and measure exactly how much cheaper.

The public API, imported lazily (``import frugalnn`` loads no torch until a
name below is used)::

    import frugalnn

    model = frugalnn.create_model("resnet20", num_classes=10)
    report = frugalnn.measure(model, torch.randn(1, 3, 32, 32))   # params, FLOPs, MACs
    splits = frugalnn.load_splits("digits")                      # train / val / test
    cheaper = frugalnn.lowrank(model, frugalnn.LowRankConfig(method="tt", target="flops=2"))
    records = frugalnn.evaluate_into(cheaper, splits.test, "runs/lr", val_dataset=splits.val)
    frugalnn.write_report(["runs/lr"], "runs/lr/report")

Each method has one entry point and one config object (``early_exit`` /
``EarlyExitConfig``, ``moe`` / ``MoEConfig``, ``acm`` / ``ACMConfig``,
``lowrank`` / ``LowRankConfig``, ``nas`` / ``NASConfig``); their recipes live in
``frugalnn.methods.<method>.recipe`` and are what the CLI, the demo and the
benchmarks call.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.2.0"

#: Public name -> (module, attribute). Resolved on first use (PEP 562).
_PUBLIC: dict[str, tuple[str, str]] = {
    # errors
    "UserError": ("frugalnn.errors", "UserError"),
    # models and checkpoints
    "create_model": ("frugalnn.models.registry", "create_model"),
    "list_models": ("frugalnn.models.registry", "list_models"),
    "register_model": ("frugalnn.models.registry", "register_model"),
    "load": ("frugalnn.train.checkpoint", "load_model"),
    "save": ("frugalnn.train.checkpoint", "save_checkpoint"),
    # your model: what each method needs, found inside any nn.Module
    "find_ffn_sites": ("frugalnn.models.adapters.ffn", "find_ffn_sites"),
    "as_staged": ("frugalnn.models.adapters.staged", "as_staged"),
    # data
    "get_dataset": ("frugalnn.data.catalog", "get_dataset"),
    "load_splits": ("frugalnn.data.splits", "load_splits"),
    "Splits": ("frugalnn.data.splits", "Splits"),
    # cost
    "measure": ("frugalnn.cost.count", "measure"),
    "profile": ("frugalnn.cost.profile", "profile_model"),
    "measure_latency": ("frugalnn.cost.latency", "measure_latency"),
    "measure_onnx": ("frugalnn.runtime.onnx_cost", "measure_onnx"),
    "UncountedOpWarning": ("frugalnn.cost.count", "UncountedOpWarning"),
    # training
    "fit": ("frugalnn.train.loop", "fit"),
    # evaluation and reports
    "evaluate": ("frugalnn.evaluation.loop", "evaluate"),
    "evaluate_into": ("frugalnn.evaluation.run", "evaluate_into"),
    "time_budgets": ("frugalnn.evaluation.timing", "time_budgets"),
    "load_records": ("frugalnn.evaluation.records", "load_records"),
    "write_report": ("frugalnn.report.build", "write_report"),
    # where it will run: export, checked against PyTorch, and runtimes
    "export": ("frugalnn.runtime.export", "export"),
    "ExportConfig": ("frugalnn.runtime.export", "ExportConfig"),
    "load_exported": ("frugalnn.runtime.package", "load_exported"),
    # methods: one entry point and one config per method
    "early_exit": ("frugalnn.methods.early_exit.recipe", "early_exit"),
    "EarlyExitConfig": ("frugalnn.methods.early_exit.recipe", "EarlyExitConfig"),
    "moe": ("frugalnn.methods.moe.recipe", "moe"),
    "MoEConfig": ("frugalnn.methods.moe.recipe", "MoEConfig"),
    "acm": ("frugalnn.methods.acm.recipe", "acm"),
    "ACMConfig": ("frugalnn.methods.acm.recipe", "ACMConfig"),
    "lowrank": ("frugalnn.methods.lowrank.recipe", "lowrank"),
    "LowRankConfig": ("frugalnn.methods.lowrank.recipe", "LowRankConfig"),
    "nas": ("frugalnn.methods.nas.recipe", "nas"),
    "NASConfig": ("frugalnn.methods.nas.recipe", "NASConfig"),
    "quantize": ("frugalnn.methods.quant.recipe", "quantize"),
    "QuantConfig": ("frugalnn.methods.quant.recipe", "QuantConfig"),
    "binarize": ("frugalnn.methods.binary.recipe", "binarize"),
    "BinaryConfig": ("frugalnn.methods.binary.recipe", "BinaryConfig"),
    "prune": ("frugalnn.methods.prune.recipe", "prune"),
    "PruneConfig": ("frugalnn.methods.prune.recipe", "PruneConfig"),
    "ngram": ("frugalnn.methods.text.recipe", "ngram"),
    "NgramConfig": ("frugalnn.methods.text.recipe", "NgramConfig"),
}

__all__ = ["__version__", *sorted(_PUBLIC)]


def __getattr__(name: str) -> Any:
    try:
        module, attr = _PUBLIC[name]
    except KeyError:
        raise AttributeError(f"module 'frugalnn' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
