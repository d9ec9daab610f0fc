"""Where the deep-CNN training step spends its batch-norm time (docs/performance.md).

Prints, on this machine, medians of:

* the fixed costs any batch norm with affine parameters pays in this step before touching
  data: Adam over the 40 BN weights and biases (default, ``foreach``, ``fused``), and 20
  do-nothing ``autograd.Function`` nodes in one backward;
* the step with every BN layer forced onto bnlab's fused kernels, with timers around the
  kernels, the kernel glue and the module forward (per step);
* the same fused kernel alone, and after a convolution / a sleep / a 16 MB read.

Usage: ``python scripts/deep_cnn_breakdown.py`` (about a minute; run it on a quiet machine).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from bnlab.bench.nets import build_variant, make_step
from bnlab.bench.timing import interleaved
from bnlab.norm.ops import dispatch
from bnlab.norm.ops.kernels import _numba as K
from bnlab.norm.ops.kernels import fused as FU
from bnlab.norm.ops.library import warmup


class _Nothing(torch.autograd.Function):
    """An autograd node that does no work: the floor of a Python-level batch norm."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(w)
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        (w,) = ctx.saved_tensors
        return dy, torch.zeros_like(w)


def fixed_costs() -> None:
    weights = [torch.zeros(8, requires_grad=True) for _ in range(20)]
    x0 = torch.randn(64, 8, 4, 4, requires_grad=True)

    def chain(nodes: bool) -> None:
        y = x0 * 1.0
        for w in weights:
            y = _Nothing.apply(y, w) if nodes else y
        y.sum().backward()

    t = interleaved({"nodes": lambda: chain(True), "plain": lambda: chain(False)}, budget_s=3.0)
    nodes = (t["nodes"].median - t["plain"].median) * 1e6
    print(f"20 do-nothing autograd.Functions, forward+backward: {nodes:.0f} us per step")
    steps: dict[str, Callable[[], object]] = {}
    variants: dict[str, dict[str, Any]] = {
        "default": {},
        "foreach": {"foreach": True},
        "fused": {"fused": True},
    }
    for name, options in variants.items():
        params = [torch.zeros(40, requires_grad=True) for _ in range(40)]
        for p in params:
            p.grad = torch.zeros(40)
        steps[name] = torch.optim.Adam(params, lr=0.002, **options).step
    for name, timing in interleaved(steps, budget_s=3.0).items():
        print(f"Adam ({name}) over 40 BN parameters: {timing.median * 1e6:.0f} us per step")


def in_network(steps: int = 30) -> None:
    times: dict[str, list[float]] = {}

    def timed(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any) -> Any:
            start = time.perf_counter()
            out = fn(*args)
            times.setdefault(name, []).append(time.perf_counter() - start)
            return out

        return wrapper

    saved = dict(dispatch._FUSED_MIN_TRAIN_NUMEL), dispatch._FUSED_MIN_NUMEL
    patched = ["rows_forward_train", "channel_forward_train", "rows_backward", "channel_backward"]
    originals = {name: getattr(K, name) for name in patched}
    glue = FU.forward, FU.backward
    try:
        dispatch._FUSED_MIN_TRAIN_NUMEL.update(contiguous=0, channels_last=0)
        dispatch._FUSED_MIN_NUMEL = 0
        for name in patched:
            setattr(K, name, timed(name, originals[name]))
        FU.forward = timed("forward (glue + kernel)", FU.forward)
        FU.backward = timed("backward (glue + kernel)", FU.backward)
        step = make_step(build_variant("bnlab-bn"), 64)
        for _ in range(10):
            step()
        times.clear()
        for _ in range(steps):
            step()
    finally:
        dispatch._FUSED_MIN_TRAIN_NUMEL.update(saved[0])
        dispatch._FUSED_MIN_NUMEL = saved[1]
        for name, fn in originals.items():
            setattr(K, name, fn)
        FU.forward, FU.backward = glue
    print(f"deep-cnn step, every BN layer fused, per step ({steps} steps):")
    for name, values in times.items():
        print(f"  {name:32s} {sum(values) / steps * 1e3:6.2f} ms ({len(values) // steps} calls)")


def cold_kernel() -> None:
    x = torch.randn(64, 8, 28, 28)
    c = x.shape[1]
    threads = FU._threads(x.numel())
    plan = FU.plan_for(x, threads)
    xv, y = plan.view(x), torch.empty_like(x)
    yv = plan.out_view(y)
    w, b, rm, rv = (
        np.ones(c, np.float32),
        np.zeros(c, np.float32),
        np.zeros(c, np.float32),
        np.ones(c, np.float32),
    )
    mean, invstd = np.empty(c), np.empty(c)

    def kernel() -> None:
        K.channel_forward_train(xv, w, b, 1e-3, False, yv, mean, invstd, rm, rv, 0.01, plan.rep)

    conv_in, conv_w = torch.randn(64, 8, 28, 28), torch.randn(8, 8, 3, 3)
    big = np.random.rand(4_000_000).astype(np.float32)
    befores: dict[str, Callable[[], object]] = {
        "alone": lambda: None,
        "after a convolution": lambda: torch.conv2d(conv_in, conv_w, padding=1),
        "after a 1 ms sleep": lambda: time.sleep(0.001),
        "after reading 16 MB": big.sum,
    }
    print("fused forward kernel, 64x8x28x28, two threads:")
    for name, before in befores.items():
        samples = []
        for _ in range(200):
            before()
            start = time.perf_counter()
            kernel()
            samples.append(time.perf_counter() - start)
        print(f"  {name:22s} {statistics.median(samples) * 1e6:6.0f} us")


def main() -> None:
    warmup((torch.float32,))
    fixed_costs()
    in_network()
    cold_kernel()


if __name__ == "__main__":
    main()
