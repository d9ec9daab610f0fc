"""SyncBatchNorm within one process: the exact moment merge, plain batch norm when there is
no process group, torch-compatible state, input checks, and convert_sync_batchnorm."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as TF
from torch import nn

from bnlab.distributed import spawn
from bnlab.norm import BatchNorm2d, BatchRenorm2d, GhostBatchNorm2d, get_norm
from bnlab.norm.layers.sync import (
    SyncBatchNorm,
    convert_sync_batchnorm,
    merge_moments,
    sync_batch_norm,
)


def _moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(count, mean, M2) per column of a (n, C) tensor; zeros when n == 0."""
    n = x.shape[0]
    if n == 0:
        zeros = x.new_zeros(x.shape[1])
        return x.new_tensor(0.0), zeros, zeros
    mean = x.mean(0)
    return x.new_tensor(float(n)), mean, ((x - mean) ** 2).sum(0)


@pytest.mark.parametrize("sizes", [(5, 5, 5), (7, 1, 3), (0, 6, 0, 2), (1, 1)])
def test_merge_moments_equals_moments_of_the_union(sizes: tuple[int, ...]) -> None:
    x = torch.randn(sum(sizes), 4, dtype=torch.float64) * 3 + 2
    parts = [_moments(p) for p in torch.split(x, list(sizes))]
    n, mean, m2 = merge_moments(
        torch.stack([p[0] for p in parts]),
        torch.stack([p[1] for p in parts]),
        torch.stack([p[2] for p in parts]),
    )
    assert n.item() == sum(sizes)
    torch.testing.assert_close(mean, x.mean(0), rtol=0, atol=1e-12)
    torch.testing.assert_close(m2 / n, x.var(0, correction=0), rtol=1e-12, atol=1e-12)


def test_merge_moments_does_not_cancel_with_a_large_mean() -> None:
    # mean 1e8, std 1: sum-of-squares merging loses every digit here (x² ~ 1e16 ~ 2^53).
    x = torch.randn(300, 2, dtype=torch.float64) + 1e8
    parts = [_moments(p) for p in torch.split(x, [100, 50, 150])]
    n, _, m2 = merge_moments(*(torch.stack([p[i] for p in parts]) for i in range(3)))
    exact = (x - 1e8).var(0, correction=0)
    torch.testing.assert_close(m2 / n, exact, rtol=1e-9, atol=0)


def test_merge_moments_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match=r"counts \(k,\), means \(k, C\)"):
        merge_moments(torch.ones(2), torch.ones(2, 3), torch.ones(2, 4))
    with pytest.raises(ValueError, match="got 3 counts for 2 parts"):
        merge_moments(torch.ones(3), torch.ones(2, 3), torch.ones(2, 3))


def test_without_a_process_group_it_is_plain_batch_norm() -> None:
    sync = SyncBatchNorm(3, momentum=None, dtype=torch.float64)
    ref = nn.BatchNorm2d(3, momentum=None, dtype=torch.float64)
    with torch.no_grad():
        for m in (sync, ref):
            m.weight.copy_(torch.tensor([0.5, 1.0, 2.0]))
            m.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
    for _ in range(3):
        x = torch.randn(6, 3, 4, 4, dtype=torch.float64) + 1.5
        xs, xr = x.clone().requires_grad_(), x.clone().requires_grad_()
        g = torch.randn_like(x)
        (sync(xs) * g).sum().backward()
        (ref(xr) * g).sum().backward()
        torch.testing.assert_close(xs.grad, xr.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(sync.weight.grad, ref.weight.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(sync.bias.grad, ref.bias.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(sync.running_var, ref.running_var, rtol=1e-12, atol=0)
    torch.testing.assert_close(sync.running_mean, ref.running_mean, rtol=1e-12, atol=1e-14)
    assert int(sync.num_batches_tracked) == 3
    sync.eval()
    ref.eval()
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    torch.testing.assert_close(sync(x), ref(x), rtol=1e-12, atol=1e-12)


def test_functional_without_a_process_group_is_batch_norm() -> None:
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    rm, rv = torch.zeros(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64)
    rm_ref, rv_ref = rm.clone(), rv.clone()
    y = sync_batch_norm(x, rm, rv, training=True, momentum=0.3)
    y_ref = TF.batch_norm(x, rm_ref, rv_ref, training=True, momentum=0.3)
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(rv, rv_ref)
    with pytest.raises(ValueError, match="at least 2 dims"):
        sync_batch_norm(torch.randn(4), None, None)


def test_state_dict_matches_torch_and_loads_both_ways() -> None:
    ours = SyncBatchNorm(4)
    assert list(ours.state_dict()) == list(nn.SyncBatchNorm(4).state_dict())
    torch_bn = nn.BatchNorm2d(4)
    torch_bn.train()(torch.randn(8, 4, 3, 3) * 2 + 1)
    ours.load_state_dict(torch_bn.state_dict())
    torch.testing.assert_close(ours.running_var, torch_bn.running_var)
    back = nn.BatchNorm2d(4)
    back.load_state_dict(ours.state_dict())
    assert int(back.num_batches_tracked) == 1


def test_input_checks_name_the_expected_shape() -> None:
    bn = SyncBatchNorm(3)
    with pytest.raises(ValueError, match=r"at least 2 dims \(N, C, \*\); got 1-D"):
        bn(torch.randn(3))
    with pytest.raises(ValueError, match="3 channels in dim 1"):
        bn(torch.randn(4, 5, 2))
    # Any rank >= 2 is accepted, as torch.nn.SyncBatchNorm does.
    assert bn(torch.randn(4, 3)).shape == (4, 3)
    assert bn(torch.randn(2, 3, 2, 2, 2)).shape == (2, 3, 2, 2, 2)


def test_convert_returns_a_new_model_with_state_kept() -> None:
    torch_bn = nn.BatchNorm2d(4, momentum=None)
    bnlab_bn = BatchNorm2d(3, eps=1e-3, decay=0.99, backend="native")
    net = nn.Sequential(
        nn.Conv2d(2, 4, 3),
        torch_bn,
        nn.Sequential(nn.Conv2d(4, 3, 1), bnlab_bn),
        nn.BatchNorm1d(5, affine=False),
    )
    net[1].train()(torch.randn(6, 4, 2, 2) + 3)  # non-default running statistics
    with torch.no_grad():
        bnlab_bn.weight.fill_(2.0)
    bnlab_bn.bias.requires_grad_(False)
    net[2].eval()

    out = convert_sync_batchnorm(net)
    assert out is not net
    a, b, c = out[1], out[2][1], out[3]
    assert isinstance(a, SyncBatchNorm) and isinstance(b, SyncBatchNorm)
    assert isinstance(c, SyncBatchNorm) and c.weight is None and not c.affine
    # The original is untouched.
    assert type(net[1]) is nn.BatchNorm2d and type(net[2][1]) is BatchNorm2d
    # Configuration, values, requires_grad, buffers and mode carry over.
    assert a.momentum is None and int(a.num_batches_tracked) == 1
    torch.testing.assert_close(a.running_mean, torch_bn.running_mean)
    assert b.eps == 1e-3 and b.momentum == bnlab_bn.momentum and b.backend == "native"
    assert torch.equal(b.weight, bnlab_bn.weight) and not b.bias.requires_grad
    assert not b.training and a.training
    torch.testing.assert_close(out[0].weight, net[0].weight)
    # The same Parameter and buffer objects (as torch's converter): an optimizer built on
    # the original model trains the converted one.
    assert b.weight is bnlab_bn.weight and a.running_mean is torch_bn.running_mean
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    (out[1](torch.randn(4, 4, 3, 3)) * torch.randn(4, 4, 3, 3)).sum().backward()
    before = a.weight.detach().clone()
    opt.step()
    assert not torch.equal(a.weight.detach(), before)


def test_convert_a_bare_layer_and_an_existing_sync_layer() -> None:
    bn = nn.BatchNorm1d(3)
    assert isinstance(convert_sync_batchnorm(bn), SyncBatchNorm)
    assert isinstance(bn, nn.BatchNorm1d)
    sync = SyncBatchNorm(3)
    sentinel = object()
    converted = convert_sync_batchnorm(sync, process_group=sentinel)  # type: ignore[arg-type]
    assert converted.process_group is sentinel and sync.process_group is None
    with pytest.raises(TypeError, match=r"torch\.nn\.Module"):
        convert_sync_batchnorm("net")  # type: ignore[arg-type]


def test_convert_leaves_variants_that_normalize_differently() -> None:
    net = nn.Sequential(GhostBatchNorm2d(3, virtual_batch_size=2), BatchRenorm2d(3), BatchNorm2d(3))
    out = convert_sync_batchnorm(net)
    assert type(out[0]) is GhostBatchNorm2d and type(out[1]) is BatchRenorm2d
    assert type(out[2]) is SyncBatchNorm


def test_registry_builds_sync_bn() -> None:
    layer = get_norm("sync-bn", 8, spatial_dims=2, eps=1e-3)
    assert isinstance(layer, SyncBatchNorm) and layer.eps == 1e-3


def test_spawn_rejects_a_bad_world_size() -> None:
    with pytest.raises(ValueError, match="world_size must be at least 1, got 0"):
        spawn(print, 0)


def _nonfinite_worker(rank: int, world: int) -> dict[str, object]:
    """Two ranks train one SyncBatchNorm step; rank 1's shard holds a NaN on the second."""
    bn = SyncBatchNorm(3)
    x = torch.randn(4, 3, 2, 2, generator=torch.Generator().manual_seed(rank))
    bn(x)
    before = (bn.running_mean.clone(), bn.running_var.clone())
    bad = x.clone()
    if rank == 1:
        bad[0, 0, 0, 0] = float("nan")
    with pytest.warns(RuntimeWarning, match="refused a non-finite batch"):
        bn(bad)
    return {
        "kept": torch.equal(bn.running_mean, before[0]) and torch.equal(bn.running_var, before[1]),
        "tracked": int(bn.num_batches_tracked),
        "refused": bn.refused_batches,
    }


def test_the_guard_covers_the_multi_process_path() -> None:
    for out in spawn(_nonfinite_worker, 2, timeout_s=30, deadline_s=120):
        assert out == {"kept": True, "tracked": 1, "refused": 1}
