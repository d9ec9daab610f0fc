"""The functional batch-norm math: statistics, normalize, the running update, the decay
convention, numerical robustness, and ``batch_norm`` against torch.nn.functional on
every registered backend (a backend registered later is tested by the same cases).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from bnlab.norm.ops import dispatch
from bnlab.norm.ops.functional import (
    batch_norm,
    batch_stats,
    decay_from_momentum,
    momentum_from_decay,
    normalize,
    stats_dtype,
    unbiased_var,
    update_running_stats,
)

BACKENDS = dispatch.available_backends()
TOL = {torch.float64: 1e-10, torch.float32: 1e-5}


def assert_close(actual: Tensor, expected: Tensor, dtype: torch.dtype) -> None:
    """Relative closeness at the project tolerance, scaled by the tensor's magnitude."""
    tol = TOL[dtype]
    scale = max(1.0, float(expected.detach().abs().max())) if expected.numel() else 1.0
    torch.testing.assert_close(
        actual.detach(), expected.detach(), rtol=tol, atol=tol * scale, check_dtype=False
    )


def oracle_stats(x: Tensor, channel_dim: int = 1) -> tuple[Tensor, Tensor]:
    """float64 two-pass mean and biased variance, straight from the definition."""
    xd = x.double().movedim(channel_dim, 0).reshape(x.shape[channel_dim], -1)
    mean = xd.mean(1)
    return mean, ((xd - mean[:, None]) ** 2).mean(1)


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Run this file's tiny tensors on one intra-op thread, restored afterwards.

    On a shared 2-core machine, a second OpenMP thread waits at every parallel region
    for a descheduled peer: measured 80 s vs 8 s for the norm tests under load.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# -- batch_stats ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "channel_dim", "fmt"),
    [
        ((7, 3), 1, None),
        ((4, 5, 9), 1, None),
        ((3, 4, 5, 7), 1, torch.channels_last),
        ((2, 3, 3, 4, 5), 1, torch.channels_last_3d),
        ((3, 5, 7, 4), -1, None),  # NHWC, as the seeds' low-level tf.nn code uses
        ((6, 1), 1, None),
    ],
)
def test_batch_stats_matches_float64_definition(
    shape: tuple[int, ...], channel_dim: int, fmt: torch.memory_format | None
) -> None:
    x = torch.randn(shape) * 3 + 2
    if fmt is not None:
        x = x.to(memory_format=fmt)
    mean, var = batch_stats(x, channel_dim)
    ref_mean, ref_var = oracle_stats(x, channel_dim)
    assert mean.shape == var.shape == (shape[channel_dim],)
    torch.testing.assert_close(mean, ref_mean, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(var, ref_var, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize(
    ("dtype", "expected"),
    [
        (torch.float16, torch.float32),
        (torch.bfloat16, torch.float32),
        (torch.float32, torch.float64),
        (torch.float64, torch.float64),
    ],
)
def test_stats_are_one_step_wider_than_the_input(dtype: torch.dtype, expected: torch.dtype) -> None:
    x = torch.randn(6, 2).to(dtype)
    mean, var = batch_stats(x)
    assert stats_dtype(dtype) == expected
    assert mean.dtype == var.dtype == expected
    ref_mean, ref_var = oracle_stats(x)
    torch.testing.assert_close(mean.double(), ref_mean, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(var.double(), ref_var, rtol=1e-5, atol=1e-6)


def test_batch_stats_is_differentiable() -> None:
    x = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: batch_stats(t), (x,))


def test_batch_stats_rejects_bad_input() -> None:
    with pytest.raises(TypeError, match="floating-point"):
        batch_stats(torch.ones(4, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"at least 2-D.*\(5,\)"):
        batch_stats(torch.ones(5))


# -- numerical robustness --------------------------------------------------------------------


def large_offset_batch(channel_dim: int = 1) -> Tensor:
    """float32 channels with mean 1e4 and std 1e-2 (the issue's robustness case)."""
    g = torch.Generator().manual_seed(1)
    shape = (16, 4, 6, 6) if channel_dim == 1 else (16, 6, 6, 4)
    x64 = 1e4 + 1e-2 * torch.randn(shape, generator=g, dtype=torch.float64)
    return x64.float()


def exact_normalized(x: Tensor, eps: float, channel_dim: int = 1) -> Tensor:
    mean, var = oracle_stats(x, channel_dim)
    shape = [1] * x.dim()
    shape[channel_dim] = -1
    return (x.double() - mean.reshape(shape)) / torch.sqrt(var.reshape(shape) + eps)


@pytest.mark.parametrize("channel_dim", [1, -1])
def test_large_offset_keeps_normalized_error_small(channel_dim: int) -> None:
    x = large_offset_batch(channel_dim)
    eps = 1e-5
    mean, var = batch_stats(x, channel_dim)
    y = normalize(x, mean, var, None, None, eps, channel_dim)
    err = (y.double() - exact_normalized(x, eps, channel_dim)).abs().max().item()
    assert y.dtype == torch.float32
    assert err < 1e-3, f"normalized error {err:.2e} at mean 1e4, std 1e-2"


def test_large_offset_reference_backend_and_naive_float32_fails() -> None:
    x = large_offset_batch()
    eps = 1e-5
    exact = exact_normalized(x, eps)
    y = batch_norm(x, None, None, training=True, eps=eps, backend="reference")
    assert (y.double() - exact).abs().max().item() < 1e-3
    # The hazard is real: a float32 mean alone is off by a large part of a std here.
    naive = (x - x.mean((0, 2, 3), keepdim=True)) / torch.sqrt(
        x.var((0, 2, 3), unbiased=False, keepdim=True) + eps
    )
    assert (naive.double() - exact).abs().max().item() > 1e-3


# -- normalize -------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
def test_normalize_formula_and_memory_format(fmt: torch.memory_format) -> None:
    x = torch.randn(3, 4, 5, 3, dtype=torch.float64).to(memory_format=fmt)
    mean, var = torch.randn(4, dtype=torch.float64), torch.rand(4, dtype=torch.float64) + 0.1
    w, b = torch.randn(4, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
    y = normalize(x, mean, var, w, b, 1e-3)
    s = (1, 4, 1, 1)
    expected = (x - mean.view(s)) / torch.sqrt(var.view(s) + 1e-3) * w.view(s) + b.view(s)
    torch.testing.assert_close(y, expected, rtol=1e-12, atol=1e-12)
    assert y.is_contiguous(memory_format=fmt)


def test_normalize_half_input_computes_in_float32() -> None:
    x = torch.randn(8, 3).half()
    mean, var = batch_stats(x)
    y = normalize(x, mean, var, None, None, 1e-5)
    expected = normalize(x.float(), mean, var, None, None, 1e-5)
    assert y.dtype == torch.float16
    torch.testing.assert_close(y.float(), expected, rtol=1e-3, atol=1e-3)


def test_normalize_gradients_through_autograd() -> None:
    x = torch.randn(4, 2, 3, dtype=torch.float64, requires_grad=True)
    mean = torch.randn(2, dtype=torch.float64, requires_grad=True)
    var = (torch.rand(2, dtype=torch.float64) + 0.5).requires_grad_()
    w = torch.randn(2, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *a: normalize(*a, 1e-5), (x, mean, var, w, b))


# -- running statistics and the decay convention ---------------------------------------------


def test_update_running_stats_follows_pytorch_convention() -> None:
    rm, rv = torch.tensor([1.0, 2.0]), torch.tensor([3.0, 4.0])
    bm, bv = torch.tensor([5.0, 6.0]), torch.tensor([7.0, 8.0])
    update_running_stats(rm, rv, bm, bv, momentum=0.25)
    torch.testing.assert_close(rm, torch.tensor([0.75 * 1 + 0.25 * 5, 0.75 * 2 + 0.25 * 6]))
    torch.testing.assert_close(rv, torch.tensor([0.75 * 3 + 0.25 * 7, 0.75 * 4 + 0.25 * 8]))
    with pytest.raises(ValueError, match=r"momentum must be in \[0, 1\]; got 1.5"):
        update_running_stats(rm, rv, bm, bv, momentum=1.5)


def test_unbiased_var_is_bessel_corrected() -> None:
    x = torch.randn(5, 3, dtype=torch.float64)
    _, var = batch_stats(x)
    torch.testing.assert_close(unbiased_var(var, 5), x.var(0, unbiased=True))
    with pytest.raises(ValueError, match="at least 2 values"):
        unbiased_var(var, 1)


def test_decay_is_one_minus_momentum() -> None:
    # TF/Keras decay 0.99 (weight of the old value) is PyTorch momentum 0.01.
    assert momentum_from_decay(0.99) == pytest.approx(0.01, abs=1e-15)
    assert decay_from_momentum(0.1) == pytest.approx(0.9, abs=1e-15)
    assert momentum_from_decay(decay_from_momentum(0.3)) == pytest.approx(0.3, abs=1e-15)
    # The two update rules agree step by step: TF's with decay, ours with the momentum.
    decay = 0.99
    tf_moving = torch.tensor([2.0], dtype=torch.float64)
    ours = tf_moving.clone()
    for batch in (5.0, -1.0, 3.0):
        tf_moving = decay * tf_moving + (1 - decay) * batch
        b = torch.tensor([batch], dtype=torch.float64)
        update_running_stats(ours, None, b, b, momentum_from_decay(decay))
    torch.testing.assert_close(ours, tf_moving, rtol=1e-14, atol=1e-14)


def test_decay_conversion_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match=r"decay must be in \[0, 1\].*got 99"):
        momentum_from_decay(99)
    with pytest.raises(ValueError, match=r"momentum must be in \[0, 1\]"):
        decay_from_momentum(-0.1)
    with pytest.raises(TypeError, match="cumulative average"):
        decay_from_momentum(None)  # type: ignore[arg-type]


# -- batch_norm against torch.nn.functional.batch_norm ---------------------------------------

FUNCTIONAL_CASES = [
    # shape, memory format, training, with running stats, affine, momentum, eps
    ((6, 3), None, True, True, True, 0.1, 1e-5),
    ((6, 3), None, False, True, True, 0.1, 1e-5),
    ((4, 2, 7), None, True, False, False, 0.1, 1e-3),
    ((3, 1, 5), None, True, True, False, 1.0, 1e-5),
    ((3, 4, 5, 3), torch.channels_last, True, True, True, 0.0, 1e-5),
    ((3, 4, 5, 3), torch.channels_last, False, True, False, 0.1, 1e-3),
    ((2, 3, 3, 2, 5), torch.channels_last_3d, True, True, True, 0.5, 1e-5),
    ((2, 3, 3, 2, 5), None, False, True, True, 0.1, 1e-5),
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("case", FUNCTIONAL_CASES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_batch_norm_matches_torch_functional(backend: str, case: tuple, dtype: torch.dtype) -> None:
    shape, fmt, training, with_running, affine, momentum, eps = case
    c = shape[1]
    x = torch.randn(shape, dtype=dtype) * 2 + 0.5
    if fmt is not None:
        x = x.to(memory_format=fmt)
    grad_out = torch.randn(shape, dtype=dtype)
    w0, b0 = torch.rand(c, dtype=dtype) + 0.5, torch.randn(c, dtype=dtype)
    runs = []
    for fn in ("ours", "torch"):
        xi = x.detach().clone().requires_grad_()
        w = w0.clone().requires_grad_() if affine else None
        b = b0.clone().requires_grad_() if affine else None
        rm = torch.linspace(-1, 1, c, dtype=dtype) if with_running else None
        rv = torch.linspace(0.5, 2, c, dtype=dtype) if with_running else None
        for _ in range(3):  # several steps so running statistics accumulate
            if fn == "ours":
                y = batch_norm(xi, rm, rv, w, b, training, momentum, eps, backend=backend)
            else:
                y = F.batch_norm(xi, rm, rv, w, b, training, momentum, eps)
        params = [t for t in (xi, w, b) if t is not None]
        grads = torch.autograd.grad((y * grad_out).sum(), params)
        runs.append((y, grads, rm, rv))
    (y, grads, rm, rv), (ty, tgrads, trm, trv) = runs
    assert_close(y, ty, dtype)
    assert y.dtype == dtype
    if fmt is not None:
        assert y.is_contiguous(memory_format=fmt)
    for g, tg in zip(grads, tgrads, strict=True):
        assert_close(g, tg, dtype)
    if with_running:
        assert rm is not None and trm is not None and rv is not None and trv is not None
        assert_close(rm, trm, dtype)
        assert_close(rv, trv, dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("affine", [True, False])
def test_gradcheck_and_gradgradcheck_float64(backend: str, training: bool, affine: bool) -> None:
    # Small on purpose: gradgradcheck's numerical Jacobians grow with the square of numel.
    x = torch.randn(3, 2, 2, dtype=torch.float64, requires_grad=True)
    params = [torch.randn(2, dtype=torch.float64, requires_grad=True) for _ in range(2)]
    rm = torch.randn(2, dtype=torch.float64)
    rv = torch.rand(2, dtype=torch.float64) + 0.5

    def fn(x: Tensor, *wb: Tensor) -> Tensor:
        w, b = wb if affine else (None, None)
        # Fresh running stats each call: gradcheck calls fn many times.
        return batch_norm(x, rm.clone(), rv.clone(), w, b, training, 0.1, 1e-5, backend=backend)

    inputs = (x, *params) if affine else (x,)
    assert torch.autograd.gradcheck(fn, inputs)
    assert torch.autograd.gradgradcheck(fn, inputs)


# -- special inputs --------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(0, 3), (0, 3, 4, 4), (2, 3, 0, 4)])
def test_empty_batch_behaves_like_torch(backend: str, shape: tuple[int, ...]) -> None:
    x = torch.randn(shape, requires_grad=True)
    w = torch.ones(3, requires_grad=True)
    b = torch.zeros(3, requires_grad=True)
    rm, rv = torch.full((3,), 2.0), torch.full((3,), 3.0)
    y = batch_norm(x, rm, rv, w, b, training=True, backend=backend)
    assert y.shape == shape
    torch.testing.assert_close(rm, torch.full((3,), 2.0))  # untouched, as in torch
    torch.testing.assert_close(rv, torch.full((3,), 3.0))
    y.sum().backward()
    assert w.grad is not None and b.grad is not None
    assert torch.equal(w.grad, torch.zeros(3)) and torch.equal(b.grad, torch.zeros(3))


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_propagates_and_is_not_absorbed(backend: str) -> None:
    x = torch.randn(4, 3, 2, 2)
    x[1, 0, 1, 0] = math.nan
    rm, rv = torch.zeros(3), torch.ones(3)
    y = batch_norm(x, rm, rv, training=True, backend=backend)
    assert torch.isnan(y[:, 0]).all()  # the channel's mean and variance are NaN
    assert torch.isfinite(y[:, 1:]).all()
    assert torch.isnan(rm[0]) and torch.isnan(rv[0]) and torch.isfinite(rm[1:]).all()
    y_eval = batch_norm(x, torch.zeros(3), torch.ones(3), training=False, backend=backend)
    assert torch.isnan(y_eval).sum() == 1 and torch.isnan(y_eval[1, 0, 1, 0])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("half", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("training", [True, False])
def test_half_input_uses_float32_statistics(
    backend: str, half: torch.dtype, training: bool
) -> None:
    x = (torch.randn(8, 3, 4, 4) * 2 + 1).to(half)
    w, b = torch.rand(3) + 0.5, torch.randn(3)
    rm, rv = torch.zeros(3), torch.ones(3)  # float32 buffers with a half input, as torch allows
    y = batch_norm(x, rm, rv, w, b, training, 0.1, 1e-5, backend=backend)
    rm32, rv32 = torch.zeros(3), torch.ones(3)
    expected = F.batch_norm(x.float(), rm32, rv32, w, b, training, 0.1, 1e-5)
    assert y.dtype == half and rm.dtype == torch.float32
    tol = 1e-2 if half == torch.float16 else 5e-2
    torch.testing.assert_close(y.float(), expected, rtol=tol, atol=tol)
    torch.testing.assert_close(rm, rm32, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(rv, rv32, rtol=1e-4, atol=1e-4)


# -- bad arguments ---------------------------------------------------------------------------


def test_bad_arguments_raise_with_expected_and_received() -> None:
    x = torch.randn(4, 3, 5)
    with pytest.raises(ValueError, match=r"at least 2 dims; got shape \(4,\)"):
        batch_norm(torch.randn(4), None, None, training=True)
    with pytest.raises(TypeError, match="floating-point"):
        batch_norm(torch.ones(4, 3, dtype=torch.int32), None, None, training=True)
    with pytest.raises(ValueError, match=r"running_mean must have shape \(3,\).*got shape \(4,\)"):
        batch_norm(x, torch.zeros(4), torch.ones(4), training=True)
    with pytest.raises(ValueError, match=r"weight must have shape \(3,\).*got shape \(2,\)"):
        batch_norm(x, None, None, torch.ones(2), training=True)
    with pytest.raises(TypeError, match=r"running_var has dtype torch\.float32 but input"):
        batch_norm(x.double(), torch.zeros(3).double(), torch.ones(3), training=True)
    with pytest.raises(ValueError, match=r"eval mode.*running_mean and running_var are None"):
        batch_norm(x, None, None, training=False)
    with pytest.raises(ValueError, match="given together"):
        batch_norm(x, torch.zeros(3), None, training=True)
    with pytest.raises(ValueError, match=r"momentum must be a number in \[0, 1\]"):
        batch_norm(x, None, None, training=True, momentum=2.0)
    with pytest.raises(ValueError, match="eps must be a finite number"):
        batch_norm(x, None, None, training=True, eps=-1.0)


def test_one_value_per_channel_in_training_says_why_and_what_to_do() -> None:
    x = torch.randn(1, 3)
    with pytest.raises(ValueError) as info:
        batch_norm(x, None, None, training=True)
    message = str(info.value)
    assert "(1, 3)" in message
    assert "variance of a single value is undefined" in message
    assert "eval mode" in message and "larger batch" in message
    # Inference with population statistics is fine.
    y = batch_norm(x, torch.zeros(3), torch.ones(3), training=False)
    assert y.shape == (1, 3)
