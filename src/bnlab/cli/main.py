"""Entry point of the ``bnlab`` command.

Each sub-command lives in its own module ``bnlab.cli.cmd_<name>`` exposing ``HELP`` (one
line), ``add_arguments(parser)`` and ``run(args) -> int``. Modules import heavy libraries
inside ``run`` so that ``bnlab --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from types import ModuleType

from bnlab import __version__
from bnlab.errors import BnlabError

# Order is the order shown by ``bnlab --help``.
COMMANDS: tuple[str, ...] = ("list", "run", "reproduce", "report", "data", "bench", "doctor")


def _command_module(name: str) -> ModuleType:
    return importlib.import_module(f"bnlab.cli.cmd_{name.replace('-', '_')}")


def build_parser() -> argparse.ArgumentParser:
    """Return the top-level parser with one sub-parser per command in :data:`COMMANDS`."""
    parser = argparse.ArgumentParser(
        prog="bnlab",
        description="Batch normalization: library, experiments, report.",
    )
    parser.add_argument("--version", action="version", version=f"bnlab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        module = _command_module(name)
        cmd = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(cmd)
        cmd.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit code (0 ok, 1 failure, 2 usage or input error)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "_run", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except BnlabError as exc:
        print(f"bnlab {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"bnlab {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
