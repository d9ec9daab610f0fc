"""``bnlab reproduce``: run every experiment over seeds, then write the report."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

HELP = "run every experiment (all variants, K seeds), then write the report"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from bnlab.cli.cmd_run import add_common_arguments

    add_common_arguments(parser, default_seeds=3)
    parser.add_argument(
        "--experiment",
        action="append",
        default=None,
        metavar="NAME",
        help="only these experiments (repeat or comma-separate; default: all)",
    )


def run(args: argparse.Namespace) -> int:
    import sys
    import time

    from bnlab.cli.cmd_run import name_list, out_dir, setup, summary_text, train_all
    from bnlab.experiments import all_experiments, experiment_names, get_experiment
    from bnlab.report import build_report

    setup(args)
    names = list(experiment_names())
    chosen = name_list(args.experiment, "--experiment")
    if chosen is not None:
        names = chosen
    specs = [get_experiment(name) for name in names]  # unknown names fail before any run
    out = out_dir(args)
    t0 = time.perf_counter()
    outcomes, not_run = train_all(args, specs, None, keep_going=True)
    for reason in not_run.values():
        # Missing data must not stop the suite: the report says why and what to do.
        print(reason, file=sys.stderr)
    trained = time.perf_counter() - t0
    failed = sum(o.status == "failed" for o in outcomes)
    for spec in specs:
        if spec.name not in not_run:
            print(f"\n{spec.name}: {spec.title}\n{summary_text(spec, out)}")
    t1 = time.perf_counter()
    files = build_report(out, experiments=all_experiments())
    report_s = time.perf_counter() - t1
    _record_job(out, args, outcomes, not_run, trained, report_s)
    print(f"\nruns: {len(outcomes)} in {trained:.0f} s; report written in {report_s:.0f} s")
    print(f"report: {files.html}")
    print(f"summary: {files.markdown}")
    if not_run:
        print(f"not run (see the report for why and what to do): {', '.join(not_run)}")
    if failed:
        print(f"{failed} run(s) failed; their errors are in failed.json and in the report")
        return 1
    return 0


def _record_job(
    out: Path,
    args: argparse.Namespace,
    outcomes: list[Any],
    not_run: dict[str, str],
    train_s: float,
    report_s: float,
) -> None:
    """``job.json`` in the runs directory: how long this call took and how it ran (read by
    ``scripts/time_breakdown.py``)."""
    import datetime as dt

    from bnlab.experiments.scheduler import available_cores, default_jobs
    from bnlab.train.env import process_git_revision
    from bnlab.train.io import write_json_atomic

    counts: dict[str, int] = {}
    for outcome in outcomes:
        counts[outcome.status] = counts.get(outcome.status, 0) + 1
    write_json_atomic(
        out / "job.json",
        {
            "command": "bnlab reproduce",
            "time_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "git": process_git_revision(),
            "seeds": args.seeds,
            "quick": args.quick,
            "jobs": args.jobs if args.jobs is not None else default_jobs(),
            "cores": available_cores(),
            "runs": counts,
            "not_run": sorted(not_run),
            "train_s": round(train_s, 1),
            "report_s": round(report_s, 1),
        },
    )
