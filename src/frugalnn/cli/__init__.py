"""The ``frugalnn`` command.

Each concern contributes its subcommands from its own ``commands`` module, a
function ``register(subparsers)`` that adds parsers and sets ``func`` on them
(``func(args) -> int | None``). Errors the user can fix (``UserError``, missing
files) print one line and exit with status 2; no traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from frugalnn import __version__
from frugalnn.errors import UserError
from frugalnn.plugins import import_optional

#: The toolkit's own commands; each method adds its own through ``frugalnn.plugins``.
CORE_COMMAND_MODULES = (
    "frugalnn.cli.profile",  # profile, models
    "frugalnn.cli.train",  # train
    "frugalnn.cli.evaluate",  # evaluate, report, demo
    "frugalnn.cli.rankings",  # rankings
    "frugalnn.cli.export",  # export
)


def command_modules() -> list[str]:
    """Every module that registers subcommands: the core ones, then each plugin's."""
    from frugalnn.plugins import plugin_modules

    return [*CORE_COMMAND_MODULES, *plugin_modules("commands")]


VERSION_LINE = f"frugalnn {__version__}"


def build_parser() -> argparse.ArgumentParser:
    """The whole command line. Building it imports every command module, and each of
    those imports torch only inside its command functions, so ``--help`` stays fast."""
    parser = argparse.ArgumentParser(
        prog="frugalnn",
        description="Make neural networks cheaper to run and measure exactly how much cheaper.",
    )
    parser.add_argument("--version", action="version", version=VERSION_LINE)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in command_modules():
        module = import_optional(name)
        if module is not None:  # a plugin without commands registers none
            module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    if list(sys.argv[1:] if argv is None else argv) == ["--version"]:
        print(VERSION_LINE)  # no command module needed
        return 0
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from frugalnn.utils.rundir import USER_ERRNOS, finish_all, os_error_message

    try:
        result = args.func(args)
    except UserError as exc:
        print(f"frugalnn: error: {exc}", file=sys.stderr)
        return 2
    except (FileNotFoundError, IsADirectoryError, PermissionError) as exc:
        print(f"frugalnn: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # disk full, read-only file system: the user's to fix
        if exc.errno not in USER_ERRNOS:
            raise
        print(f"frugalnn: error: {os_error_message(exc, 'write ' + str(exc.filename or 'a file'))}",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("frugalnn: interrupted", file=sys.stderr)
        return 130
    finally:
        finish_all()  # release run directories this command took (frugalnn.utils.rundir)
    return int(result or 0)


def entry() -> None:  # pragma: no cover - thin wrapper
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    entry()
