"""FSDP2 (``fully_shard``) trains a model with bnlab's batch norm, on the fused kernel too.

FSDP2 frees each parameter's storage after use and re-allocates it for the next
all-gather; a storage that ``Tensor.numpy()`` has touched can never be resized again, so
the kernels must read parameters without it.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from bnlab.distributed import spawn


def _fsdp_worker(rank: int, world: int, backend: str) -> list[float]:
    from torch.distributed.fsdp import fully_shard

    import bnlab

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        bnlab.BatchNorm2d(16, backend=backend),
        nn.ReLU(inplace=True),
        nn.Conv2d(16, 4, 1),
    )
    fully_shard(model[1])
    fully_shard(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    torch.manual_seed(1 + rank)
    losses = []
    for _ in range(3):
        optimizer.zero_grad()
        loss = model(torch.randn(4, 3, 16, 16)).square().mean()
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
    return losses


@pytest.mark.parametrize("backend", ["fused", "native"])
def test_fully_shard_trains_bnlab_batch_norm(backend: str) -> None:
    results: list[Any] = spawn(_fsdp_worker, 2, (backend,), timeout_s=60, deadline_s=180)
    for losses in results:
        assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
