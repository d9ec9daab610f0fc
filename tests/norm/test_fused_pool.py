"""The output pool of the fused kernels: memory is reused only once no tensor holds it."""

from __future__ import annotations

import pytest
import torch

from bnlab.norm.ops.kernels._pool import OutputPool, output_pool
from bnlab.norm.ops.library import fused_batch_norm


def test_memory_is_reused_after_the_tensor_and_its_views_are_gone() -> None:
    pool = OutputPool(min_bytes=1 << 16, max_bytes=8 << 20)
    x = torch.empty(64, 32, 16, 16).contiguous(memory_format=torch.channels_last)
    a = pool.empty_like(x)
    assert a.shape == x.shape and a.stride() == x.stride() and a.dtype == x.dtype
    view = a[:, :3]
    ptr = a.data_ptr()
    del a
    b = pool.empty_like(x)  # a view still holds the first buffer: new memory
    assert b.data_ptr() != ptr
    del view
    c = pool.empty_like(x)
    assert c.data_ptr() == ptr  # now free: reused
    assert pool.mapped_bytes == 2 * x.numel() * 4


def test_small_strided_and_over_budget_outputs_are_not_pooled() -> None:
    pool = OutputPool(min_bytes=1 << 16, max_bytes=1 << 20)
    small = pool.empty_like(torch.empty(8, 8))
    strided = pool.empty_like(torch.empty(256, 512)[:, ::2])
    big = pool.empty_like(torch.empty(1024, 512))  # 2 MB > max_bytes
    assert small.shape == (8, 8) and strided.shape == (256, 256) and big.shape == (1024, 512)
    assert pool.mapped_bytes == 0
    kept = pool.empty_like(torch.empty(512, 256))  # 512 KB: pooled
    assert pool.mapped_bytes == 512 * 1024
    del kept
    pool.empty_like(torch.empty(512, 400))  # needs room: the free 512 KB buffer is dropped
    assert pool.mapped_bytes == 512 * 400 * 4


def test_fused_outputs_survive_later_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(output_pool, "min_bytes", 1 << 20)  # pool this 4 MB tensor too
    x = torch.randn(16, 64, 32, 32, requires_grad=True)
    y1 = fused_batch_norm(x, None, None, training=True)
    y2 = fused_batch_norm(x * 2, None, None, training=True)
    assert y1.data_ptr() != y2.data_ptr()
    torch.testing.assert_close(y1, y2, rtol=1e-4, atol=1e-4)  # BN is scale invariant
    (y1 * y2).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert output_pool.mapped_bytes >= 2 * x.numel() * 4
