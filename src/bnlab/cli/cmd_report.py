"""``bnlab report RUNS_DIR [--summary]``: rebuild the HTML and Markdown report from run
directories; ``--summary`` also writes the committed summary (README results, docs/results.md).
"""

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
    parser.add_argument(
        "--summary",
        type=Path,
        nargs="?",
        const=Path("."),
        default=None,
        metavar="REPO",
        help="also write the committed summary into the repository at REPO (default: .): "
        "docs/results.json, docs/results.md and README.md's results block",
    )


def run(args: argparse.Namespace) -> int:
    """Refuse a path that is not a runs directory, or one holding no runs (nothing is
    written then); otherwise build the report."""
    from bnlab.cli.checks import writable_dir
    from bnlab.errors import BnlabError
    from bnlab.experiments import all_experiments
    from bnlab.report import build_report
    from bnlab.report.results import load_results

    if not Path(args.runs_dir).is_dir():
        raise BnlabError(
            f"{args.runs_dir} is not a directory; expected a runs directory written by "
            "bnlab run or bnlab reproduce (their --out)"
        )
    if not load_results(args.runs_dir):
        raise BnlabError(
            f"{args.runs_dir} holds no runs (no <experiment>/<variant>/seed-<k>/config.json); "
            "pass the --out directory of bnlab run or bnlab reproduce"
        )
    writable_dir(args.out if args.out is not None else args.runs_dir, "--out")
    files = build_report(args.runs_dir, args.out, experiments=all_experiments())
    print(f"report: {files.html}")
    print(f"summary: {files.markdown}")
    print(f"tables: {files.json}")
    if args.summary is not None:
        from bnlab.report.summary import write_summary

        try:
            written = write_summary(args.runs_dir, args.summary, all_experiments())
        except (ValueError, FileNotFoundError) as exc:
            raise BnlabError(f"--summary: {exc}") from None
        for path in written:
            print(f"summary: {path}")
    return 0
