"""Data-parallel training (bnlab.train.distributed): batch sharding, torchrun environment
checks, and 2 gloo processes with DDP + SyncBatchNorm training exactly like one process on
the global batch (without sync, per-shard statistics visibly differ)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as TF
from torch import Tensor, nn

from bnlab.distributed import spawn
from bnlab.norm import SyncBatchNorm
from bnlab.train.distributed import (
    DataParallel,
    DistributedLaunchError,
    ShardedBatches,
    current,
    init_from_env,
    using,
)

STEPS = 5
GLOBAL_BATCH = 8


class _Batches:
    """A seeded source of (images, labels) batches with a saveable position."""

    def __init__(self, seed: int, batch: int = GLOBAL_BATCH) -> None:
        self.seed, self.batch, self.i = seed, batch, 0

    def next_batch(self) -> tuple[Tensor, Tensor]:
        gen = torch.Generator().manual_seed(self.seed * 1000 + self.i)
        self.i += 1
        x = torch.randn(self.batch, 2, 6, 6, generator=gen, dtype=torch.float64) * 2 + 1
        return x, torch.randint(0, 3, (self.batch,), generator=gen)

    def state_dict(self) -> dict[str, Any]:
        return {"i": self.i}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.i = state["i"]


def _net() -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1, bias=False),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    ).double()


def _train(model: nn.Module, train_model: nn.Module, batches: Any) -> None:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(STEPS):
        x, y = batches.next_batch()
        loss = TF.cross_entropy(train_model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def _ddp_worker(rank: int, world: int) -> dict[str, dict[str, float]]:
    """Train the same net with and without sync BN on shards; compare with one process."""
    reference = _net()
    _train(reference, reference, _Batches(seed=7))
    ref_state = reference.state_dict()
    out: dict[str, dict[str, float]] = {}
    for sync_bn in (True, False):
        dp = DataParallel(rank=rank, world_size=world, backend="gloo", sync_bn=sync_bn)
        model = _net()
        train_model = dp.wrap(model)
        assert isinstance(model[1], SyncBatchNorm) == sync_bn
        _train(model, train_model, dp.shard(_Batches(seed=7)))
        state = model.state_dict()
        out["sync" if sync_bn else "local"] = {
            key: float((state[key].double() - ref_state[key].double()).abs().max())
            for key in ref_state
        }
    with pytest.warns(UserWarning, match="no batch-norm module to synchronize"):
        DataParallel(rank=rank, world_size=world, backend="gloo", sync_bn=True).wrap(
            nn.Sequential(nn.Linear(2, 2))
        )
    # The logged loss under data parallelism is the mean over ranks (the global batch's).
    dp = DataParallel(rank=rank, world_size=world, backend="gloo")
    mean = dp.mean_across_ranks(torch.tensor([float(rank), 2.0 * rank + 1]))
    out["mean_across_ranks"] = dict(enumerate(mean.tolist()))
    return out


def test_ddp_with_sync_bn_trains_like_one_process() -> None:
    results = spawn(_ddp_worker, 2, timeout_s=30, deadline_s=120)
    for rank, res in enumerate(results):
        sync, local = res["sync"], res["local"]
        assert {"0.weight", "1.running_var", "5.weight"} <= sync.keys()
        worst = max(sync.values())
        assert worst <= 1e-10, (rank, sync)
        # Per-shard statistics (4 images each) differ from the global batch's: the running
        # statistics (and so the trained parameters) move away from the single process.
        assert local["1.running_var"] > 1e-4, (rank, local)
        assert max(local.values()) > 1e-4, (rank, local)
        assert res["mean_across_ranks"] == {0: 0.5, 1: 2.0}


def test_sharded_batches_split_the_global_batch() -> None:
    whole = _Batches(seed=1).next_batch()
    parts = [ShardedBatches(_Batches(seed=1), rank=r, world_size=4).next_batch() for r in range(4)]
    assert torch.equal(torch.cat([p[0] for p in parts]), whole[0])
    assert torch.equal(torch.cat([p[1] for p in parts]), whole[1])
    sharded = ShardedBatches(_Batches(seed=1), rank=0, world_size=2)
    sharded.next_batch()
    assert sharded.state_dict() == {"i": 1}


def test_a_world_size_that_does_not_divide_the_batch_is_refused() -> None:
    sharded = ShardedBatches(_Batches(seed=1, batch=64), rank=0, world_size=3)
    with pytest.raises(DistributedLaunchError, match=r"64 does not split evenly over 3") as info:
        sharded.next_batch()
    assert "--nproc-per-node 2" in str(info.value)
    with pytest.raises(ValueError, match="0 <= rank < world_size"):
        ShardedBatches(_Batches(seed=1), rank=2, world_size=2)


def test_single_process_setting_changes_nothing() -> None:
    dp = init_from_env(environ={}, sync_bn=True)
    assert dp == DataParallel(sync_bn=True) and dp.is_main and not dp.enabled
    net = _net()
    assert dp.wrap(net) is net and type(net[1]) is nn.BatchNorm2d
    source = _Batches(seed=0)
    assert dp.shard(source) is source
    assert dp.describe() == {"world_size": 1, "backend": None, "sync_bn": True}
    assert dp.run_key() == {}  # config.json of a one-process run is unchanged
    values = torch.tensor([1.0, 2.0])
    assert dp.mean_across_ranks(values) is values
    two = DataParallel(rank=1, world_size=2, backend="gloo", sync_bn=True)
    assert two.run_key() == {"world_size": 2, "sync_bn": True} and not two.is_main


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"WORLD_SIZE": "2"}, "RANK, LOCAL_RANK, MASTER_ADDR, MASTER_PORT not set"),
        ({"WORLD_SIZE": "two"}, "WORLD_SIZE must be an integer; got 'two'"),
        (
            {
                "WORLD_SIZE": "2",
                "RANK": "5",
                "LOCAL_RANK": "0",
                "MASTER_ADDR": "x",
                "MASTER_PORT": "1",
            },
            r"RANK must lie in \[0, 2\); got 5",
        ),
    ],
)
def test_inconsistent_launches_are_explained(environ: dict[str, str], message: str) -> None:
    with pytest.raises(DistributedLaunchError, match=message):
        init_from_env(environ=environ)


def test_only_gloo_is_accepted_by_the_engine() -> None:
    env = {
        "WORLD_SIZE": "2",
        "RANK": "0",
        "LOCAL_RANK": "0",
        "MASTER_ADDR": "x",
        "MASTER_PORT": "1",
    }
    with pytest.raises(DistributedLaunchError, match="gloo backend; got 'nccl'"):
        init_from_env(environ=env, backend="nccl")


def test_using_sets_and_restores_the_current_setting() -> None:
    dp = DataParallel(rank=1, world_size=2, backend="gloo")
    with using(dp):
        assert current() is dp and not current().is_main
    assert current() == DataParallel()


def test_data_parallel_runs_get_their_own_run_directories(tmp_path: Any) -> None:
    from bnlab.experiments.runner import run_path

    assert run_path(tmp_path, "deep-cnn", "bn", 2) == tmp_path / "deep-cnn" / "bn" / "seed-2"
    with using(DataParallel(rank=0, world_size=2, backend="gloo", sync_bn=True)):
        synced = run_path(tmp_path, "deep-cnn", "bn", 2)
    with using(DataParallel(rank=1, world_size=3, backend="gloo", sync_bn=False)):
        local = run_path(tmp_path, "deep-cnn", "bn", 0)
    assert synced == tmp_path / "deep-cnn" / "bn@2proc-syncbn" / "seed-2"
    assert local == tmp_path / "deep-cnn" / "bn@3proc-localbn" / "seed-0"
