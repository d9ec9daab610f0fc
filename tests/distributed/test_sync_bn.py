"""SyncBatchNorm across 2 and 3 gloo processes equals single-process batch norm on the
concatenated batch (outputs, input/weight/bias gradients, running statistics, 5 steps),
and a dead or stalled rank makes the others stop with a message within a bounded time."""

from __future__ import annotations

import copy
import datetime
import multiprocessing
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as TF
from torch import nn

from bnlab.distributed import RankFailure, SpawnError, spawn
from bnlab.norm.layers.sync import SyncBatchNorm, convert_sync_batchnorm

TOL = {"float64": 1e-10, "float32": 1e-5}
STEPS = 5
LR = 0.1


@dataclass(frozen=True)
class Case:
    """One equivalence scenario: per-rank batch sizes and the layer's configuration."""

    name: str
    dtype: str
    sizes: tuple[int, ...]  # batch size on each rank (0 = an empty shard)
    tail: tuple[int, ...] = (3, 4)  # dims after (N, C): () for (N, C), (L,), (H, W)
    affine: bool = True
    momentum: float | None = 0.1


CHANNELS = 3


def _err(a: torch.Tensor, b: torch.Tensor) -> float:
    """Max abs difference relative to the reference's scale (at least 1)."""
    if b.numel() == 0:
        return 0.0 if a.numel() == 0 else float("inf")
    scale = max(1.0, float(b.detach().abs().max()))
    return float((a.detach().double() - b.detach().double()).abs().max()) / scale


@contextmanager
def _count_collectives(counts: dict[str, int]) -> Iterator[None]:
    """Count all-gathers and all-reduces issued inside the block (restored afterwards)."""
    names = ["all_gather_single", "all_gather_into_tensor", "all_gather", "all_reduce"]
    saved = {n: getattr(dist, n) for n in names if hasattr(dist, n)}

    def wrap(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def counted(*args: Any, **kwargs: Any) -> Any:
            key = "reduce" if name == "all_reduce" else "gather"
            counts[key] = counts.get(key, 0) + 1
            return fn(*args, **kwargs)

        return counted

    try:
        for n, fn in saved.items():
            setattr(dist, n, wrap(n, fn))
        yield
    finally:
        for n, fn in saved.items():
            setattr(dist, n, fn)


def _run_case(rank: int, case: Case, group: dist.ProcessGroup | None) -> dict[str, float]:
    """5 training steps of SyncBatchNorm on this rank's shard vs F.batch_norm on the
    concatenated batch; returns the worst error of each compared quantity."""
    dtype = getattr(torch, case.dtype)
    total = sum(case.sizes)
    lo = sum(case.sizes[:rank])
    hi = lo + case.sizes[rank]
    gen = torch.Generator().manual_seed(1234)
    offset = torch.tensor([3.0, -2.0, 0.5], dtype=torch.float64).reshape(
        [1, CHANNELS] + [1] * len(case.tail)
    )

    bn = SyncBatchNorm(
        CHANNELS, momentum=case.momentum, affine=case.affine, process_group=group, dtype=dtype
    )
    ref_w = ref_b = None
    if case.affine:
        with torch.no_grad():
            bn.weight.copy_(torch.rand(CHANNELS, generator=gen, dtype=torch.float64) + 0.5)
            bn.bias.copy_(torch.randn(CHANNELS, generator=gen, dtype=torch.float64))
        ref_w = bn.weight.detach().clone().requires_grad_()
        ref_b = bn.bias.detach().clone().requires_grad_()
    ref_rm = torch.zeros(CHANNELS, dtype=dtype)
    ref_rv = torch.ones(CHANNELS, dtype=dtype)

    errs: dict[str, float] = {}

    def note(key: str, value: float) -> None:
        errs[key] = max(errs.get(key, 0.0), value)

    for step in range(STEPS):
        shape = (total, CHANNELS, *case.tail)
        x_all = (torch.randn(shape, generator=gen, dtype=torch.float64) * 2 + offset).to(dtype)
        g_all = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)

        # Single process on the concatenated batch: the oracle.
        x_ref = x_all.clone().requires_grad_()
        momentum = 1.0 / (step + 1) if case.momentum is None else case.momentum
        y_ref = TF.batch_norm(x_ref, ref_rm, ref_rv, ref_w, ref_b, True, momentum, 1e-5)
        (y_ref * g_all).sum().backward()

        x = x_all[lo:hi].clone().requires_grad_()
        counts: dict[str, int] = {}
        with _count_collectives(counts):
            y = bn(x)
            fwd = dict(counts)
            (y * g_all[lo:hi]).sum().backward()
        if step == 0:
            errs["gathers_in_forward"] = fwd.get("gather", 0)
            errs["reduces_in_forward"] = fwd.get("reduce", 0)
            errs["collectives_in_backward"] = sum(counts.values()) - sum(fwd.values())

        assert x.grad is not None and x_ref.grad is not None
        note("output", _err(y, y_ref[lo:hi]))
        note("grad_input", _err(x.grad, x_ref.grad[lo:hi]))
        note("running_mean", _err(bn.running_mean, ref_rm))
        note("running_var", _err(bn.running_var, ref_rv))
        if case.affine:
            assert ref_w is not None and ref_b is not None
            assert ref_w.grad is not None and ref_b.grad is not None
            # Each rank holds its share; their sum is the single-process gradient.
            gw, gb = bn.weight.grad.clone(), bn.bias.grad.clone()
            dist.all_reduce(gw, group=group)
            dist.all_reduce(gb, group=group)
            note("grad_weight", _err(gw, ref_w.grad))
            note("grad_bias", _err(gb, ref_b.grad))
            with torch.no_grad():  # an SGD step so the parameters change between steps
                bn.weight -= LR * gw
                bn.bias -= LR * gb
                ref_w -= LR * ref_w.grad
                ref_b -= LR * ref_b.grad
            bn.zero_grad()
            ref_w.grad = ref_b.grad = None

    bn.eval()
    x_eval = torch.randn((4, CHANNELS, *case.tail), generator=gen, dtype=torch.float64)
    x_eval = x_eval.to(dtype)
    with torch.no_grad():
        y_eval_ref = TF.batch_norm(x_eval, ref_rm, ref_rv, ref_w, ref_b, False, 0.0, 1e-5)
        note("eval_output", _err(bn(x_eval), y_eval_ref))
    note("num_batches_tracked_off", abs(int(bn.num_batches_tracked) - STEPS))
    return errs


def _converted_model_errors(
    rank: int, world: int, group: dist.ProcessGroup | None
) -> dict[str, float]:
    """A small conv net converted with convert_sync_batchnorm, trained 3 steps on shards,
    vs the original on the concatenated batch: outputs, all parameter grads, BN buffers."""
    gen = torch.Generator().manual_seed(99)
    torch.manual_seed(5)
    ref = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Conv2d(4, 3, 3, padding=1),
        nn.BatchNorm2d(3, momentum=None),
    ).double()
    # A copy: conversion shares the Parameter objects (as torch does), and ref must stay apart.
    net = convert_sync_batchnorm(copy.deepcopy(ref), process_group=group)
    sizes = [3 + r for r in range(world)]
    lo, hi = sum(sizes[:rank]), sum(sizes[: rank + 1])
    errs: dict[str, float] = {}
    for _ in range(3):
        x_all = torch.randn(sum(sizes), 2, 5, 5, generator=gen, dtype=torch.float64)
        g_all = torch.randn(sum(sizes), 3, 5, 5, generator=gen, dtype=torch.float64)
        y = net(x_all[lo:hi])
        (y * g_all[lo:hi]).sum().backward()
        y_ref = ref(x_all)
        (y_ref * g_all).sum().backward()
        errs["output"] = max(errs.get("output", 0.0), _err(y, y_ref[lo:hi]))
        for (name, p), p_ref in zip(net.named_parameters(), ref.parameters(), strict=True):
            assert p.grad is not None and p_ref.grad is not None
            g = p.grad.clone()
            dist.all_reduce(g, group=group)
            errs[f"grad:{name}"] = _err(g, p_ref.grad)
        with torch.no_grad():
            for p, p_ref in zip(net.parameters(), ref.parameters(), strict=True):
                assert p.grad is not None and p_ref.grad is not None
                g = p.grad.clone()
                dist.all_reduce(g, group=group)
                p -= LR * g
                p_ref -= LR * p_ref.grad
        net.zero_grad()
        ref.zero_grad()
    for (name, b), b_ref in zip(net.named_buffers(), ref.buffers(), strict=True):
        errs[f"buffer:{name}"] = _err(b.double(), b_ref.double())
    return errs


def _large_offset_errors(rank: int, world: int) -> dict[str, float]:
    """float32 data with mean 1e4 and std 1e-2 (unequal shards) against a float64 oracle
    on the same float32 values: the merge and the backward keep float32 accuracy, where
    torch's own float32 batch norm is off by about 0.05 here."""
    sizes = [3 + 2 * r for r in range(world)]
    lo, hi = sum(sizes[:rank]), sum(sizes[: rank + 1])
    gen = torch.Generator().manual_seed(11)
    x_all = torch.randn(sum(sizes), 2, 4, 4, generator=gen, dtype=torch.float64) * 1e-2 + 1e4
    x_all = x_all.float()
    g_all = torch.randn(sum(sizes), 2, 4, 4, generator=gen, dtype=torch.float64)
    x = x_all[lo:hi].clone().requires_grad_()
    y = SyncBatchNorm(2)(x)
    (y * g_all[lo:hi].float()).sum().backward()
    x_ref = x_all.double().requires_grad_()
    y_ref = TF.batch_norm(x_ref, None, None, training=True)
    (y_ref * g_all).sum().backward()
    assert x.grad is not None and x_ref.grad is not None
    grad_scale = float(x_ref.grad.abs().max())
    return {
        "output": _err(y, y_ref[lo:hi]),
        "grad_input": _err(x.grad, x_ref.grad[lo:hi]) * max(1.0, grad_scale) / grad_scale,
    }


def _equivalence_worker(rank: int, world: int) -> dict[int, dict[str, Any]]:
    """Every case on 3 processes (the default group) and on 2 (an explicit group of ranks
    0 and 1, so ``process_group=`` is exercised too); one launch serves both."""
    pair = dist.new_group(ranks=[0, 1])  # every rank must take part in creating it
    out: dict[int, dict[str, Any]] = {}
    for k, group in ((2, pair), (3, None)):
        if rank >= k:
            continue
        res: dict[str, Any] = {c.name: _run_case(rank, c, group) for c in _cases(k)}
        res["converted"] = _converted_model_errors(rank, k, group)
        out[k] = res
    out[3]["large_offset"] = _large_offset_errors(rank, 3)
    # One value per channel across all ranks is refused on every rank (no one hangs).
    try:
        SyncBatchNorm(2)(torch.randn(1 if rank == 0 else 0, 2))
        out[3]["single_value_raises"] = False
    except ValueError:
        out[3]["single_value_raises"] = True
    return out


def _cases(world: int) -> list[Case]:
    if world == 2:
        split = [("equal", (4, 4)), ("unequal", (6, 1)), ("empty", (0, 7))]
    else:
        split = [("equal", (3, 3, 3)), ("unequal", (5, 1, 2)), ("empty", (2, 0, 5))]
    dtypes = ("float64", "float32")
    cases = [Case(f"{dt}-{name}", dt, sizes) for dt in dtypes for name, sizes in split]
    cases.append(Case("float64-2d-cma-noaffine", "float64", split[1][1], (), False, None))
    cases.append(Case("float32-3d", "float32", split[2][1], (5,)))
    return cases


@pytest.fixture()
def private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Point tempfile at an empty directory so the test can see what spawn leaves behind."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    yield tmp_path
    assert not multiprocessing.active_children(), "spawn left child processes running"
    assert list(tmp_path.iterdir()) == [], "spawn left files behind"


def test_sync_bn_matches_single_process_batch_norm(private_tmp: Path) -> None:
    results = spawn(_equivalence_worker, 3, timeout_s=30, deadline_s=120)
    assert len(results) == 3
    for world in (2, 3):
        for rank in range(world):
            res = results[rank][world]
            for case in _cases(world):
                errs = res[case.name]
                tol = TOL[case.dtype]
                where = f"{world} processes, rank {rank}, case {case.name}"
                expected = {"output", "grad_input", "running_mean", "running_var", "eval_output"}
                if case.affine:
                    expected |= {"grad_weight", "grad_bias"}
                assert expected <= errs.keys(), where
                for key in expected:
                    assert errs[key] <= tol, f"{where}, {key}: {errs[key]:.3g} > {tol}"
                assert errs["num_batches_tracked_off"] == 0, where
                # One all-gather in forward, one all-reduce in backward, nothing else.
                assert errs["gathers_in_forward"] == 1, (where, errs)
                assert errs["reduces_in_forward"] == 0, (where, errs)
                assert errs["collectives_in_backward"] == 1, (where, errs)
            conv = res["converted"]
            assert len(conv) > 10, where
            assert max(conv.values()) <= 1e-10, (where, conv)
    assert all(results[rank][3]["single_value_raises"] for rank in range(3))
    for rank in range(3):
        offset = results[rank][3]["large_offset"]
        assert max(offset.values()) <= 1e-5, (rank, offset)
    assert 3 not in results[2] or 2 not in results[2]  # rank 2 sat out the pair's cases


def _short_timeout_group(seconds: float) -> dist.ProcessGroup:
    """A group with a short collective timeout, made once every rank is up (the launch
    itself keeps a generous timeout, so a slow interpreter start cannot fail the test)."""
    group = dist.new_group(ranks=list(range(dist.get_world_size())), timeout=_td(seconds))
    assert group is not None
    # Every rank's gloo connections are up before a test makes one die: a rank that exits
    # while a peer is still connecting fails that peer inside new_group (seen once under
    # load), not in the collective the test is about.
    dist.barrier(group)
    return group


def _td(seconds: float) -> datetime.timedelta:
    return datetime.timedelta(seconds=seconds)


class _FailedAfter(RuntimeError):
    """Carries how long a failing call took; its message is the number of seconds."""


def _failing_sync_bn(group: dist.ProcessGroup) -> None:
    """One SyncBatchNorm forward that cannot complete; the error says how long it took."""
    start = time.monotonic()
    try:
        SyncBatchNorm(2, process_group=group)(torch.randn(4, 2))
    except Exception as err:
        raise _FailedAfter(f"{time.monotonic() - start:.3f}") from err


def _seconds(failure: RankFailure) -> float:
    found = re.search(r"_FailedAfter: ([0-9.]+)\s*$", failure.error)
    assert found, failure.error
    return float(found.group(1))


def _dead_rank_worker(rank: int, world: int) -> None:
    group = _short_timeout_group(5)
    if rank == 1:
        os._exit(3)  # dies without a word, as a crashed or OOM-killed process would
    _failing_sync_bn(group)


def _stalled_rank_worker(rank: int, world: int) -> None:
    group = _short_timeout_group(2)
    if rank == 1:
        time.sleep(60)  # alive but never reaches the collective
    _failing_sync_bn(group)


def test_dead_rank_stops_the_others_with_a_message(private_tmp: Path) -> None:
    with pytest.raises(SpawnError) as info:
        spawn(_dead_rank_worker, 2, timeout_s=30, deadline_s=120, grace_s=30)
    failures = {f.rank: f for f in info.value.failures}
    assert failures[1].exitcode == 3 and not failures[1].killed
    # Rank 0 stopped by itself with bnlab's error, within the group's 5 s timeout.
    assert not failures[0].killed
    assert "bnlab.norm.layers.sync.DistributedError: SyncBatchNorm: all-gather" in failures[0].error
    assert _seconds(failures[0]) < 5 + 3


def test_stalled_rank_times_out(private_tmp: Path) -> None:
    with pytest.raises(SpawnError) as info:
        spawn(_stalled_rank_worker, 2, timeout_s=30, deadline_s=120, grace_s=0.5)
    failures = {f.rank: f for f in info.value.failures}
    assert failures[1].killed  # the stalled rank is ended by the launcher, not left behind
    assert "rank 1 did not finish in time and was killed" in str(info.value)
    assert not failures[0].killed
    assert "bnlab.norm.layers.sync.DistributedError: SyncBatchNorm: all-gather" in failures[0].error
    assert "timed out" in failures[0].error.lower()
    assert 2 - 0.5 <= _seconds(failures[0]) < 2 + 3  # the group's 2 s timeout, not a hang
