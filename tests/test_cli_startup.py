"""``frugalnn --help`` and ``--version`` start fast: building the parser imports no torch.

Each check runs in a fresh interpreter, since this one has torch loaded already.
A failure names the chain of modules through which torch got imported.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from frugalnn import __version__
from frugalnn.cli import CORE_COMMAND_MODULES

#: What one check may take; a torch-free parser builds in well under a tenth of this.
STARTUP_LIMIT_S = 1.0

_HEAVY = ("torch", "sklearn", "scipy", "matplotlib")


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-X", "importtime", "-c", code],
                          capture_output=True, text=True, timeout=120)


def _import_chain(importtime: str, target: str) -> list[str]:
    """Modules through which ``target`` was first imported, outermost first, read from
    ``python -X importtime`` output (children are listed before their parent)."""
    rows = []
    for line in importtime.splitlines():
        m = re.match(r"import time:\s+\d+ \|\s+\d+ \|( *)(\S+)", line)
        if m:
            rows.append((len(m.group(1)) // 2, m.group(2)))
    for i, (depth, name) in enumerate(rows):
        if name == target:
            chain = [name]
            for later_depth, later in rows[i + 1:]:
                if later_depth < depth:
                    chain.append(later)
                    depth = later_depth
            return chain[::-1]
    return []


def _heavy_imports(code: str) -> tuple[dict[str, list[str]], float]:
    """Run ``code`` fresh; the heavy packages it imported (each with its import chain)
    and the seconds it took (printed by the code itself)."""
    probe = (
        "import sys, time; _t = time.perf_counter()\n" + code +
        "\nprint('ELAPSED', time.perf_counter() - _t)"
        f"\nprint('LOADED', *[m for m in {_HEAVY!r} if m in sys.modules])"
    )
    proc = _run(probe)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    loaded = next(line for line in lines if line.startswith("LOADED")).split()[1:]
    elapsed = float(next(line for line in lines if line.startswith("ELAPSED")).split()[1])
    return {m: _import_chain(proc.stderr, m) for m in loaded}, elapsed


def _explain(heavy: dict[str, list[str]]) -> str:
    return "; ".join(f"{m} via {' -> '.join(chain) or '?'}" for m, chain in heavy.items())


def test_import_frugalnn_loads_no_torch() -> None:
    heavy, _ = _heavy_imports("import frugalnn; frugalnn.__version__; dir(frugalnn)")
    assert not heavy, _explain(heavy)


@pytest.mark.parametrize("module", [*CORE_COMMAND_MODULES, "frugalnn.cli.common"])
def test_core_command_modules_load_no_torch(module: str) -> None:
    heavy, _ = _heavy_imports(f"import {module}")
    assert not heavy, _explain(heavy)


def test_core_commands_register_without_torch() -> None:
    heavy, elapsed = _heavy_imports(
        "import argparse, importlib\n"
        "from frugalnn.cli import CORE_COMMAND_MODULES\n"
        "sub = argparse.ArgumentParser().add_subparsers()\n"
        "for name in CORE_COMMAND_MODULES: importlib.import_module(name).register(sub)"
    )
    assert not heavy, _explain(heavy)
    assert elapsed < STARTUP_LIMIT_S


def test_build_parser_loads_no_torch_and_is_fast() -> None:
    heavy, elapsed = _heavy_imports(
        "import frugalnn.cli as c; c.build_parser().format_help()")
    assert not heavy, _explain(heavy)
    assert elapsed < STARTUP_LIMIT_S, f"building the parser took {elapsed:.2f} s"


def test_version_needs_no_command_module() -> None:
    proc = subprocess.run([sys.executable, "-m", "frugalnn.cli", "--version"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == f"frugalnn {__version__}"
    heavy, elapsed = _heavy_imports(
        "import frugalnn.cli as c\n"
        "assert c.main(['--version']) == 0")
    assert not heavy, _explain(heavy)
    assert elapsed < STARTUP_LIMIT_S


def test_import_chain_reads_importtime_output() -> None:
    sample = (
        "import time: self [us] | cumulative | imported package\n"
        "import time:       5 |          5 |       torch._C\n"
        "import time:      10 |         15 |     torch\n"
        "import time:       3 |         18 |   frugalnn.cost.count\n"
        "import time:       1 |         19 | frugalnn.cli.profile\n"
    )
    assert _import_chain(sample, "torch") == [
        "frugalnn.cli.profile", "frugalnn.cost.count", "torch"]
    assert _import_chain(sample, "numpy") == []
