"""Shared pytest configuration: seeded torch and one intra-op thread for the suite.

The CI machine has 2 cores; tests use small tensors, for which torch's thread pool costs
more than it saves (and several test processes may share the cores), so the suite runs
torch on one thread. Tests that measure threading set it themselves.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _deterministic() -> None:
    torch.manual_seed(0)
