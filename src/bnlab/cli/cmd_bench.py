"""``bnlab bench``: time batch norm (torch, reference, fused, auto) against the roofline.

Prints a table of median times and ratios per shape, layout and mode, the deep-CNN
training-step and ``fold_bn`` results, the compiled rows, the engine against a plain
PyTorch loop (``--engine``), and the verdict on each performance claim; writes everything
as JSON (``--out``, written atomically).
"""

from __future__ import annotations

import argparse

HELP = "benchmark batch norm: torch vs bnlab's backends vs the memory-bandwidth roofline"

_DEFAULT_OUT = "bench-results/bench.json"


# Kept here as literals so that ``bnlab --help`` does not import torch; a test checks them
# against bnlab.bench (SHAPE_SETS, LAYOUTS, MODES, BACKENDS, STATS).
SHAPE_SETS = ("all", "deep-cnn", "large", "quick", "seeds")
LAYOUTS = ("contiguous", "channels_last")
MODES = ("forward", "backward", "forward+backward", "inference")
BACKENDS = ("native", "reference", "fused", "auto")
DTYPES = ("float32", "float64")
STATS = ("median", "min")


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds; got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected seconds >= 0; got {text}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number; got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1; got {value}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: two tiny shapes, 3 rounds, a 3-layer CNN (seconds, not minutes)",
    )
    parser.add_argument(
        "--shapes",
        default="all",
        choices=SHAPE_SETS,
        help="the seeds' layers, large ones, or all (default)",
    )
    parser.add_argument(
        "--layouts",
        nargs="+",
        default=list(LAYOUTS),
        choices=LAYOUTS,
        metavar="LAYOUT",
        help=f"memory layouts (default: {' '.join(LAYOUTS)})",
    )
    parser.add_argument(
        "--modes",
        nargs="+",
        default=list(MODES),
        choices=MODES,
        metavar="MODE",
        help=f"what to time (default: {' '.join(MODES)})",
    )
    parser.add_argument(
        "--backends",
        nargs="+",
        default=list(BACKENDS),
        choices=BACKENDS,
        metavar="BACKEND",
        help=f"what to compare (default: {' '.join(BACKENDS)})",
    )
    parser.add_argument(
        "--dtypes",
        nargs="+",
        default=["float32"],
        choices=DTYPES,
        metavar="DTYPE",
        help="float32 (default) and/or float64",
    )
    parser.add_argument(
        "--budget",
        type=_seconds,
        default=1.0,
        metavar="SECONDS",
        help="seconds of interleaved timing rounds per case (default 1.0)",
    )
    parser.add_argument(
        "--compiled",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="time torch BN vs bnlab BN eager and under torch.compile (layers, a ResNet-18 "
        "step); default: on, off with --quick",
    )
    parser.add_argument(
        "--engine",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="time the engine (one `bnlab run` run: deep-cnn bn, no-bn; sigmoid-mlp no-bn, "
        "bn; and sigmoid-mlp no-bn, bn seeds 0-2 as one group run, as `bnlab run` trains "
        "them) against plain PyTorch loops of the same runs (a group's one after another), "
        "and the most stacking sigmoid-MLP seeds could save (batched seeds); "
        "default: on, off with --quick (then on a fake MNIST with tiny runs)",
    )
    parser.add_argument(
        "--engine-only",
        action="store_true",
        help="only the engine rows: no batch-norm matrix, network or compiled rows",
    )
    parser.add_argument(
        "--engine-repeats",
        type=_positive_int,
        default=3,
        metavar="N",
        help="engine/plain pairs per engine row, alternating (default 3; medians)",
    )
    parser.add_argument(
        "--data-dir",
        default=None,
        metavar="DIR",
        help="MNIST for the engine rows (default: bnlab's sources, as `bnlab run`)",
    )
    parser.add_argument(
        "--no-nets",
        action="store_true",
        help="skip the deep-CNN training step and fold_bn latency benchmarks",
    )
    parser.add_argument(
        "--out",
        default=_DEFAULT_OUT,
        metavar="PATH",
        help=f"JSON file to write (default {_DEFAULT_OUT})",
    )
    parser.add_argument(
        "--stat",
        default="median",
        choices=STATS,
        help="statistic of the printed table and the claims: median (default) or min, the "
        "least-disturbed sample (on a shared machine, the estimate of the quiet time); "
        "the JSON holds both",
    )
    parser.add_argument(
        "--quiet",
        action="store_true",
        help="on a shared machine: wait until other processes leave the cores before each "
        "case, and repeat a case they disturbed (up to 3 times; the JSON records the "
        "interference each case was measured under)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from bnlab.cli.checks import writable_file

    # Before anything else: a bad --out found after the benchmark would lose its results.
    writable_file(args.out, "--out")

    from bnlab.bench.report import (
        BenchConfig,
        count_cases,
        format_claims,
        format_nets,
        run_benchmark,
    )
    from bnlab.bench.suite import CaseResult, format_table
    from bnlab.train.io import write_json_atomic
    from bnlab.train.progress import progress_bar, progress_enabled

    only = args.engine_only
    config = BenchConfig(
        shapes=args.shapes,
        layouts=tuple(args.layouts),
        dtypes=tuple(args.dtypes),
        modes=tuple(args.modes),
        backends=tuple(args.backends),
        budget_s=args.budget,
        nets=not args.no_nets and not only,
        compiled=not only and (args.compiled if args.compiled is not None else not args.quick),
        engine=only or (args.engine if args.engine is not None else not args.quick),
        engine_repeats=args.engine_repeats,
        data_dir=args.data_dir,
        matrix=not only,
        quick=args.quick,
        stat=args.stat,
        quiet=args.quiet,
    )
    bar = progress_bar(
        count_cases(config), "bench", enabled=progress_enabled(not args.no_progress), unit="case"
    )
    cases: list[CaseResult] = []

    def on_case(result: CaseResult) -> None:
        cases.append(result)
        bar.set_postfix_str(f"{result.shape.label} {result.layout} {result.mode}")
        bar.update(1)

    try:
        document = run_benchmark(config, on_case=on_case)
    finally:
        bar.close()
    write_json_atomic(args.out, document)
    if config.matrix:
        print(format_table(cases))
    if document["nets"] is not None:
        print()
        print(format_nets(document["nets"], args.stat))
    if document["compiled"]:
        from bnlab.bench.compiled import format_compiled

        print()
        print(format_compiled(document["compiled"]))
    if document["engine"] is not None:
        from bnlab.bench.engine import format_engine

        print()
        print(format_engine(document["engine"]))
    print()
    print("claims:")
    print(format_claims(document["claims"]))
    print(f"\nwrote {args.out}")
    return 0
