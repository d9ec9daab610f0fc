"""``bnlab reproduce``: run every experiment over seeds, then write the report."""

from __future__ import annotations

import argparse

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

    from bnlab.cli.cmd_run import name_list, out_dir, setup, summary_text
    from bnlab.experiments import (
        ExperimentNotRunError,
        all_experiments,
        experiment_names,
        get_experiment,
        run_experiment,
    )
    from bnlab.report import build_report

    setup(args)
    names = list(experiment_names())
    chosen = name_list(args.experiment, "--experiment")
    if chosen is not None:
        names = chosen
        for name in names:
            get_experiment(name)  # unknown names fail before anything runs
    out = out_dir(args)
    failed = 0
    not_run: list[str] = []
    for name in names:
        spec = get_experiment(name)
        print(f"== {name}: {spec.title}", file=sys.stderr)
        try:
            outcomes = run_experiment(
                spec,
                out_dir=out,
                seeds=args.seeds,
                quick=args.quick,
                data_dir=args.data_dir,
                progress=not args.no_progress,
                restart=args.restart,
                keep_going=True,
            )
        except ExperimentNotRunError as exc:
            # Missing data must not stop the suite: the report says why and what to do.
            print(f"{exc}", file=sys.stderr)
            not_run.append(name)
            continue
        failed += sum(o.status == "failed" for o in outcomes)
        print(f"\n{name}\n{summary_text(spec, out)}\n")
    files = build_report(out, experiments=all_experiments())
    print(f"report: {files.html}")
    print(f"summary: {files.markdown}")
    if not_run:
        print(f"not run (see the report for why and what to do): {', '.join(not_run)}")
    if failed:
        print(f"{failed} run(s) failed; their errors are in failed.json and in the report")
        return 1
    return 0
