"""Shared pytest configuration: float64-friendly determinism and the ``slow`` marker."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _deterministic() -> None:
    torch.manual_seed(0)
