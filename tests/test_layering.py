"""Layers only point down: every import under ``src/frugalnn`` checked with ``ast``.

All imports count, including those inside functions (an import deferred for
speed is still a dependency). The rules:

* foundations (errors, utils, plugins, budget, transforms, data, models, cost,
  train, evaluation, in that order) never import a method, the CLI, the demo,
  the report or the analysis, and each imports only the foundations before it;
* the runtime layer (export, runtimes) sits above evaluation: it never imports a
  method, the CLI, the demo, the analysis or the report (it reaches a method's
  exporter through ``plugins`` by name); methods may import it;
* analysis and report never import a method, the CLI or the demo, and the
  analysis never imports the report (the report draws what the analysis computes);
* a method package never imports another method package;
* only the CLI layer (``frugalnn.cli``, ``frugalnn.demo`` and the methods'
  ``commands`` / ``demo`` hooks) imports ``frugalnn.cli``.

``frugalnn.models.zoo`` reads :data:`frugalnn.plugins.PLUGINS` by name (a
string, not an import), which these rules allow.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from frugalnn.plugins import PLUGINS, plugin_modules

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "frugalnn"

#: The foundations, lowest first: each imports only those before it (and itself).
FOUNDATIONS = ("errors", "utils", "plugins", "budget", "transforms", "data", "models", "cost",
               "train", "evaluation")
ABOVE_FOUNDATIONS = ("runtime", "methods", "cli", "demo", "report", "analysis")

#: Known violations in modules still being rewritten: (importer, imported).
#: Empty it as they are fixed; any violation not listed here fails the test.
ALLOWED: frozenset[tuple[str, str]] = frozenset()


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def _imports(path: Path) -> Iterator[str]:
    """Every ``frugalnn`` module ``path`` imports, anywhere in the file, as a dotted name
    (``from frugalnn.x import y`` yields ``frugalnn.x.y``: ``y`` may be a submodule)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    here = _module_name(path).split(".")
    package = here if _is_package(path) else here[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            yield module
            for alias in node.names:
                if alias.name != "*":
                    yield f"{module}.{alias.name}"
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr == "import_module" and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            yield node.args[0].value  # importlib.import_module("frugalnn....")


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _method_of(name: str) -> str | None:
    parts = name.split(".")
    if len(parts) >= 3 and parts[:2] == ["frugalnn", "methods"]:
        return parts[2]
    return None


def _is_cli_layer(module: str) -> bool:
    if _within(module, "frugalnn.cli") or _within(module, "frugalnn.demo"):
        return True
    parts = module.split(".")
    return _method_of(module) is not None and len(parts) == 4 and parts[3] in ("commands", "demo")


def _broken_rule(importer: str, imported: str) -> str | None:
    """Which rule ``importer -> imported`` breaks, or None."""
    layer = importer.split(".")[1] if "." in importer else ""
    if layer in FOUNDATIONS:
        for top in ABOVE_FOUNDATIONS:
            if _within(imported, f"frugalnn.{top}"):
                return f"foundation {layer!r} imports frugalnn.{top}"
        target = imported.split(".")[1] if imported.count(".") else ""
        if target in FOUNDATIONS and FOUNDATIONS.index(target) > FOUNDATIONS.index(layer):
            return f"foundation {layer!r} imports the higher foundation {target!r}"
    if layer == "runtime":
        for top in ("methods", "cli", "demo", "analysis", "report"):
            if _within(imported, f"frugalnn.{top}"):
                return f"runtime imports frugalnn.{top}"
    if layer in ("analysis", "report"):
        for top in ("methods", "cli", "demo"):
            if _within(imported, f"frugalnn.{top}"):
                return f"{layer!r} imports frugalnn.{top}"
    if layer == "analysis" and _within(imported, "frugalnn.report"):
        return "analysis imports frugalnn.report (the report reads the analysis, not back)"
    mine, theirs = _method_of(importer), _method_of(imported)
    if mine and theirs and mine != theirs:
        return f"method {mine!r} imports method {theirs!r}"
    if _within(imported, "frugalnn.cli") and not _is_cli_layer(importer):
        return "only the CLI layer imports frugalnn.cli"
    return None


def _violations() -> list[tuple[str, str, str]]:
    found = set()
    for path in sorted(PACKAGE.rglob("*.py")):
        importer = _module_name(path)
        for imported in _imports(path):
            if not _within(imported, "frugalnn"):
                continue
            rule = _broken_rule(importer, imported)
            if rule:
                found.add((importer, _shorten(imported), rule))
    return sorted(found)


def _shorten(imported: str) -> str:
    """The module part of ``imported``, from the files under ``src``:
    ``frugalnn.report.plots.save_figure`` -> ``frugalnn.report.plots``."""
    parts = imported.split(".")
    while len(parts) > 1:
        path = SRC / Path(*parts)
        if path.with_suffix(".py").is_file() or (path / "__init__.py").is_file():
            break
        parts.pop()
    return ".".join(parts)


def test_rules_catch_what_they_should() -> None:
    assert _broken_rule("frugalnn.cost.profile", "frugalnn.cli.common")
    assert _broken_rule("frugalnn.evaluation.run", "frugalnn.report.build")
    assert _broken_rule("frugalnn.train.loop", "frugalnn.methods.moe")
    assert _broken_rule("frugalnn.analysis.rankings", "frugalnn.report.plots") is not None
    assert _broken_rule("frugalnn.report.build", "frugalnn.methods.acm.report")
    assert _broken_rule("frugalnn.methods.acm.convert", "frugalnn.methods.moe.layer")
    assert _broken_rule("frugalnn.methods.acm.training", "frugalnn.cli.common")
    assert _broken_rule("frugalnn.methods.acm.commands", "frugalnn.cli.common") is None
    assert _broken_rule("frugalnn.methods.acm.commands", "frugalnn.methods.acm.recipe") is None
    assert _broken_rule("frugalnn.report.build", "frugalnn.analysis.frontier") is None
    assert _broken_rule("frugalnn.demo", "frugalnn.cli.common") is None
    assert _broken_rule("frugalnn.cli.train", "frugalnn.train.loop") is None
    assert _broken_rule("frugalnn.cost.profile", "frugalnn.train.checkpoint")
    assert _broken_rule("frugalnn.train.distributed", "frugalnn.cost.ledger") is None
    assert _broken_rule("frugalnn.models.zoo", "frugalnn.plugins") is None
    assert _broken_rule("frugalnn.runtime.package", "frugalnn.methods.early_exit.export")
    assert _broken_rule("frugalnn.evaluation.run", "frugalnn.runtime.export")
    assert _broken_rule("frugalnn.methods.early_exit.export", "frugalnn.runtime.graphs") is None
    assert _broken_rule("frugalnn.runtime.package", "frugalnn.plugins") is None


def test_imports_are_read_inside_functions_and_relative() -> None:
    imported = set(_imports(PACKAGE / "cli" / "profile.py"))
    assert "frugalnn.cost.profile" in imported  # imported inside a command function


def test_layers_only_point_down() -> None:
    found = _violations()
    new = [f"{a} -> {b}: {rule}" for a, b, rule in found if (a, b) not in ALLOWED]
    assert not new, "layering broken:\n" + "\n".join(new)


def test_allow_list_holds_only_live_violations() -> None:
    live = {(a, b) for a, b, _ in _violations()}
    stale = sorted(ALLOWED - live)
    assert not stale, f"fixed, remove from ALLOWED: {stale}"


@pytest.mark.parametrize("plugin", PLUGINS, ids=lambda p: p.name)
def test_plugin_parts_exist(plugin) -> None:
    package_dir = PACKAGE / Path(*plugin.package.split(".")[1:])
    assert (package_dir / "__init__.py").is_file(), plugin.package
    for part in ("commands", "demo", "export"):
        if getattr(plugin, part):
            assert (package_dir / f"{part}.py").is_file(), f"{plugin.package}.{part} missing"
    for sub in filter(None, (plugin.models, *plugin.transforms)):
        assert (package_dir / f"{sub}.py").is_file(), f"{plugin.package}.{sub} missing"


def test_plugin_modules_name_real_modules() -> None:
    for part in ("commands", "demo", "export", "models", "transforms"):
        for name in plugin_modules(part):
            path = PACKAGE / Path(*name.split(".")[1:])
            assert path.with_suffix(".py").is_file() or (path / "__init__.py").is_file(), name


def _registers_transform(path: Path) -> bool:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return any(isinstance(node, ast.Call) and getattr(node.func, "id", None) == "register_transform"
               for node in ast.walk(tree))


def test_plugins_declare_every_module_that_registers_a_transformation() -> None:
    """A checkpoint names its transformations; the registry finds them by importing
    the modules ``PLUGINS`` declares, so an undeclared one could not be loaded."""
    registering = {_module_name(path) for path in sorted((PACKAGE / "methods").rglob("*.py"))
                   if _registers_transform(path)}
    assert registering == set(plugin_modules("transforms"))
