"""Entry point of the ``bnlab`` command.

Each sub-command lives in its own module ``bnlab.cli.cmd_<name>`` exposing ``HELP`` (one
line), ``add_arguments(parser)`` and ``run(args) -> int``. Modules import heavy libraries
inside ``run`` so that ``bnlab --help`` stays fast.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import importlib
import os
import signal
import sys
import traceback
from collections.abc import Sequence
from types import ModuleType

from bnlab import __version__
from bnlab.errors import BnlabError

# Order is the order shown by ``bnlab --help``.
COMMANDS: tuple[str, ...] = ("list", "run", "reproduce", "report", "data", "bench", "doctor")


def _command_module(name: str) -> ModuleType:
    return importlib.import_module(f"bnlab.cli.cmd_{name.replace('-', '_')}")


#: Set to 1 to print tracebacks of user errors (as ``--debug`` does).
DEBUG_ENV = "BNLAB_DEBUG"

_OS_HINTS = {
    errno.ENOSPC: "free disk space, then rerun the same command (finished runs are kept and "
    "an interrupted one resumes from its last checkpoint)",
    errno.EDQUOT: "free space within your quota, then rerun the same command",
    errno.EACCES: "choose a directory you can write (--out DIR)",
    errno.EPERM: "choose a directory you can write (--out DIR)",
    errno.EROFS: "the file system is read-only: choose another directory (--out DIR)",
    errno.ENOTDIR: "a path component is a file, not a directory: choose another path",
    errno.EEXIST: "a file is in the way: choose another path",
}


def os_error_message(exc: OSError) -> str:
    """One line for an operating-system error: what failed, on which file, what to do."""
    what = exc.strerror or str(exc)
    where = f": {exc.filename}" if exc.filename else ""
    hint = _OS_HINTS.get(exc.errno or 0, "check the path and the disk, then rerun")
    return f"{what}{where}; {hint}"


def _debug(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "debug", False)) or os.environ.get(DEBUG_ENV, "") not in ("", "0")


def build_parser() -> argparse.ArgumentParser:
    """Return the top-level parser with one sub-parser per command in :data:`COMMANDS`."""
    parser = argparse.ArgumentParser(
        prog="bnlab",
        description="Batch normalization: library, experiments, report.",
    )
    parser.add_argument("--version", action="version", version=f"bnlab {__version__}")
    parser.add_argument(
        "--debug",
        action="store_true",
        help=f"show the traceback of an error (also: {DEBUG_ENV}=1)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        module = _command_module(name)
        cmd = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(cmd)
        cmd.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit code (0 ok, 1 failure, 2 usage or input error).

    A :class:`BnlabError` or an ``OSError`` (disk full, no permission) is printed as one line
    ``bnlab COMMAND: error: ...`` and gives exit status 2; ``--debug`` or ``BNLAB_DEBUG=1``
    prints the traceback too. Other exceptions are bugs and keep their traceback.
    """
    _tolerant_output()
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "_run", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except BnlabError as exc:
        # One line: what was wrong and how to fix it (the traceback with --debug).
        if _debug(args):
            traceback.print_exc()
        print(f"bnlab {args.command}: error: {_one_line(str(exc))}", file=sys.stderr)
        return 2
    except OSError as exc:
        # Disk full, a read-only or vanished directory: the user's environment, not a bug.
        if _debug(args):
            traceback.print_exc()
        print(f"bnlab {args.command}: error: {os_error_message(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        # Ctrl-C, or SIGTERM/SIGHUP turned into the same exception while training (the
        # scheduler's Stopped): the workers are stopped, the next call resumes.
        signum = getattr(exc, "signum", None)
        if isinstance(signum, int):
            name = signal.Signals(signum).name
            print(
                f"bnlab {args.command}: stopped by {name}; rerun the same command to resume",
                file=sys.stderr,
            )
            return 128 + signum
        print(f"bnlab {args.command}: interrupted", file=sys.stderr)
        return 130


def _tolerant_output() -> None:
    """Never fail on printing a path: a file name that is not UTF-8 (``--out $'runs-\\xff'``)
    reaches Python as a lone surrogate, which a strict stdout refuses to encode; it is
    printed as ``\\udcff`` instead (stderr does so by default)."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            with contextlib.suppress(Exception):
                reconfigure(errors="backslashreplace")


def _one_line(text: str) -> str:
    return " ".join(text.split())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
