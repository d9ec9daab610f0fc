"""Where the main job's time goes, from a runs directory (docs/performance.md).

Reads ``job.json`` (written by ``bnlab reproduce``: wall times, jobs, cores, revision) and
every finished run's ``result.json`` (its wall time and the ``time_s`` ledger the trainer
fills: training steps, each hook's measurements, metric writes, checkpoints, and "other":
set-up and the measurements after training). Prints Markdown tables: per experiment, the
runs, their summed and mean wall time, and the share of each phase.

Usage: ``python scripts/time_breakdown.py RUNS_DIR``
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any


def _phase(name: str) -> str:
    return "evaluation (hooks)" if name.startswith("hook:") else name.replace("_", " ")


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    runs = Path(argv[0])
    job_path = runs / "job.json"
    job: dict[str, Any] = json.loads(job_path.read_text()) if job_path.is_file() else {}
    per: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for path in sorted(runs.glob("*/*/seed-*/result.json")):
        per[path.parts[-4]].append(json.loads(path.read_text()))
    if job:
        revision = str(job.get("git", {}).get("revision", "?"))[:10]
        print(
            f"`bnlab reproduce` at revision {revision}, {job.get('seeds')} seeds, "
            f"--jobs {job.get('jobs')} on {job.get('cores')} cores: runs {job.get('runs')}; "
            f"training {job.get('train_s')} s wall, report {job.get('report_s')} s.\n"
        )
    phases = ["train steps", "evaluation (hooks)", "metric writes", "checkpoints", "other"]
    print("| experiment | runs | run time, summed | mean per run | " + " | ".join(phases) + " |")
    print("|---|---|---|---|" + "---|" * len(phases))
    total_runs, total_s = 0, 0.0
    for name, results in per.items():
        wall = sum(float(r.get("wall_time_s", 0.0)) for r in results)
        spent: dict[str, float] = defaultdict(float)
        for r in results:
            for key, seconds in r.get("time_s", {}).items():
                spent[_phase(key)] += float(seconds)
        shares = [f"{100 * spent[p] / wall:.0f}%" if wall and spent else "-" for p in phases]
        print(
            f"| {name} | {len(results)} | {wall:.0f} s | {wall / len(results):.1f} s | "
            + " | ".join(shares)
            + " |"
        )
        total_runs, total_s = total_runs + len(results), total_s + wall
    print(f"| all | {total_runs} | {total_s:.0f} s | | " + " | " * (len(phases) - 1) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
