"""The experiment registry: one table feeds ``bnlab list``, ``run``, ``reproduce`` and ``report``.

Built-in experiments are listed by module path and imported on first use; each module
defines ``SPEC`` (an :class:`~bnlab.experiments.base.ExperimentSpec`). To add one, write
a module or package ``bnlab/experiments/<name>`` and add a line to :data:`BUILTIN`
(``docs/experiments.md``).
"""

from __future__ import annotations

import importlib
from typing import Any

from bnlab.errors import UnknownNameError
from bnlab.experiments.base import ExperimentSpec

__all__ = [
    "BUILTIN",
    "all_experiments",
    "experiment_names",
    "get_experiment",
    "importable_by_name",
    "register_experiment",
]

#: name -> module defining ``SPEC``, in the order ``bnlab reproduce`` runs them.
BUILTIN: dict[str, str] = {
    "deep-cnn": "bnlab.experiments.deep_cnn",
    "sigmoid-mlp": "bnlab.experiments.sigmoid_mlp",
    "mlp-solver": "bnlab.experiments.mlp_solver",
    "image-fcn": "bnlab.experiments.image_fcn",
    "cifar-convnet": "bnlab.experiments.cifar_convnet",
    "bn-batch-size": "bnlab.experiments.bn_batch_size",
    "bn-learning-rate": "bnlab.experiments.bn_learning_rate",
    "renorm-small-batch": "bnlab.experiments.renorm_small_batch",
    "precise-bn": "bnlab.experiments.precise_bn",
}

_REGISTERED: dict[str, ExperimentSpec[Any, Any]] = {}


def register_experiment(spec: ExperimentSpec[Any, Any], *, replace: bool = False) -> None:
    """Add ``spec`` under ``spec.name`` (plug-ins and tests; built-ins use :data:`BUILTIN`).

    Raises:
        ValueError: the name is taken and ``replace`` is false.
    """
    if (spec.name in _REGISTERED or spec.name in BUILTIN) and not replace:
        raise ValueError(f"experiment {spec.name!r} is already registered; pass replace=True")
    _REGISTERED[spec.name] = spec


def importable_by_name(name: str) -> bool:
    """Whether a fresh process finds experiment ``name`` by importing bnlab: a built-in not
    replaced at run time (a spec registered in this process exists only here)."""
    return name in BUILTIN and name not in _REGISTERED


def experiment_names() -> tuple[str, ...]:
    """Every experiment name: built-ins in run order, then registered ones."""
    return tuple(BUILTIN) + tuple(n for n in _REGISTERED if n not in BUILTIN)


def get_experiment(name: str) -> ExperimentSpec[Any, Any]:
    """The spec of experiment ``name``.

    Raises:
        UnknownNameError: no such experiment (the message lists the valid names).
        TypeError: the module does not define an ``ExperimentSpec`` called ``SPEC``.
    """
    if name in _REGISTERED:
        return _REGISTERED[name]
    if name not in BUILTIN:
        raise UnknownNameError("experiment", name, experiment_names())
    module = importlib.import_module(BUILTIN[name])
    spec = getattr(module, "SPEC", None)
    if not isinstance(spec, ExperimentSpec) or spec.name != name:
        raise TypeError(f"{BUILTIN[name]} must define SPEC, an ExperimentSpec named {name!r}")
    return spec


def all_experiments() -> dict[str, ExperimentSpec[Any, Any]]:
    """Every experiment's spec, by name, in :func:`experiment_names` order."""
    return {name: get_experiment(name) for name in experiment_names()}
