"""Recurrent batch norm: one set of population statistics per time step (the last row for
later steps), eval uses the step's row, state survives a checkpoint, gradcheck passes.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bnlab.norm import get_norm
from bnlab.norm.layers.recurrent import RecurrentBatchNorm

F64 = torch.float64


def test_one_set_of_statistics_per_step() -> None:
    rbn = RecurrentBatchNorm(3, max_steps=3, momentum=1.0, dtype=F64)  # momentum 1: last batch
    data = [torch.randn(16, 3, dtype=F64) * (t + 1) + 10 * t for t in range(3)]
    for t, x in enumerate(data):
        ref = F.batch_norm(x, None, None, rbn.weight, rbn.bias, True, 0.0, rbn.eps)
        torch.testing.assert_close(rbn(x, t), ref, rtol=1e-12, atol=1e-12)
    for t, x in enumerate(data):
        torch.testing.assert_close(rbn.running_mean[t], x.mean(0))
        torch.testing.assert_close(rbn.running_var[t], x.var(0, unbiased=True))
    assert rbn.num_batches_tracked.tolist() == [1, 1, 1]
    # Rows differ: step 2's data is centred at 20, step 0's at 0.
    assert float((rbn.running_mean[2] - rbn.running_mean[0]).min()) > 15


def test_later_steps_share_the_last_row() -> None:
    rbn = RecurrentBatchNorm(2, max_steps=2, momentum=None, dtype=F64)  # cumulative average
    x3, x7 = torch.randn(8, 2, dtype=F64), torch.randn(8, 2, dtype=F64) + 5
    rbn(x3, 3)
    rbn(x7, 7)
    torch.testing.assert_close(rbn.running_mean[1], (x3.mean(0) + x7.mean(0)) / 2)
    assert rbn.num_batches_tracked.tolist() == [0, 2]
    assert rbn.running_mean[0].abs().max() == 0  # step 0 untouched


def test_eval_normalizes_with_the_step_row() -> None:
    rbn = RecurrentBatchNorm(3, max_steps=4, dtype=F64)
    for t in range(4):
        rbn(torch.randn(8, 3, dtype=F64) * 2 + t, t)
    rbn.eval()
    x = torch.randn(5, 3, dtype=F64)
    for t in (0, 2, 9):
        row = min(t, 3)
        ref = F.batch_norm(
            x, rbn.running_mean[row], rbn.running_var[row], rbn.weight, rbn.bias, False
        )
        torch.testing.assert_close(rbn(x, t), ref)
    before = rbn.running_mean.clone()
    rbn(torch.randn(5, 3, dtype=F64), 1)
    assert torch.equal(rbn.running_mean, before)  # eval never updates


def test_state_dict_round_trip_and_weight_init() -> None:
    rbn = RecurrentBatchNorm(4, max_steps=3, weight_init=0.1)
    assert torch.equal(rbn.weight.detach(), torch.full((4,), 0.1))
    rbn(torch.randn(6, 4), 1)
    state = rbn.state_dict()
    assert state["running_mean"].shape == (3, 4) and state["num_batches_tracked"].shape == (3,)
    copy = RecurrentBatchNorm(4, max_steps=3)
    copy.load_state_dict(state)
    assert torch.equal(copy.running_var, rbn.running_var)
    assert copy.num_batches_tracked.tolist() == [0, 1, 0]


def test_gradcheck() -> None:
    rbn = RecurrentBatchNorm(2, max_steps=2, dtype=F64)
    x = torch.randn(4, 2, 3, dtype=F64, requires_grad=True)

    def fn(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(rbn, {"weight": w, "bias": b}, (x, 1))

    assert torch.autograd.gradcheck(fn, (x, rbn.weight, rbn.bias))


def test_registry_and_bad_arguments() -> None:
    layer = get_norm("recurrent", 4, spatial_dims=0, max_steps=5, decay=0.9)
    assert isinstance(layer, RecurrentBatchNorm) and layer.max_steps == 5
    assert layer.momentum == pytest.approx(0.1)
    with pytest.raises(ValueError, match="max_steps"):
        get_norm("recurrent", 4)
    with pytest.raises(ValueError, match="step must be"):
        layer(torch.randn(3, 4), -1)
    with pytest.raises(ValueError, match="more than one value"):
        layer(torch.randn(1, 4), 0)
    assert int(layer.num_batches_tracked.sum()) == 0  # refused before counting
