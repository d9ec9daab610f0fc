"""The reference implementation: BatchNormFunction's analytic backward (first and second
order), agreement with autograd through the plain formula, and Alg. 2 population stats.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import Tensor

from bnlab.norm.ops.functional import batch_stats, normalize
from bnlab.norm.ops.reference import BatchNormFunction, batch_norm_reference


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


def apply_training(x: Tensor, w: Tensor | None, b: Tensor | None) -> tuple[Tensor, ...]:
    mean, var = batch_stats(x.detach())
    out: tuple[Tensor, ...] = BatchNormFunction.apply(x, mean, var, w, b, 1e-5, True)
    return out


@pytest.mark.parametrize(
    ("shape", "fmt"),
    [((5, 2), None), ((3, 2, 4), None), ((2, 3, 3, 2), torch.channels_last), ((4, 1, 3), None)],
)
@pytest.mark.parametrize("affine", [True, False])
def test_function_gradcheck_all_outputs(
    shape: tuple[int, ...], fmt: torch.memory_format | None, affine: bool
) -> None:
    # Checks dx through y, xhat AND invstd: the paths double backward relies on.
    x = torch.randn(shape, dtype=torch.float64)
    if fmt is not None:
        x = x.to(memory_format=fmt)
    x.requires_grad_()
    c = shape[1]
    wb = [torch.randn(c, dtype=torch.float64, requires_grad=True) for _ in range(2)]

    def fn(x: Tensor, *p: Tensor) -> tuple[Tensor, ...]:
        return apply_training(x, *(p if affine else (None, None)))

    inputs = (x, *wb) if affine else (x,)
    assert torch.autograd.gradcheck(fn, inputs)
    assert torch.autograd.gradgradcheck(fn, inputs)


def test_function_gradcheck_with_population_statistics() -> None:
    x = torch.randn(4, 3, 2, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)
    mean, var = torch.randn(3, dtype=torch.float64), torch.rand(3, dtype=torch.float64) + 0.5

    def fn(*a: Tensor) -> tuple[Tensor, ...]:
        out: tuple[Tensor, ...] = BatchNormFunction.apply(a[0], mean, var, a[1], a[2], 1e-3, False)
        return out

    assert torch.autograd.gradcheck(fn, (x, w, b))
    assert torch.autograd.gradgradcheck(fn, (x, w, b))


def test_backward_is_the_custom_function_and_matches_autograd_of_the_formula() -> None:
    x = torch.randn(6, 3, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)
    y = batch_norm_reference(x, None, None, w, b, training=True)
    assert y.grad_fn is not None and "BatchNormFunction" in type(y.grad_fn).__name__
    # The same expression differentiated by autograd (statistics kept in the graph).
    mean, var = batch_stats(x)
    y_auto = normalize(x, mean, var, w, b, 1e-5)
    torch.testing.assert_close(y, y_auto, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(y)
    ours = torch.autograd.grad((y * g).sum(), (x, w, b))
    auto = torch.autograd.grad((y_auto * g).sum(), (x, w, b))
    for a, e in zip(ours, auto, strict=True):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-10)


def test_training_gradient_of_a_plain_sum_is_zero() -> None:
    # sum(xhat) is 0 for any x, so d sum(y) / dx must vanish (the mean path at work).
    x = torch.randn(7, 2, dtype=torch.float64, requires_grad=True)
    batch_norm_reference(x, None, None, training=True).sum().backward()
    assert x.grad is not None
    assert x.grad.abs().max().item() < 1e-12


def test_population_statistics_follow_algorithm_2() -> None:
    x1, x2 = torch.randn(10, 3, dtype=torch.float64), torch.randn(10, 3, dtype=torch.float64)
    rm, rv = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    batch_norm_reference(x1, rm, rv, training=True, momentum=0.2)
    batch_norm_reference(x2, rm, rv, training=True, momentum=0.2)
    m1, m2 = x1.mean(0), x2.mean(0)
    v1, v2 = x1.var(0, unbiased=True), x2.var(0, unbiased=True)  # Bessel-corrected
    torch.testing.assert_close(rm, 0.8 * (0.8 * 0 + 0.2 * m1) + 0.2 * m2)
    torch.testing.assert_close(rv, 0.8 * (0.8 * 1 + 0.2 * v1) + 0.2 * v2)
    # Inference normalizes with them and leaves them alone.
    y = batch_norm_reference(x1, rm, rv, training=False, eps=0.0)
    torch.testing.assert_close(y, (x1 - rm) / rv.sqrt())
    torch.testing.assert_close(rm, 0.8 * (0.8 * 0 + 0.2 * m1) + 0.2 * m2)


def test_reference_validates_its_arguments() -> None:
    with pytest.raises(ValueError, match="variance of a single value is undefined"):
        batch_norm_reference(torch.randn(1, 4), None, None, training=True)
    with pytest.raises(ValueError, match=r"running_var must have shape \(4,\)"):
        batch_norm_reference(torch.randn(3, 4), torch.zeros(4), torch.ones(5), training=False)
