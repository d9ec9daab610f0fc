"""``bnlab report RUNS_DIR``: rebuild the HTML and Markdown report from run directories."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "build the HTML/Markdown report from run directories (no training)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "runs_dir",
        type=Path,
        nargs="?",
        default=Path("runs"),
        metavar="RUNS_DIR",
        help="the runs directory (default: runs)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="DIR",
        help="write report.html, report.md, report.json there (default: RUNS_DIR)",
    )


def run(args: argparse.Namespace) -> int:
    from bnlab.errors import BnlabError
    from bnlab.experiments import all_experiments
    from bnlab.report import build_report

    if not Path(args.runs_dir).is_dir():
        raise BnlabError(
            f"{args.runs_dir} is not a directory; expected a runs directory written by "
            "bnlab run or bnlab reproduce (their --out)"
        )
    files = build_report(args.runs_dir, args.out, experiments=all_experiments())
    print(f"report: {files.html}")
    print(f"summary: {files.markdown}")
    print(f"tables: {files.json}")
    return 0
