"""One module or package per experiment: a frozen config, variants and ``run(config, data, ctx)``.

:class:`ExperimentSpec` describes an experiment, :mod:`~bnlab.experiments.registry` lists
them, :func:`run_experiment` runs one into run directories. See ``docs/experiments.md``.
"""

from __future__ import annotations

from bnlab.experiments.base import ExperimentSpec, RunContext, Variant, config_to_dict
from bnlab.experiments.registry import (
    all_experiments,
    experiment_names,
    get_experiment,
    register_experiment,
)
from bnlab.experiments.runner import (
    ExperimentNotRunError,
    RunOutcome,
    run_experiment,
    run_one,
    seed_list,
)

__all__ = [
    "ExperimentNotRunError",
    "ExperimentSpec",
    "RunContext",
    "RunOutcome",
    "Variant",
    "all_experiments",
    "config_to_dict",
    "experiment_names",
    "get_experiment",
    "register_experiment",
    "run_experiment",
    "run_one",
    "seed_list",
]
