"""Do two sets of runs of one variant give the same distribution? (docs/performance.md)

A speed change to the engine must not move the results. This compares the finished seeds of
one experiment variant in two runs directories (before and after a change) on the final
metrics and logged values named, with the report's two-sided permutation test of the
difference of means (:func:`bnlab.report.stats.compare_samples`) and the Kolmogorov-Smirnov
test of the whole distribution (``scipy.stats.ks_2samp``, exact for these sample sizes).
Prints a Markdown table.

Usage::

    python scripts/compare_runs.py BEFORE_RUNS AFTER_RUNS --experiment deep-cnn --variant bn \\
        --final test_accuracy --logged validation:accuracy:501
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from scipy import stats

from bnlab.report.results import ExperimentResults, load_results
from bnlab.report.stats import compare_samples


def _runs(path: Path, experiment: str) -> ExperimentResults:
    results = load_results(path).get(experiment)
    if results is None:
        sys.exit(f"{path} holds no runs of {experiment}")
    return results


def _describe(runs: ExperimentResults, variant: str) -> str:
    done = runs.complete(variant)
    revisions = sorted({str(r.env.get("git", {}).get("revision", "?"))[:10] for r in done})
    # A run trains on its config's num_threads where it has one, else the process's count.
    threads = sorted(
        {str(r.config.get("num_threads", r.env.get("torch_threads", "?"))) for r in done}
    )
    return f"{len(done)} seeds, revision {', '.join(revisions)}, torch threads {', '.join(threads)}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--experiment", required=True)
    parser.add_argument("--variant", required=True)
    parser.add_argument("--final", action="append", default=[], metavar="KEY")
    parser.add_argument("--logged", action="append", default=[], metavar="TAG:KEY:STEP")
    args = parser.parse_args(argv)
    before, after = _runs(args.before, args.experiment), _runs(args.after, args.experiment)
    print(f"before: {args.before} ({_describe(before, args.variant)})")
    print(f"after: {args.after} ({_describe(after, args.variant)})\n")
    rows: list[tuple[str, list[float], list[float]]] = []
    for key in args.final:
        rows.append((key, before.values(args.variant, key), after.values(args.variant, key)))
    for item in args.logged:
        tag, key, step = item.split(":")
        a = before.values_at(args.variant, tag, key, int(step))
        b = after.values_at(args.variant, tag, key, int(step))
        rows.append((f"{tag} {key} at step {step}", a, b))
    print("| quantity | before (mean ± sd, n) | after (mean ± sd, n) | permutation p | KS p |")
    print("|---|---|---|---|---|")
    for label, a, b in rows:
        comparison = compare_samples(a, b)
        ks = stats.ks_2samp(a, b) if len(a) and len(b) else None
        print(
            f"| {label} | {_summary(a)} | {_summary(b)} | {comparison.p:.3f} | {ks.pvalue:.3f} |"
            if comparison is not None and ks is not None
            else f"| {label} | {_summary(a)} | {_summary(b)} | - | - |"
        )
    return 0


def _summary(values: list[float]) -> str:
    if len(values) < 2:
        return f"n={len(values)}"
    return (
        f"{100 * statistics.mean(values):.2f} ± {100 * statistics.stdev(values):.2f}% "
        f"(n={len(values)})"
    )


if __name__ == "__main__":
    sys.exit(main())
