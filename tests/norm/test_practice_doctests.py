"""The ``>>>`` examples in the batch-norm-in-practice modules run and print what they claim."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "bnlab.norm.doctor",
    "bnlab.norm.frozen",
    "bnlab.norm.ghost",
    "bnlab.norm.group",
    "bnlab.norm.precise",
    "bnlab.norm.recurrent",
    "bnlab.norm.renorm",
    "bnlab.norm.safe",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
