"""``bnlab run EXPERIMENT``: train variants of one experiment over seeds into run directories."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

HELP = "run one experiment (some or all variants, K seeds) into run directories"

#: Default output directories: full runs and --quick runs are kept apart so their
#: configs never collide.
DEFAULT_OUT = "runs"
DEFAULT_QUICK_OUT = "runs-quick"


def add_common_arguments(parser: argparse.ArgumentParser, *, default_seeds: int) -> None:
    """Options shared by ``run`` and ``reproduce``."""
    parser.add_argument(
        "--seeds",
        type=int,
        default=default_seeds,
        metavar="K",
        help=f"seeds 0..K-1 per variant (default {default_seeds})",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="DIR",
        help=f"runs directory (default {DEFAULT_OUT}/, or {DEFAULT_QUICK_OUT}/ with --quick)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny step counts: every code path in a few minutes, most of it compiling the "
        "kernels once (numbers are meaningless)",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="read the data from DIR (e.g. a directory with the four MNIST IDX files)",
    )
    parser.add_argument(
        "--restart",
        action="store_true",
        help="discard existing run directories of the selected runs and train again",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument(
        "--jobs",
        type=int,
        default=None,
        metavar="N",
        help="runs trained side by side (default: one per CPU core). Each run trains on its "
        "config's num_threads (fixed per experiment, recorded), so its numbers do not depend "
        "on N; the threads of the runs at work never exceed the cores",
    )
    parser.add_argument(
        "--no-group",
        action="store_true",
        help="train every seed as its own run, even where the experiment trains the seeds "
        "of a variant together as one stacked model (same results, bit for bit; slower)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="torch CPU threads of this process outside the runs (a run trains on its "
        "config's num_threads; change that with --set num_threads=N)",
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("experiment", help="experiment name (see: bnlab list)")
    parser.add_argument(
        "--variant",
        action="append",
        default=None,
        metavar="NAME",
        help="variant to run (repeat or comma-separate; default: all)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=None,
        metavar="FIELD=VALUE",
        help="change a config field for these runs, e.g. --set learning_rate=0.01 (repeatable; "
        "fields: bnlab list EXPERIMENT). Use a separate --out: the run directories are named "
        "by variant and seed only",
    )
    parser.add_argument(
        "--sync-bn",
        action="store_true",
        help="under torchrun (data parallel): synchronize batch-norm statistics across the "
        "processes, e.g. torchrun --standalone --nproc-per-node 2 -m bnlab run deep-cnn "
        "--sync-bn (docs/distributed.md)",
    )
    add_common_arguments(parser, default_seeds=1)


def parse_overrides(items: list[str] | None) -> dict[str, str]:
    """``["a=1", "b=x"]`` -> ``{"a": "1", "b": "x"}``.

    Raises:
        BnlabError: an item without ``=``.
    """
    from bnlab.errors import BnlabError

    out: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise BnlabError(f"--set expects FIELD=VALUE; got {item!r}")
        out[key.strip()] = value.strip()
    return out


def out_dir(args: argparse.Namespace) -> Path:
    """The runs directory the options ask for."""
    if args.out is not None:
        return Path(args.out)
    return Path(DEFAULT_QUICK_OUT if args.quick else DEFAULT_OUT)


def name_list(items: list[str] | None, flag: str) -> list[str] | None:
    """``["a,b", "c"]`` -> ``["a", "b", "c"]``; ``None`` when the option was not given.

    Raises:
        BnlabError: an empty name (``--variant ""`` or ``--variant a,,b``), which would
            otherwise silently mean "all".
    """
    from bnlab.errors import BnlabError

    if items is None:
        return None
    names = [name.strip() for item in items for name in item.split(",")]
    if not names or any(not name for name in names):
        raise BnlabError(
            f"{flag} needs a name; got {' '.join(repr(i) for i in items)}. Leave {flag} out to "
            "run them all (names: bnlab list)"
        )
    return names


def setup(args: argparse.Namespace) -> None:
    """Apply process-wide options (threads); check the seed count, --out and --data-dir."""
    import torch

    from bnlab.cli.checks import writable_dir
    from bnlab.errors import BnlabError

    if args.seeds < 1:
        raise BnlabError(f"--seeds must be >= 1; got {args.seeds}")
    if args.data_dir is not None and not Path(args.data_dir).expanduser().exists():
        raise BnlabError(
            f"--data-dir {args.data_dir} does not exist; pass a directory holding the data "
            "(bnlab data shows what is available)"
        )
    writable_dir(out_dir(args), "--out")
    if args.jobs is not None and args.jobs < 1:
        raise BnlabError(f"--jobs must be >= 1; got {args.jobs}")
    if args.threads is not None:
        if args.threads < 1:
            raise BnlabError(f"--threads must be >= 1; got {args.threads}")
        torch.set_num_threads(args.threads)


def summary_text(spec: Any, runs_dir: Path, variants: list[str] | None = None) -> str:
    """The final-metrics table of ``spec``'s runs in ``runs_dir`` as plain text."""
    from bnlab.report.build import metric_table
    from bnlab.report.render import render_text_table
    from bnlab.report.results import ExperimentResults, load_results

    results = load_results(runs_dir, {spec.name: spec}).get(spec.name, ExperimentResults(spec.name))
    names = variants or list(spec.variant_names())
    table = metric_table(spec, results, names)
    return render_text_table(table) if table is not None else "(no finished runs)"


def train_all(
    args: argparse.Namespace, specs: list[Any], variants: list[str] | None, *, keep_going: bool
) -> Any:
    """Plan and train every run the options ask for (``bnlab.experiments.scheduler``);
    return ``(outcomes, not_run)``."""
    import sys

    from bnlab.experiments import scheduler
    from bnlab.experiments.runner import seed_list
    from bnlab.experiments.scheduler import RunSettings, available_cores, default_jobs, plan

    overrides = parse_overrides(getattr(args, "set", None))
    requests = plan(
        specs,
        seed_list(args.seeds),
        variants=variants,
        quick=args.quick,
        overrides=overrides,
        group=not getattr(args, "no_group", False),
    )
    settings = RunSettings(
        out_dir=out_dir(args),
        quick=args.quick,
        data_dir=args.data_dir,
        restart=args.restart,
        overrides=overrides,
    )
    jobs = args.jobs if args.jobs is not None else default_jobs()
    cores = available_cores()
    if jobs > cores:
        # More runs than cores only slow each down (and hold their memory side by side).
        print(
            f"--jobs {jobs}: lowered to {cores}, the CPU cores this process may use",
            file=sys.stderr,
        )
        jobs = cores
    return scheduler.run_all(
        requests, settings, jobs=jobs, keep_going=keep_going, progress=not args.no_progress
    )


def run(args: argparse.Namespace) -> int:
    import sys

    from bnlab.experiments import ExperimentNotRunError, get_experiment, run_experiment
    from bnlab.train import distributed as data_parallel

    # Under torchrun: join the process group first (so --threads, applied next, wins).
    dp = data_parallel.init_from_env(sync_bn=args.sync_bn)
    if args.sync_bn and not dp.enabled:
        print("--sync-bn: one process, nothing to synchronize", file=sys.stderr)
    setup(args)
    spec = get_experiment(args.experiment)
    variants = name_list(args.variant, "--variant")
    out = out_dir(args)
    if not dp.enabled:
        # The first failure stops `bnlab run` with its error (reproduce records and goes on).
        outcomes, not_run = train_all(args, [spec], variants, keep_going=False)
        if not_run:
            raise ExperimentNotRunError(not_run[spec.name])
        print(summary_text(spec, out, variants))
        print(f"\nrun directories: {out / spec.name}; report: bnlab report {out}")
        return 0 if all(o.status != "failed" for o in outcomes) else 1
    if args.jobs not in (None, 1):
        from bnlab.errors import BnlabError

        raise BnlabError(
            f"--jobs {args.jobs} under torchrun: data-parallel training runs one run at a "
            "time across its processes; leave --jobs out"
        )
    # Ranks other than 0 train silently: one log, one progress bar, one summary.
    quiet: dict[str, Any] = {} if dp.is_main else {"log": lambda _message: None}
    try:
        with data_parallel.using(dp):
            outcomes = run_experiment(
                spec,
                out_dir=out,
                variants=variants,
                seeds=args.seeds,
                quick=args.quick,
                data_dir=args.data_dir,
                progress=not args.no_progress and dp.is_main,
                restart=args.restart,
                overrides=parse_overrides(args.set),
                is_main=dp.is_main,
                **quiet,
            )
    finally:
        data_parallel.shutdown()
    if not dp.is_main:  # rank 0 reports for everyone
        return 0 if all(o.status != "failed" for o in outcomes) else 1
    # Data-parallel runs live under their own labels (e.g. bn@2proc-syncbn).
    labels = [dp.run_label(v) for v in variants or spec.variant_names()]
    print(summary_text(spec, out, labels))
    print(f"\nrun directories: {out / spec.name}; report: bnlab report {out}")
    return 0 if all(o.status != "failed" for o in outcomes) else 1
