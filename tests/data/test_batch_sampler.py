"""Batching: TF ``next_batch`` semantics (epoch-crossing batches), seeding, exact resume from
a state dict, and the sequential evaluator.
"""

from __future__ import annotations

import json

import pytest
import torch

from bnlab.data.batching import EpochSampler, EvalBatches, TrainBatches
from bnlab.data.datasets import Split


def _split(n: int) -> Split:
    images = torch.arange(n, dtype=torch.float32).reshape(n, 1, 1, 1)
    return Split(images, torch.arange(n))


def test_epoch_crossing_batch_takes_rest_then_next_epoch_start() -> None:
    s = EpochSampler(10, seed=3)
    p0, p1 = s.permutation(0), s.permutation(1)
    assert sorted(p0.tolist()) == list(range(10)) and not torch.equal(p0, p1)
    assert s.next_indices(4).tolist() == p0[:4].tolist()
    assert s.next_indices(4).tolist() == p0[4:8].tolist()
    crossing = s.next_indices(4)
    assert crossing.tolist() == p0[8:].tolist() + p1[:2].tolist()
    assert s.epochs_completed == 1 and s.index_in_epoch == 2
    assert s.next_indices(4).tolist() == p1[2:6].tolist()


def test_exact_epoch_end_then_empty_rest() -> None:
    # As TF: a batch ending exactly at n leaves position n; the next call starts epoch 1.
    s = EpochSampler(6, shuffle=False)
    assert s.next_indices(3).tolist() == [0, 1, 2]
    assert s.next_indices(3).tolist() == [3, 4, 5]
    assert s.epochs_completed == 0
    assert s.next_indices(3).tolist() == [0, 1, 2]
    assert s.epochs_completed == 1


def test_every_example_once_per_epoch() -> None:
    s = EpochSampler(55, seed=1)
    seen = torch.cat([s.next_indices(5) for _ in range(11)])
    assert sorted(seen.tolist()) == list(range(55))


def test_same_seed_same_batches_different_seed_different() -> None:
    a = TrainBatches(_split(50), 8, seed=7)
    b = TrainBatches(_split(50), 8, seed=7)
    c = TrainBatches(_split(50), 8, seed=8)
    ya = [a.next_batch()[1] for _ in range(10)]
    assert all(torch.equal(x, b.next_batch()[1]) for x in ya)
    assert not all(torch.equal(x, c.next_batch()[1]) for x in ya)


def test_batches_pair_images_with_their_labels() -> None:
    x, y = TrainBatches(_split(20), 6, seed=0).next_batch()
    assert x.shape == (6, 1, 1, 1)
    assert x.flatten().long().tolist() == y.tolist()


def test_resume_from_state_dict_continues_exactly() -> None:
    ref = TrainBatches(_split(23), 5, seed=11)
    for _ in range(7):  # crosses an epoch boundary
        ref.next_batch()
    state = json.loads(json.dumps(ref.state_dict()))  # must survive JSON
    expected = [ref.next_batch()[1] for _ in range(9)]
    resumed = TrainBatches(_split(23), 5, seed=0)
    resumed.load_state_dict(state)
    got = [resumed.next_batch()[1] for _ in range(9)]
    assert all(torch.equal(e, g) for e, g in zip(expected, got, strict=True))
    assert resumed.epochs_completed == ref.epochs_completed


def test_state_for_another_data_set_is_rejected() -> None:
    state = TrainBatches(_split(23), 5).state_dict()
    with pytest.raises(ValueError, match="23 examples, this sampler has 24"):
        TrainBatches(_split(24), 5).load_state_dict(state)
    with pytest.raises(ValueError, match="batch_size 5"):
        TrainBatches(_split(23), 4).load_state_dict(state)
    with pytest.raises(ValueError, match="lacks"):
        EpochSampler(3).load_state_dict({"seed": 0})


def test_batch_size_bounds() -> None:
    with pytest.raises(ValueError, match=r"\[1, 4\], got 5"):
        TrainBatches(_split(4), 5)
    with pytest.raises(ValueError, match="positive"):
        EpochSampler(0)
    with pytest.raises(ValueError, match="positive"):
        EvalBatches(_split(4), 0)


def test_eval_batches_cover_split_in_order() -> None:
    batches = EvalBatches(_split(10), 4)
    assert len(batches) == 3
    labels = [y.tolist() for _, y in batches]
    assert labels == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert len(EvalBatches(_split(8), 4)) == 2
