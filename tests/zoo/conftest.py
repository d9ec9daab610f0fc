"""Fixtures of the model-zoo suite: ``case``, one zoo network per parameter (indirect), built
once per test module; pytest groups a network's tests together, so one network at a time
is held in memory with its cached float64 runs."""

from __future__ import annotations

import pytest
from zoo_cases import ZooCase

from bnlab.bench import zoo


@pytest.fixture(scope="module")
def case(request: pytest.FixtureRequest) -> ZooCase:
    return ZooCase(zoo.zoo_model(request.param))
