"""Ghost (virtual) batch norm: each virtual batch is batch-normalized on its own, the running
statistics follow Ioffe & Szegedy's Alg. 2 estimate, eval is batch norm, gradcheck passes.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bnlab.norm import get_norm
from bnlab.norm.layers.ghost import GhostBatchNorm1d, GhostBatchNorm2d, ghost_sizes

F64 = torch.float64


def test_each_virtual_batch_is_batch_normalized_alone() -> None:
    gbn = GhostBatchNorm2d(3, virtual_batch_size=4, dtype=F64)
    with torch.no_grad():
        gbn.weight.uniform_(0.5, 1.5)
        gbn.bias.normal_()
    x = torch.randn(10, 3, 3, 3, dtype=F64) * 2 + 1  # virtual batches of 4, 4, 2
    y = gbn(x)
    for lo, hi in ((0, 4), (4, 8), (8, 10)):
        ref = F.batch_norm(x[lo:hi], None, None, gbn.weight, gbn.bias, True, 0.0, gbn.eps)
        torch.testing.assert_close(y[lo:hi], ref, rtol=1e-12, atol=1e-12)


def test_running_statistics_average_the_virtual_batches() -> None:
    gbn = GhostBatchNorm1d(2, momentum=0.5, virtual_batch_size=3, dtype=F64)
    x = torch.randn(9, 2, dtype=F64) * 3
    gbn(x)
    parts = x.split(3)
    mean = torch.stack([p.mean(0) for p in parts]).mean(0)
    var = torch.stack([p.var(0, unbiased=True) for p in parts]).mean(0)
    torch.testing.assert_close(gbn.running_mean, 0.5 * mean)
    torch.testing.assert_close(gbn.running_var, 0.5 + 0.5 * var)
    assert int(gbn.num_batches_tracked) == 1


def test_small_batch_and_eval_are_plain_batch_norm() -> None:
    gbn = GhostBatchNorm2d(3, virtual_batch_size=8, dtype=F64)
    bn = nn.BatchNorm2d(3, dtype=F64)
    x = torch.randn(8, 3, 2, 2, dtype=F64)
    torch.testing.assert_close(gbn(x), bn(x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gbn.running_var, bn.running_var, rtol=1e-12, atol=1e-12)
    gbn(torch.randn(32, 3, 2, 2, dtype=F64))
    bn.load_state_dict(gbn.state_dict())
    z = torch.randn(5, 3, 2, 2, dtype=F64)
    torch.testing.assert_close(gbn.eval()(z), bn.eval()(z), rtol=1e-12, atol=1e-12)


def test_gradcheck() -> None:
    gbn = GhostBatchNorm2d(2, momentum=0.0, virtual_batch_size=2, dtype=F64)
    x = torch.randn(5, 2, 2, 2, dtype=F64, requires_grad=True)

    def fn(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(gbn, {"weight": w, "bias": b}, (x,))

    assert torch.autograd.gradcheck(fn, (x, gbn.weight, gbn.bias))


def test_sizes_keep_a_lone_example_with_its_neighbours() -> None:
    assert ghost_sizes(10, 4, 1) == [4, 4, 2]
    assert ghost_sizes(9, 4, 1) == [4, 5]  # one (N, C) example has no variance
    assert ghost_sizes(9, 4, 16) == [4, 4, 1]  # one image has 16 values per channel
    assert ghost_sizes(8, 4, 1) == [4, 4]


def test_registry_and_bad_arguments() -> None:
    layer = get_norm("ghost", 4, spatial_dims=2, virtual_batch_size=16, eps=1e-3)
    assert isinstance(layer, GhostBatchNorm2d) and layer.virtual_batch_size == 16
    assert "virtual_batch_size=16" in repr(layer)
    with pytest.raises(ValueError, match="virtual_batch_size"):
        GhostBatchNorm2d(3, virtual_batch_size=1)
    with pytest.raises(TypeError, match="virtual_batch_size"):
        GhostBatchNorm2d(3, virtual_batch_size=2.5)  # type: ignore[arg-type]
