"""Batch renormalization: r_max=1, d_max=0 is batch norm; inference is batch norm's; the
r/d correction matches Ioffe 2017 Alg. 1 by hand; schedules; gradcheck in float64.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bnlab.norm import get_norm
from bnlab.norm.layers.renorm import BatchRenorm1d, BatchRenorm2d, RenormSchedule, renorm_factors

F64 = torch.float64


def _set_affine(a: nn.Module, b: nn.Module) -> None:
    with torch.no_grad():
        w, bias = torch.rand(a.weight.shape, dtype=F64) + 0.5, torch.randn(a.bias.shape, dtype=F64)
        for m in (a, b):
            m.weight.copy_(w)
            m.bias.copy_(bias)


def test_rmax_one_dmax_zero_equals_batch_norm_over_steps() -> None:
    brn = BatchRenorm2d(3, momentum=0.3, r_max=1.0, d_max=0.0, dtype=F64)
    bn = nn.BatchNorm2d(3, momentum=0.3, dtype=F64)
    _set_affine(brn, bn)
    for step in range(4):
        x = (torch.randn(5, 3, 4, 4, dtype=F64) * (step + 1) + step).requires_grad_()
        y, ref = brn(x), bn(x)
        torch.testing.assert_close(y, ref, rtol=1e-12, atol=1e-12)
        g = torch.randn_like(y)
        got = torch.autograd.grad(y, (x, brn.weight, brn.bias), g)
        want = torch.autograd.grad(ref, (x, bn.weight, bn.bias), g)
        for a, e in zip(got, want, strict=True):
            torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(brn.running_mean, bn.running_mean, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(brn.running_var, bn.running_var, rtol=1e-12, atol=1e-12)
    assert int(brn.num_batches_tracked) == 4


def test_inference_equals_batch_norm_inference() -> None:
    brn = BatchRenorm2d(3, r_max=3.0, d_max=5.0, dtype=F64)
    for _ in range(5):
        brn(torch.randn(4, 3, 3, 3, dtype=F64) * 2 + 1)
    bn = nn.BatchNorm2d(3, dtype=F64)
    bn.load_state_dict(brn.state_dict())  # same keys as batch norm
    x = torch.randn(6, 3, 3, 3, dtype=F64)
    torch.testing.assert_close(brn.eval()(x), bn.eval()(x), rtol=1e-12, atol=1e-12)


def test_training_output_is_the_clipped_correction() -> None:
    brn = BatchRenorm1d(2, momentum=0.0, r_max=1.5, d_max=0.5, dtype=F64)
    with torch.no_grad():
        brn.running_mean.copy_(torch.tensor([0.0, 10.0], dtype=F64))
        brn.running_var.copy_(torch.tensor([1.0, 0.01], dtype=F64))
    x = torch.randn(64, 2, dtype=F64) * 4 + 3
    mu, var = x.mean(0), x.var(0, unbiased=False)
    sigma_b, sigma = (var + brn.eps).sqrt(), (brn.running_var + brn.eps).sqrt()
    r = (sigma_b / sigma).clamp(1 / 1.5, 1.5)
    d = ((mu - brn.running_mean) / sigma).clamp(-0.5, 0.5)
    expected = (x - mu) / sigma_b * r + d
    torch.testing.assert_close(brn(x), expected, rtol=1e-12, atol=1e-12)
    # Both factors are clipped here: r at 1.5 (channel 1) and d at +-0.5.
    assert r[1] == 1.5 and d.abs().tolist() == [0.5, 0.5]


def test_factors_carry_no_gradient() -> None:
    mean = torch.tensor([1.0], requires_grad=True)
    var = torch.tensor([4.0], requires_grad=True)
    r, d = renorm_factors(mean, var, torch.zeros(1), torch.ones(1), 0.0, 3.0, 5.0)
    assert not r.requires_grad and not d.requires_grad
    assert (r.item(), d.item()) == (2.0, 1.0)


@pytest.mark.parametrize("r_max,d_max", [(1.0, 0.0), (2.0, 1.0)])
def test_gradcheck(r_max: float, d_max: float) -> None:
    # r and d are constants for autograd (Ioffe 2017, Alg. 1); the true derivative agrees
    # with that where both are clipped, which these running statistics ensure.
    brn = BatchRenorm2d(2, momentum=0.0, r_max=r_max, d_max=d_max, dtype=F64)
    with torch.no_grad():
        brn.running_mean.fill_(30.0)
        brn.running_var.fill_(1e-3)
    x = torch.randn(3, 2, 2, 2, dtype=F64, requires_grad=True)

    def fn(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(brn, {"weight": w, "bias": b}, (x,))

    assert torch.autograd.gradcheck(fn, (x, brn.weight, brn.bias))


def test_schedule_warmup_then_linear_ramp() -> None:
    s = RenormSchedule(r_max=3.0, d_max=4.0, warmup_steps=2, ramp_steps=4)
    assert [s.limits(k) for k in (1, 2, 3, 4, 6, 9)] == [
        (1.0, 0.0),
        (1.0, 0.0),
        (1.5, 1.0),
        (2.0, 2.0),
        (3.0, 4.0),
        (3.0, 4.0),
    ]
    with pytest.raises(ValueError, match="r_max"):
        RenormSchedule(r_max=0.5)
    with pytest.raises(ValueError, match="d_max"):
        RenormSchedule(d_max=-1.0)


def test_module_follows_its_schedule() -> None:
    brn = BatchRenorm1d(2, r_max=3.0, d_max=5.0, warmup_steps=2, dtype=F64)
    with torch.no_grad():
        brn.running_mean.fill_(100.0)  # far from the data: d would clip at 5 after warm-up
    x = torch.randn(16, 2, dtype=F64)
    ref = F.batch_norm(x, None, None, training=True, eps=brn.eps)
    torch.testing.assert_close(brn(x), ref)  # step 1: warm-up, plain batch norm
    brn.running_mean.fill_(100.0)
    torch.testing.assert_close(brn(x), ref)  # step 2
    brn.running_mean.fill_(100.0)
    assert brn.current_limits() == (1.0, 0.0)
    y = brn(x)  # step 3: d clips at -5
    assert brn.current_limits() == (3.0, 5.0)
    assert float((y - ref).detach().mean()) < -4.0


def test_registry_and_bad_arguments() -> None:
    layer = get_norm("renorm", 4, spatial_dims=0, eps=1e-3, decay=0.99, r_max=2.0)
    assert isinstance(layer, BatchRenorm1d) and layer.schedule.r_max == 2.0
    assert layer.momentum == pytest.approx(0.01)
    assert "r_max=2.0" in repr(layer)
    with pytest.raises(ValueError, match="track_running_stats"):
        BatchRenorm2d(3, track_running_stats=False)
    with pytest.raises(ValueError, match="4-D"):
        BatchRenorm2d(3)(torch.randn(2, 3))
