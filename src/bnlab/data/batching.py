"""In-memory batching by index arithmetic: a seeded sampler with TensorFlow's ``next_batch``
semantics that can be checkpointed and resumed exactly, and a sequential evaluator.
No DataLoader, no worker processes: a batch is ``index_select`` on tensors already in memory.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from bnlab.data.datasets import Split
from bnlab.data.errors import DataError


class BatchSizeError(DataError, ValueError):
    """A batch larger than its split (or empty): a batch never repeats an example."""


class EpochSampler:
    """Indices of TensorFlow's ``DataSet.next_batch``: shuffled epochs, and a batch that
    crosses an epoch boundary takes the rest of the epoch plus the start of the next one.

    Epoch ``e`` visits ``permutation(e)`` in order, where ``permutation(e)`` is a function of
    ``(seed, e)`` only (numpy ``PCG64`` seeded with ``SeedSequence([seed, e])``), so the whole
    index stream is fixed by the seed and the state is just ``(epoch, position)``.

    Args:
        num_examples: size of the data set ``n`` (> 0).
        seed: fixes every epoch's order.
        shuffle: if false, every epoch is ``0 .. n-1`` in order.

    >>> s = EpochSampler(5, shuffle=False)
    >>> s.next_indices(3).tolist(), s.next_indices(3).tolist(), s.epochs_completed
    ([0, 1, 2], [3, 4, 0], 1)
    """

    def __init__(self, num_examples: int, *, seed: int = 0, shuffle: bool = True) -> None:
        if num_examples <= 0:
            raise ValueError(f"num_examples must be positive, got {num_examples}")
        self.num_examples = int(num_examples)
        self.seed = int(seed)
        self.shuffle = bool(shuffle)
        self._epoch = 0
        self._position = 0
        self._order: Tensor | None = None
        self._order_epoch = -1

    @property
    def epochs_completed(self) -> int:
        """Number of epochs fully consumed (TF's ``epochs_completed``)."""
        return self._epoch

    @property
    def index_in_epoch(self) -> int:
        """Position within the current epoch's order (TF's ``index_in_epoch``)."""
        return self._position

    def permutation(self, epoch: int) -> Tensor:
        """The order (int64 tensor of ``n`` indices) in which epoch ``epoch`` visits examples."""
        if not self.shuffle:
            return torch.arange(self.num_examples)
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([self.seed, epoch])))
        return torch.from_numpy(rng.permutation(self.num_examples).astype(np.int64))

    def _current_order(self) -> Tensor:
        if self._order is None or self._order_epoch != self._epoch:
            self._order = self.permutation(self._epoch)
            self._order_epoch = self._epoch
        return self._order

    def next_indices(self, batch_size: int) -> Tensor:
        """Return the next ``batch_size`` indices (int64) and advance.

        Raises:
            ValueError: ``batch_size`` not in ``[1, num_examples]`` (TF would return a short
                batch; a batch must never repeat an example within itself here).
        """
        if not 1 <= batch_size <= self.num_examples:
            raise ValueError(f"batch_size must lie in [1, {self.num_examples}], got {batch_size}")
        start = self._position
        if start + batch_size <= self.num_examples:
            self._position += batch_size
            return self._current_order()[start : start + batch_size]
        rest = self._current_order()[start:]
        self._epoch += 1
        self._position = batch_size - len(rest)
        return torch.cat([rest, self._current_order()[: self._position]])

    def state_dict(self) -> dict[str, int | bool]:
        """Everything needed to resume: JSON-serialisable ints (the orders are recomputed)."""
        return {
            "num_examples": self.num_examples,
            "seed": self.seed,
            "shuffle": self.shuffle,
            "epoch": self._epoch,
            "position": self._position,
        }

    def load_state_dict(self, state: Mapping[str, int | bool]) -> None:
        """Restore a :meth:`state_dict`; the next index stream continues exactly.

        Raises:
            ValueError: the state belongs to a data set of another size, or is malformed.
        """
        missing = {"num_examples", "seed", "shuffle", "epoch", "position"} - set(state)
        if missing:
            raise ValueError(f"sampler state lacks {sorted(missing)}; got keys {sorted(state)}")
        if int(state["num_examples"]) != self.num_examples:
            raise ValueError(
                f"sampler state is for {int(state['num_examples'])} examples, this sampler has "
                f"{self.num_examples}"
            )
        position = int(state["position"])
        if not 0 <= position <= self.num_examples or int(state["epoch"]) < 0:
            raise ValueError(
                f"sampler state out of range: epoch {state['epoch']}, position {position}"
            )
        self.seed = int(state["seed"])
        self.shuffle = bool(state["shuffle"])
        self._epoch = int(state["epoch"])
        self._position = position
        self._order = None


class TrainBatches:
    """Endless training batches of one split with TF ``next_batch`` semantics.

    Args:
        split: the in-memory split.
        batch_size: examples per batch.
        seed: fixes the shuffled order of every epoch (two nets given equal seeds see the
            same batches).
        shuffle: shuffle each epoch (default true, as TF).

    Shape:
        each batch is ``(images (B, C, H, W), labels (B,))``.

    >>> import torch
    >>> from bnlab.data.datasets import Split
    >>> split = Split(torch.zeros(10, 1, 2, 2), torch.arange(10))
    >>> batches = TrainBatches(split, 4, seed=0)
    >>> x, y = batches.next_batch()
    >>> tuple(x.shape), tuple(y.shape)
    ((4, 1, 2, 2), (4,))
    """

    def __init__(
        self, split: Split, batch_size: int, *, seed: int = 0, shuffle: bool = True
    ) -> None:
        if not 1 <= batch_size <= len(split):
            raise BatchSizeError(
                f"batch_size must lie in [1, {len(split)}], got {batch_size} (a batch holds "
                "distinct examples of the split); lower it with --set batch_size=N"
            )
        self.split = split
        self.batch_size = int(batch_size)
        self.sampler = EpochSampler(len(split), seed=seed, shuffle=shuffle)

    @property
    def epochs_completed(self) -> int:
        """Epochs fully consumed so far."""
        return self.sampler.epochs_completed

    def next_batch(self) -> tuple[Tensor, Tensor]:
        """The next ``(images, labels)`` batch."""
        idx = self.sampler.next_indices(self.batch_size)
        return self.split.images.index_select(0, idx), self.split.labels.index_select(0, idx)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        while True:
            yield self.next_batch()

    def state_dict(self) -> dict[str, int | bool]:
        """The sampler's state plus the batch size."""
        return {**self.sampler.state_dict(), "batch_size": self.batch_size}

    def load_state_dict(self, state: Mapping[str, int | bool]) -> None:
        """Resume from :meth:`state_dict`.

        Raises:
            ValueError: a different batch size or data set size.
        """
        if int(state.get("batch_size", self.batch_size)) != self.batch_size:
            raise ValueError(
                f"state has batch_size {state['batch_size']}, these batches use {self.batch_size}"
            )
        self.sampler.load_state_dict(state)


class EvalBatches:
    """A split in order, in batches of ``batch_size`` (the last one may be smaller).

    >>> import torch
    >>> from bnlab.data.datasets import Split
    >>> split = Split(torch.zeros(10, 1, 2, 2), torch.arange(10))
    >>> [len(y) for _, y in EvalBatches(split, 4)]
    [4, 4, 2]
    """

    def __init__(self, split: Split, batch_size: int) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.split = split
        self.batch_size = int(batch_size)

    def __len__(self) -> int:
        return -(-len(self.split) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        for start in range(0, len(self.split), self.batch_size):
            stop = start + self.batch_size
            yield self.split.images[start:stop], self.split.labels[start:stop]


class NonIIDBatches:
    """Training batches that each hold only ``classes_per_batch`` classes (non-i.i.d.).

    Every batch draws ``classes_per_batch`` distinct classes, then ``batch_size`` examples
    uniformly from those classes. Batch statistics then depend on which classes were
    drawn, the situation of Ioffe 2017, Sec. 4.2. Checkpointable like ``TrainBatches``.

    >>> split = Split(torch.zeros(40, 1, 2, 2), torch.arange(40) % 10)
    >>> x, y = NonIIDBatches(split, 8, classes_per_batch=2, seed=0).next_batch()
    >>> len(set(y.tolist())) <= 2, tuple(x.shape)
    (True, (8, 1, 2, 2))
    """

    def __init__(self, split: Split, batch_size: int, *, classes_per_batch: int, seed: int) -> None:
        self.split = split
        self.batch_size = int(batch_size)
        labels = split.labels
        self.classes = sorted(set(labels.tolist()))
        if not 1 <= classes_per_batch <= len(self.classes):
            raise ValueError(
                f"classes_per_batch must lie in [1, {len(self.classes)}]; got {classes_per_batch}"
            )
        self.classes_per_batch = classes_per_batch
        self.by_class = [torch.nonzero(labels == c).flatten() for c in self.classes]
        self.generator = torch.Generator().manual_seed(seed)

    def next_batch(self) -> tuple[Tensor, Tensor]:
        """The next ``(images, labels)`` batch."""
        g = self.generator
        picked = torch.randperm(len(self.classes), generator=g)[: self.classes_per_batch]
        pool = torch.cat([self.by_class[int(i)] for i in picked])
        idx = pool[torch.randint(len(pool), (self.batch_size,), generator=g)]
        return self.split.images.index_select(0, idx), self.split.labels.index_select(0, idx)

    def state_dict(self) -> dict[str, Any]:
        """The generator state (a uint8 tensor)."""
        return {"generator": self.generator.get_state(), "batch_size": self.batch_size}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume from :meth:`state_dict`."""
        self.generator.set_state(state["generator"])
