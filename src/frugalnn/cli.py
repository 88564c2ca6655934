"""The ``frugalnn`` command.

Each concern contributes its subcommands from its own ``commands`` module, a
function ``register(subparsers)`` that adds parsers and sets ``func`` on them
(``func(args) -> int | None``). Errors the user can fix (``UserError``, missing
files) print one line and exit with status 2; no traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from frugalnn.errors import UserError

COMMAND_MODULES = (
    "frugalnn.cost.commands",  # profile, models
    "frugalnn.train.commands",  # train
    "frugalnn.evaluate_commands",  # evaluate, report, demo
    "frugalnn.dynamic.early_exit.commands",  # early-exit ...
    "frugalnn.dynamic.moe.commands",  # moe ..., sparsity
    "frugalnn.dynamic.acm.commands",  # acm ...
    "frugalnn.analysis.commands",  # rankings
    "frugalnn.lowrank.commands",  # lowrank ...
    "frugalnn.nas.commands",  # nas ...
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="frugalnn",
        description="Make neural networks cheaper to run and measure exactly how much cheaper.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name is not None and name.startswith(exc.name):
                continue  # that concern has no commands yet
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        result = args.func(args)
    except UserError as exc:
        print(f"frugalnn: error: {exc}", file=sys.stderr)
        return 2
    except (FileNotFoundError, IsADirectoryError, PermissionError) as exc:
        print(f"frugalnn: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("frugalnn: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


def entry() -> None:  # pragma: no cover - thin wrapper
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    entry()
