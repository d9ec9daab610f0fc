"""The ``>>>`` examples in bnlab.data's docstrings run and print what they claim."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "bnlab.data.batching",
    "bnlab.data.cache",
    "bnlab.data.datasets",
    "bnlab.data.idx",
    "bnlab.data.images",
    "bnlab.data.sources",
    "bnlab.data.synthetic",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
