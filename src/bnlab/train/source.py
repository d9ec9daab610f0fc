"""The protocol of what the trainer draws batches from (the data-parallel sharder wraps one)."""

from __future__ import annotations

from typing import Any, Protocol

from torch import Tensor

__all__ = ["BatchSource"]


class BatchSource(Protocol):
    """What the trainer draws batches from: a seeded sampler whose state can be saved."""

    def next_batch(self) -> tuple[Tensor, Tensor]:
        """Return the next ``(inputs, targets)`` batch."""
        ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...
