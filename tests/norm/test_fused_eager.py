"""The fused batch norm's eager path (``library._EagerFusedBatchNorm``): the operator's
kernels and formula without ``torch.library``'s dispatch, bitwise the operator's results,
and only where nothing traces or transforms."""

from __future__ import annotations

import pytest
import torch
from torch.fx.experimental.proxy_tensor import make_fx
from torch.utils.flop_counter import FlopCounterMode

from bnlab.norm.ops import dispatch
from bnlab.norm.ops.library import batch_norm_fused

CL = torch.channels_last


def _case(shape: tuple[int, ...], fmt: torch.memory_format | None, dtype: torch.dtype):
    torch.manual_seed(0)
    x = torch.randn(shape, dtype=dtype) * 3 + 1
    if fmt is not None:
        x = x.contiguous(memory_format=fmt)
    c = shape[1]
    w = torch.rand(c, dtype=dtype) + 0.5
    b = torch.randn(c, dtype=dtype)
    g = torch.randn_like(x)
    return x, w, b, g


def _run(x, w, b, g, training: bool, relu: bool, op: bool):
    xr, wr, br = (t.clone().requires_grad_(True) for t in (x, w, b))
    rm, rv = torch.zeros(x.shape[1], dtype=x.dtype), torch.ones(x.shape[1], dtype=x.dtype)
    if op:
        y, _m, _i, new_mean, new_var = torch.ops.bnlab.fused_batch_norm(
            xr, wr, br, rm, rv, training, 0.1, 1e-5, relu
        )
        if training:
            rm, rv = new_mean, new_var
    else:
        y = batch_norm_fused(xr, rm, rv, wr, br, training, 0.1, 1e-5, relu=relu)
        assert type(y.grad_fn).__name__ == "_EagerFusedBatchNormBackward"
    y.backward(g)
    return y.detach(), rm, rv, xr.grad, wr.grad, br.grad


@pytest.mark.parametrize(
    "shape,fmt",
    [((64, 4, 28, 28), CL), ((32, 24, 7, 7), CL), ((16, 6, 5, 9), None), ((50, 7), None)],
)
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_eager_path_is_bitwise_the_operator(shape, fmt, training, relu, dtype) -> None:
    x, w, b, g = _case(shape, fmt, dtype)
    eager = _run(x, w, b, g, training, relu, op=False)
    op = _run(x, w, b, g, training, relu, op=True)
    for name, a, o in zip(
        ("y", "running_mean", "running_var", "dx", "dw", "db"), eager, op, strict=True
    ):
        assert torch.equal(a, o), name
        assert a.stride() == o.stride(), name


@pytest.mark.parametrize(
    "shape,fmt,training",
    [
        ((16, 64, 32, 32), None, True),  # 1M values: the "auto" rule's training size
        ((16, 64, 32, 32), CL, True),
    ],
)
def test_eager_path_is_the_operator_where_auto_picks_the_kernel(shape, fmt, training) -> None:
    x, w, b, g = _case(shape, fmt, torch.float32)
    assert dispatch.resolve_backend("auto", x, training) == "fused"
    eager = _run(x, w, b, g, training, False, op=False)
    op = _run(x, w, b, g, training, False, op=True)
    for name, a, o in zip(
        ("y", "running_mean", "running_var", "dx", "dw", "db"), eager, op, strict=True
    ):
        assert torch.equal(a, o), name


def test_eager_path_double_backward_matches_gradgradcheck() -> None:
    x, w, b, _g = _case((6, 3, 4), None, torch.float64)
    inputs = tuple(t.requires_grad_(True) for t in (x, w, b))

    def f(x, w, b):
        return batch_norm_fused(x, None, None, w, b, True, 0.1, 1e-5)

    assert torch.autograd.gradcheck(f, inputs)
    assert torch.autograd.gradgradcheck(f, inputs)


def test_only_gradients_asked_for_are_computed() -> None:
    x, w, b, g = _case((8, 3, 5), None, torch.float32)
    w.requires_grad_(True)
    y = batch_norm_fused(x, None, None, w, b, True, 0.1, 1e-5)
    y.backward(g)
    assert w.grad is not None and x.grad is None and b.grad is None


def test_no_grad_and_eval_update_nothing_they_should_not() -> None:
    x, w, b, _g = _case((8, 3, 5), None, torch.float32)
    rm, rv = torch.zeros(3), torch.ones(3)
    with torch.no_grad():
        batch_norm_fused(x, rm, rv, w, b, False, 0.1, 1e-5)
    assert torch.equal(rm, torch.zeros(3)) and torch.equal(rv, torch.ones(3))
    with torch.no_grad():
        batch_norm_fused(x, rm, rv, w, b, True, 0.1, 1e-5)
    assert torch.allclose(rm, 0.1 * x.mean(dim=(0, 2)))


def test_dispatch_modes_and_tracers_still_see_the_operator() -> None:
    x, w, b, _g = _case((8, 3, 5), None, torch.float32)
    rm, rv = torch.zeros(3), torch.ones(3)

    def f(x):
        return batch_norm_fused(x, rm, rv, w, b, True, 0.1, 1e-5)

    graph = make_fx(f)(x)
    targets = {str(n.target) for n in graph.graph.nodes if n.op == "call_function"}
    assert any("bnlab.fused_batch_norm" in t for t in targets), targets

    with FlopCounterMode(display=False):  # a dispatch mode: the operator, not the Function
        y = f(x.requires_grad_(True))
    assert type(y.grad_fn).__name__ != "_EagerFusedBatchNormBackward"
