"""The ``>>>`` examples in the engine's modules (train, models, report, experiments) run."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "bnlab.train.io",
    "bnlab.train.metrics",
    "bnlab.train.rundir",
    "bnlab.train.evaluate",
    "bnlab.train.loop",
    "bnlab.train.progress",
    "bnlab.models.init",
    "bnlab.models.deep_cnn",
    "bnlab.report.stats",
    "bnlab.report.claims",
    "bnlab.report.render",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0, f"{name} has no examples"
    assert result.failed == 0
