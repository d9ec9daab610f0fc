"""The fused batch norm's two routes side by side: the ``torch.library`` operator against
the eager autograd Function, with torch's native kernel for scale (docs/performance.md).

Both routes run the same numba kernels; the difference is the glue around them. Each row
is one training forward+backward of the deep CNN's layer shapes (batch 64, channels-last
float32, on this process's torch threads), timed in interleaved rounds (medians,
``bnlab.bench.timing.interleaved``). Prints a Markdown table and writes JSON.

Usage: ``python scripts/fused_routes.py [--out PATH] [--budget SECONDS]``
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from bnlab.bench.shapes import deep_cnn_shapes
from bnlab.bench.timing import interleaved
from bnlab.norm.ops.library import _EagerFusedBatchNorm, warmup
from bnlab.train.env import capture_environment


def _candidates(shape: tuple[int, ...]) -> dict[str, Callable[[], object]]:
    x = torch.randn(shape)
    if x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    c = shape[1]
    w = torch.ones(c, requires_grad=True)
    b = torch.zeros(c, requires_grad=True)
    rm, rv = torch.zeros(c), torch.ones(c)
    g = torch.randn_like(x)

    def operator() -> None:
        y, *_ = torch.ops.bnlab.fused_batch_norm(x, w, b, rm, rv, True, 0.01, 1e-3, False)
        y.backward(g)

    def eager() -> None:
        _EagerFusedBatchNorm.apply(x, w, b, rm, rv, True, 0.01, 1e-3, False).backward(g)

    def native() -> None:
        F.batch_norm(x, rm, rv, w, b, True, 0.01, 1e-3).backward(g)

    return {"operator": operator, "eager": eager, "native": native}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("fused-routes.json"))
    parser.add_argument("--budget", type=float, default=1.0, help="seconds of rounds per shape")
    args = parser.parse_args()
    warmup((torch.float32,))
    rows = []
    print("| shape | operator ms | eager ms | native ms | operator - eager |")
    print("|---|---|---|---|---|")
    for bench_shape in deep_cnn_shapes():
        shape = tuple(bench_shape.shape)
        times = interleaved(_candidates(shape), budget_s=args.budget)
        ms = {name: t.median * 1e3 for name, t in times.items()}
        rows.append({"shape": list(shape), **{f"{k}_ms": v for k, v in ms.items()}})
        label = "x".join(map(str, shape))
        print(
            f"| {label} | {ms['operator']:.3f} | {ms['eager']:.3f} | {ms['native']:.3f} "
            f"| {ms['operator'] - ms['eager']:.3f} |"
        )
    env = capture_environment()
    args.out.write_text(json.dumps({"rows": rows, "environment": env}, indent=2) + "\n")
    print(f"\nrevision {env['git']['revision']}, {env['torch_threads']} torch thread(s)")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
