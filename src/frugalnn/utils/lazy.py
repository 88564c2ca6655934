"""Lazy package attributes (PEP 562): a package lists its public names and the
submodule of each, and imports that submodule only when the name is first used.

This keeps ``import frugalnn`` and ``frugalnn --help`` free of torch.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_attributes"]


def lazy_attributes(
    package: str, table: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``: ``table`` maps each public name to
    the module that defines it (absolute, or relative to ``package`` when it starts
    with a dot). Assign the pair at module level::

        __getattr__, __dir__ = lazy_attributes(__name__, {"Model": ".model"})
    """
    namespace = importlib.import_module(package).__dict__

    def __getattr__(name: str) -> Any:  # noqa: N807 (module-level protocol name)
        try:
            module = table[name]
        except KeyError:
            raise AttributeError(f"module {package!r} has no attribute {name!r}") from None
        value = getattr(importlib.import_module(module, package), name)
        namespace[name] = value  # later lookups skip this function
        return value

    def __dir__() -> list[str]:  # noqa: N807
        return sorted(set(namespace) | set(table))

    return __getattr__, __dir__
