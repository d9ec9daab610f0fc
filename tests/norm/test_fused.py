"""The fused numba kernels against torch.nn.functional.batch_norm, on every schedule.

Covers both memory schedules (channel slices, row blocks) and both layouts, float32 and
float64, training and eval, the fused ReLU, large offsets, NaN, odd strides, the running
buffers' write-back path, the "auto" rule, and the on-disk compilation cache.
"""

from __future__ import annotations

import copy
import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import bnlab
from bnlab.norm.ops import dispatch
from bnlab.norm.ops.kernels import fused as fused_module
from bnlab.norm.ops.kernels import plan_for
from bnlab.norm.ops.library import fused_batch_norm, is_supported, warmup

# (shape, memory format, expected schedule)
LAYOUTS = [
    ((4, 6, 9, 9), None, "channel"),  # NCHW, long rows: one channel slice per task
    ((5, 3, 4, 3), None, "rows"),  # NCHW, short rows: (N, C*L) row blocks
    ((4, 6, 5, 3), torch.channels_last, "rows"),  # NHWC: (N*H*W, C) rows, widened
    ((7, 5), None, "rows"),  # (N, C)
    ((2, 3, 2, 3, 4), torch.channels_last_3d, "rows"),
    ((3, 2, 70), None, "channel"),  # (N, C, L)
    ((3, 2, 40), None, "rows"),  # rows shorter than _MIN_CHANNEL_ROW
]


def _inputs(
    shape: tuple[int, ...], fmt: torch.memory_format | None, dtype: torch.dtype
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    c = shape[1]
    x = torch.randn(shape, dtype=dtype) * 3 + 2
    if fmt is not None:
        x = x.contiguous(memory_format=fmt)
    grad = torch.randn(shape, dtype=dtype)
    w, b = torch.rand(c, dtype=dtype) + 0.5, torch.randn(c, dtype=dtype)
    rm, rv = torch.randn(c, dtype=dtype), torch.rand(c, dtype=dtype) + 0.5
    return x, grad, w, b, rm, rv


def _assert_close(a: Tensor, b: Tensor, dtype: torch.dtype) -> None:
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    err = ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()
    assert err < tol, f"relative error {err:.2e} >= {tol:.0e}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda case: f"{case[0]}-{case[2]}")
@pytest.mark.parametrize("threads", ["by-size", "all"])
def test_matches_torch(
    layout: tuple,
    training: bool,
    relu: bool,
    dtype: torch.dtype,
    threads: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if threads == "all":  # these small tensors would run on one thread: use every thread
        monkeypatch.setattr(fused_module, "_SERIAL_MAX_NUMEL", 0)
    shape, fmt, schedule = layout
    x, grad, w0, b0, rm0, rv0 = _inputs(shape, fmt, dtype)
    assert plan_for(x, threads=2).schedule == schedule
    results = []
    for ours in (True, False):
        xi = x.clone().requires_grad_()
        w, b = w0.clone().requires_grad_(), b0.clone().requires_grad_()
        rm, rv = rm0.clone(), rv0.clone()
        if ours:
            y = fused_batch_norm(xi, rm, rv, w, b, training, 0.3, 1e-3, relu=relu)
        else:
            y = F.batch_norm(xi, rm, rv, w, b, training, 0.3, 1e-3)
            y = torch.relu(y) if relu else y
        y.backward(grad)
        results.append((y, xi.grad, w.grad, b.grad, rm, rv))
    for ours, theirs in zip(*results, strict=True):
        assert ours.dtype == theirs.dtype  # gradients cast back to the parameters' dtype
        _assert_close(ours, theirs, dtype)
    assert results[0][0].stride() == results[1][0].stride()  # memory format kept


@pytest.mark.parametrize("fmt", [None, torch.channels_last])
def test_without_affine_and_without_running_stats(fmt: torch.memory_format | None) -> None:
    x, grad, *_ = _inputs((4, 5, 6, 6), fmt, torch.float64)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya = fused_batch_norm(xa, None, None, None, None, training=True)
    yb = F.batch_norm(xb, None, None, None, None, training=True)
    ya.backward(grad)
    yb.backward(grad)
    _assert_close(ya, yb, torch.float64)
    _assert_close(xa.grad, xb.grad, torch.float64)


@pytest.mark.parametrize(
    "shape, fmt",
    [((8, 4, 16, 16), None), ((8, 4, 16, 16), torch.channels_last), ((6, 3, 2, 2), None)],
)
@pytest.mark.parametrize("relu", [False, True])
def test_large_offset_keeps_normalized_error_small(
    shape: tuple[int, ...], fmt: torch.memory_format | None, relu: bool
) -> None:
    # float32, mean 1e4, std 1e-2 per channel: a float32 mean alone is off by 5% of std.
    x = (torch.randn(shape, dtype=torch.float64) * 1e-2 + 1e4).float()
    if fmt is not None:
        x = x.contiguous(memory_format=fmt)
    exact = F.batch_norm(x.double(), None, None, training=True)
    exact = torch.relu(exact) if relu else exact
    y = fused_batch_norm(x, None, None, training=True, relu=relu)
    assert (y.double() - exact).abs().max().item() < 1e-3


def test_grad_output_in_another_layout_and_strided_input() -> None:
    base = torch.randn(6, 8, 7, 7, dtype=torch.float64)
    x = base[:, ::2]  # neither contiguous nor channels-last: computed on a copy
    assert not x.is_contiguous()
    grad = torch.randn(6, 4, 7, 7, dtype=torch.float64).contiguous(
        memory_format=torch.channels_last
    )
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya = fused_batch_norm(xa, None, None, training=True)
    yb = F.batch_norm(xb, None, None, training=True)
    ya.backward(grad)
    yb.backward(grad)
    _assert_close(ya, yb, torch.float64)
    _assert_close(xa.grad, xb.grad, torch.float64)
    x_cl = x.contiguous(memory_format=torch.channels_last).requires_grad_()
    y_cl = fused_batch_norm(x_cl, None, None, training=True)
    y_cl.backward(grad.contiguous())  # contiguous grad for a channels-last input
    _assert_close(x_cl.grad, xb.grad, torch.float64)


def test_running_buffers_that_are_views_are_updated() -> None:
    x = torch.randn(8, 3, 5, 5)
    store = torch.zeros(3, 2)
    store[:, 1] = 1.0
    rm, rv = store[:, 0], store[:, 1]  # strided views: updated through a copy
    fused_batch_norm(x, rm, rv, training=True, momentum=1.0)
    torch.testing.assert_close(store[:, 0], x.mean((0, 2, 3)))
    torch.testing.assert_close(store[:, 1], x.var((0, 2, 3)))


def test_nan_propagates_through_relu_and_statistics() -> None:
    x = torch.randn(4, 3, 6, 6)
    x[2, 1, 3, 3] = math.nan
    rm, rv = torch.zeros(3), torch.ones(3)
    y = fused_batch_norm(x, rm, rv, training=True, relu=True)
    assert torch.isnan(y[:, 1]).all() and torch.isfinite(y[:, [0, 2]]).all()
    assert torch.isnan(rv[1]) and torch.isfinite(rv[[0, 2]]).all()
    y_eval = fused_batch_norm(x, torch.zeros(3), torch.ones(3), training=False, relu=True)
    assert torch.isnan(y_eval).sum() == 1


def test_thread_count_follows_torch() -> None:
    x = torch.randn(16, 6, 10, 10, dtype=torch.float64).contiguous(
        memory_format=torch.channels_last
    )
    expected = F.batch_norm(x, None, None, training=True)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        _assert_close(fused_batch_norm(x, None, None, training=True), expected, torch.float64)
    finally:
        torch.set_num_threads(old)


def test_small_tensors_run_on_one_thread_and_keep_torchs_count() -> None:
    wanted = torch.get_num_threads()
    small = fused_module._SERIAL_MAX_NUMEL - 1
    assert fused_module._threads(small) == 1
    assert fused_module._threads(fused_module._SERIAL_MAX_NUMEL) == min(
        wanted, fused_module._MAX_THREADS
    )
    assert torch.get_num_threads() == wanted  # numba's setting never leaks into torch's


def test_unsupported_inputs_fall_back_to_the_reference() -> None:
    x = torch.randn(4, 3, 5, 5).to(torch.bfloat16)
    assert not is_supported(x)
    y = fused_batch_norm(x, None, None, training=True, relu=True)
    expected = torch.relu(F.batch_norm(x.float(), None, None, training=True))
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), expected, rtol=5e-2, atol=5e-2)
    empty = fused_batch_norm(torch.randn(0, 3, 2, 2), None, None, training=True)
    assert empty.shape == (0, 3, 2, 2)


def test_auto_rule_picks_fused_only_where_it_wins() -> None:
    assert "fused" in dispatch.available_backends()
    # torch.empty does not touch the pages: these cost no time, only address space.
    large = torch.empty(64, 64, 56, 56)  # 51 MB
    mid = torch.empty(250, 16, 32, 32)  # 16 MB, 4.1M values
    small = torch.empty(64, 8, 28, 28)
    image = torch.empty(1, 3, 512, 512).contiguous(memory_format=torch.channels_last)
    auto = dispatch._auto_rule
    assert auto(large, True) == "fused" and auto(large, False) == "native"  # eval: torch's
    assert auto(mid, True) == "fused" and auto(mid, False) == "native"
    assert auto(small, True) == "native" and auto(small, False) == "native"
    # Channels-last: torch is fast only with a multiple of 16 channels (docs/performance.md).
    assert auto(small.contiguous(memory_format=torch.channels_last), True) == "fused"
    stem = torch.empty(16, 16, 48, 48).contiguous(memory_format=torch.channels_last)
    assert auto(stem, True) == "native"
    assert auto(image, True) == "fused"  # channels-last with 3 channels: torch is slow there
    assert auto(large.half(), True) == "native"
    assert auto(torch.empty(64, 64, 56, 56, device="meta"), True) == "native"  # not on the CPU
    assert dispatch.resolve_backend("auto", torch.empty(2, 3), True) == "native"


def test_auto_rule_leaves_compiled_contiguous_training_to_inductor(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    large = torch.empty(16, 64, 112, 112)  # torchvision ResNet's stem at batch 16
    assert dispatch._auto_rule(large, True) == "fused"
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert dispatch._auto_rule(large, True) == "native"
    odd = torch.empty(64, 24, 56, 56).contiguous(memory_format=torch.channels_last)
    assert dispatch._auto_rule(odd, True) == "fused"


def test_auto_rule_takes_no_guard_on_a_dynamic_batch() -> None:
    # The rule must not branch on a symbolic size: torch.export with Dim("batch") at a size
    # where the kernel would engage, run at other batch sizes (one far below the limit).
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), bnlab.BatchNorm2d(16)).train()
    x = torch.randn(8, 3, 96, 96)  # 1.2M values per batch norm: "fused" when static
    assert dispatch._auto_rule(model[0](x), True) == "fused"
    batch = torch.export.Dim("batch", min=2)
    program = torch.export.export(model, (x,), dynamic_shapes=({0: batch},))
    reference = copy.deepcopy(model)
    for n in (2, 12):
        z = torch.randn(n, 3, 96, 96)
        torch.testing.assert_close(program.module()(z), reference(z), rtol=1e-4, atol=1e-4)


_FRESH_PROCESS = """
import torch
torch.set_num_threads(1)
from bnlab.norm.ops.library import warmup
seconds = warmup((torch.float32,))
print(torch.get_num_threads(), seconds)
"""


def test_fresh_process_loads_the_cache_and_keeps_torch_threads() -> None:
    warmup((torch.float32,))  # fills numba's on-disk cache if this process compiled
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    out = subprocess.run(
        [sys.executable, "-c", _FRESH_PROCESS], capture_output=True, text=True, env=env, check=True
    )
    threads, seconds = out.stdout.strip().splitlines()[-1].split()
    # Starting numba's OpenMP pool resets OpenMP's thread count; the glue restores torch's.
    assert int(threads) == 1
    # Compiling the float32 kernels takes 10-30 s; loading them from the cache well under 5.
    assert float(seconds) < 5.0, f"second process spent {seconds} s: numba's cache did not work"


def test_an_input_that_views_the_running_variance_is_normalized_as_given() -> None:
    # The running update writes into the input's memory; every backend must normalize the
    # batch as it was before the update (torch's own kernel reads it after).
    torch.manual_seed(0)
    x = torch.randn(4, 3, 5) + 2
    expected = F.batch_norm(x.clone(), None, None, training=True)
    for backend in ("native", "reference", "fused"):
        data = x.clone()
        rm, rv = torch.zeros(3), data[0, :, 0]  # rv is a view of the input
        y = bnlab.batch_norm(data, rm, rv, training=True, backend=backend)
        torch.testing.assert_close(y, expected, msg=backend)
        torch.testing.assert_close(rm, 0.1 * x.mean((0, 2)), msg=backend)
