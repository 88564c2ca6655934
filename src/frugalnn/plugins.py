"""The one list of method packages.

Each entry names a package under ``frugalnn.methods``. A plugin package may
provide, by convention:

- ``<package>.commands`` with ``register(subparsers)``: its CLI subcommands;
- ``<package>.demo`` with ``run_demo(ctx)``: its turn in ``frugalnn demo``;
- transformations registered with ``@register_transform`` in the submodules
  named by :attr:`Plugin.transforms` (imported when a checkpoint names a
  transformation not registered yet, so it can be rebuilt);
- extra registry models (``@register_model``) in the submodule named by
  :attr:`Plugin.models`;
- ``<package>.export`` (when :attr:`Plugin.export`): how ``frugalnn.runtime`` exports
  the method's input-dependent model and the loop that runs the export.

Nothing else in frugalnn lists method packages: the CLI, the demo, the model
registry and the transformation registry all read :data:`PLUGINS`. Adding a
method is one entry here. Entries are module names (strings), so importing this
file imports no method. Naming the submodules (rather than relying on the
package's ``__init__``) lets a method package keep its ``__init__`` free of
torch, so that building the command line stays fast.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType

__all__ = ["PLUGINS", "Plugin", "import_optional", "plugin_modules"]


@dataclass(frozen=True)
class Plugin:
    """A method package and which of the conventional parts it provides."""

    name: str
    package: str
    commands: bool = True
    demo: bool = True
    models: str = ""  # submodule that registers extra models, if any
    transforms: tuple[str, ...] = ()  # submodules that register transformations
    export: bool = False  # ``<package>.export``: its exporter for frugalnn.runtime


#: Method packages in report order (the demo runs their hooks in this order).
PLUGINS: tuple[Plugin, ...] = (
    Plugin("early_exit", "frugalnn.methods.early_exit", transforms=("model",), export=True),
    Plugin("moe", "frugalnn.methods.moe", transforms=("sparsify", "convert"), export=True),
    Plugin("lowrank", "frugalnn.methods.lowrank", transforms=("compress", "nmf")),
    Plugin("nas", "frugalnn.methods.nas", models="net"),
    Plugin("acm", "frugalnn.methods.acm", transforms=("convert",), export=True),
    Plugin("quant", "frugalnn.methods.quant", transforms=("convert",)),
    Plugin("binary", "frugalnn.methods.binary", transforms=("convert",)),
    Plugin("prune", "frugalnn.methods.prune", transforms=("structure",)),
    Plugin("text", "frugalnn.methods.text"),
)


def plugin_modules(part: str) -> list[str]:
    """Module names of one conventional part (``"commands"``, ``"demo"``, ``"export"``,
    ``"models"``, ``"transforms"``) for every plugin that provides it."""
    if part == "transforms":
        return [f"{p.package}.{sub}" for p in PLUGINS for sub in p.transforms]
    if part == "models":
        return [f"{p.package}.{p.models}" for p in PLUGINS if p.models]
    return [f"{p.package}.{part}" for p in PLUGINS if getattr(p, part)]


def import_optional(name: str) -> ModuleType | None:
    """Import ``name``; ``None`` if that module does not exist (a real import error raises)."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and name.startswith(exc.name):
            return None
        raise
