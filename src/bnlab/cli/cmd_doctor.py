"""``bnlab doctor``: check a model for batch-norm bugs and print each finding with its fix.

``bnlab doctor RUN_DIR`` rebuilds a run's trained model (through the experiment registry)
and checks it on the first test images; ``bnlab doctor --demo`` checks small models with
one deliberate bug each, to show what every finding looks like.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

HELP = "check a trained model (a run directory) or the built-in broken examples for BN bugs"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``bnlab doctor (RUN_DIR | --demo) [options]``."""
    parser.add_argument(
        "run_dir",
        nargs="?",
        type=Path,
        metavar="RUN_DIR",
        help="a run directory (runs/<experiment>/<variant>/seed-<k>) to rebuild and check",
    )
    parser.add_argument(
        "--demo",
        action="store_true",
        help="check the built-in example models, one healthy and one per bug",
    )
    parser.add_argument(
        "--data-dir", type=Path, help="where the experiment's data are (default: its sources)"
    )
    parser.add_argument(
        "--batch-size", type=int, default=64, help="test images in the sample batch (default 64)"
    )
    parser.add_argument(
        "--train-batch-size",
        type=int,
        help="training batch size for the small-batch check (default: the run's batch_size)",
    )
    parser.add_argument("--phase", help="which checkpoint to load (default: the latest)")
    parser.add_argument("--json", action="store_true", help="print the report(s) as JSON")


def _print(reports: list[tuple[str, Any]], as_json: bool) -> None:
    if as_json:
        payload = [{"name": name, **report.to_dict()} for name, report in reports]
        print(json.dumps(payload if len(payload) > 1 else payload[0], indent=2))
        return
    for i, (name, report) in enumerate(reports):
        if i:
            print()
        print(f"== {name}")
        print(report)


def run(args: argparse.Namespace) -> int:
    """Exit 0 when no finding is an error, 1 otherwise (2 for bad input, via BnlabError)."""
    from bnlab.errors import BnlabError

    if args.demo == (args.run_dir is not None):
        raise BnlabError("give a run directory or --demo (exactly one)")
    if args.batch_size < 2:
        raise BnlabError(f"--batch-size must be at least 2; got {args.batch_size}")
    from bnlab.norm.tools.doctor import demo_cases, doctor

    if args.demo:
        reports = []
        for case in demo_cases():
            report = doctor(case.model, case.batch, **case.options)
            reports.append((f"{case.name}: {case.description}", report))
        _print(reports, args.json)
        return 0  # the bugs are the point of the demo

    from bnlab.experiments.run_model import load_run_model, sample_inputs

    loaded = load_run_model(args.run_dir, phase=args.phase)
    batch = sample_inputs(loaded.experiment, args.batch_size, args.data_dir)
    train_batch_size = args.train_batch_size or getattr(loaded.config, "batch_size", None)
    report = doctor(loaded.model, batch, train_batch_size=train_batch_size)
    title = (
        f"{loaded.experiment}/{loaded.variant}/seed-{loaded.seed} "
        f"({loaded.phase} checkpoint, step {loaded.step})"
    )
    _print([(title, report)], args.json)
    if not args.json and not report.healthy:
        print(f"\n{len(report.findings)} finding(s); see the fixes above.", file=sys.stderr)
    return 1 if any(f.severity == "error" for f in report.findings) else 0
