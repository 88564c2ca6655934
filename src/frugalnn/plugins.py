"""The one list of method packages.

Each entry names a package under ``frugalnn.methods``. A plugin package may
provide, by convention:

- ``<package>.commands`` with ``register(subparsers)``: its CLI subcommands;
- ``<package>.demo`` with ``run_demo(ctx)``: its turn in ``frugalnn demo``;
- transformations registered with ``@register_transform`` in the submodules
  named by :attr:`Plugin.transforms` (imported when a checkpoint names a
  transformation not registered yet, so it can be rebuilt);
- extra registry models (``@register_model``) in the submodule named by
  :attr:`Plugin.models`.

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


#: Method packages in report order (the demo runs their hooks in this order).
PLUGINS: tuple[Plugin, ...] = (
    Plugin("early_exit", "frugalnn.methods.early_exit", transforms=("model",)),
    Plugin("moe", "frugalnn.methods.moe", transforms=("sparsify", "convert")),
    Plugin("lowrank", "frugalnn.methods.lowrank", transforms=("compress", "nmf")),
    Plugin("nas", "frugalnn.methods.nas", models="net"),
    Plugin("acm", "frugalnn.methods.acm", transforms=("convert",)),
    Plugin("quant", "frugalnn.methods.quant", commands=False, demo=False),
    Plugin("binary", "frugalnn.methods.binary", commands=False, demo=False),
    Plugin("prune", "frugalnn.methods.prune", commands=False, demo=False),
    Plugin("text", "frugalnn.methods.text", commands=False, demo=False),
)


def plugin_modules(part: str) -> list[str]:
    """Module names of one conventional part (``"commands"``, ``"demo"``, ``"models"``,
    ``"transforms"``) for every plugin that provides it."""
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
