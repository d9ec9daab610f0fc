"""The zoo benchmark row: a real model's training step with bnlab's batch norm over torch's.

torchvision's ResNet-18 and ResNet-50 (width 64, 224x224, batch 16, ``weights=None``), one
SGD step (forward, cross-entropy, backward, update), eager and under ``torch.compile``,
with torch's batch norm and with bnlab's (``bnlab.convert_batchnorm``, "auto" backend), the
four candidates of a model timed in the same interleaved rounds
(:func:`bnlab.bench.timing.interleaved`), so their ratios are measured side by side. The
profiler gives batch norm's share of torch's eager step: the most a faster batch norm
could save there. The goal: bnlab / torch <= 1.02 on every row, eager and compiled.

Run it on a quiet machine (nothing else on the cores)::

    python scripts/zoo_step.py --out docs/bench/zoo-step-DATE.json

It prints the table and writes JSON (atomically) with the environment and every timing.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

import bnlab
from bnlab.bench.timing import Timing, interleaved, paired_ratio
from bnlab.bench.zoo import import_torchvision

MODELS = ("resnet18", "resnet50")
CANDIDATES = ("torch", "bnlab", "torch-compiled", "bnlab-compiled")


def _step(net: Callable[[Tensor], Tensor], params: Any, x: Tensor, y: Tensor) -> Callable[[], None]:
    optimizer = torch.optim.SGD(params, lr=1e-3, momentum=0.9)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(net(x), y).backward()
        optimizer.step()

    return step


def _bn_share(model: nn.Module, step: Callable[[], None]) -> float:
    """Batch norm's share of one eager step's self CPU time (torch profiler, 2 steps)."""
    from torch.profiler import ProfilerActivity, profile

    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(2):
            step()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    bn = sum(e.self_cpu_time_total for e in events if "batch_norm" in e.key)
    return bn / total if total else float("nan")


def row(arch: str, batch: int, size: int, budget_s: float, rounds: int) -> dict[str, Any]:
    """Time the four candidates of one model; return the row as a dict."""
    import_torchvision()
    import torchvision.models

    torch.manual_seed(0)
    theirs = torchvision.models.get_model(arch, weights=None).train()
    ours = bnlab.convert_batchnorm(copy.deepcopy(theirs)).train()
    x = torch.randn(batch, 3, size, size)
    y = torch.randint(0, 1000, (batch,))
    steps = {
        "torch": _step(theirs, theirs.parameters(), x, y),
        "bnlab": _step(ours, ours.parameters(), x, y),
        "torch-compiled": _step(torch.compile(theirs), theirs.parameters(), x, y),
        "bnlab-compiled": _step(torch.compile(ours), ours.parameters(), x, y),
    }
    share = _bn_share(theirs, steps["torch"])
    times: dict[str, Timing] = interleaved(
        steps, min_rounds=rounds, max_rounds=rounds, budget_s=budget_s, warmup=2
    )
    return {
        "model": arch,
        "batch": batch,
        "image_size": size,
        "bn_share_of_torch_eager_step": share,
        "times": {name: t.as_dict() for name, t in times.items()},
        "eager_ratio": paired_ratio(times["bnlab"], times["torch"]),
        "compiled_ratio": paired_ratio(times["bnlab-compiled"], times["torch-compiled"]),
    }


def _revision() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short=10", "HEAD"], capture_output=True, text=True, check=True
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS), help="torchvision architectures")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds per row")
    parser.add_argument("--out", type=Path, help="write the JSON record here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for arch in args.models.split(","):
        print(f"[zoo-step] {arch}: compiling and timing ...", file=sys.stderr, flush=True)
        rows.append(row(arch, args.batch, args.size, budget_s=0.0, rounds=args.rounds))
    header = f"{'model':<10} {'BN share':>9} {'torch ms':>9} {'bnlab/torch':>12}"
    header += f" {'compiled ms':>12} {'bnlab/torch compiled':>21}"
    print(header)
    for r in rows:
        t = r["times"]
        print(
            f"{r['model']:<10} {r['bn_share_of_torch_eager_step']:>9.1%} "
            f"{t['torch']['median_s'] * 1e3:>9.0f} {r['eager_ratio']:>12.3f} "
            f"{t['torch-compiled']['median_s'] * 1e3:>12.0f} {r['compiled_ratio']:>21.3f}"
        )
    if args.out:
        record = {
            "revision": _revision(),
            "torch": torch.__version__,
            "bnlab": bnlab.__version__,
            "threads": args.threads,
            "machine": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "rows": rows,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=args.out.parent, delete=False) as f:
            json.dump(record, f, indent=1)
        os.replace(f.name, args.out)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
