"""Experiment ``mlp-solver`` (seed 002): the Model/Solver split, a 784-32-32-10 ReLU MLP with
and without batch norm trained side by side on the same batches (Adam 0.01, batch 32, 10
epochs), per-epoch train/validation loss and accuracy, and the final test comparison.

Parts, importing only downward: ``config`` (config, ``quick``, variants, cost estimate),
``run`` (``Model``, ``Solver``, ``run``), ``report`` (claims, metrics, curves); ``SPEC`` here.
"""

from __future__ import annotations

from typing import Any

from bnlab.experiments.base import ExperimentSpec, load_mnist_data
from bnlab.experiments.mlp_solver.config import VARIANTS, MLPSolverConfig, cost_s, quick
from bnlab.experiments.mlp_solver.report import CLAIMS, CURVES, METRICS, NOTES
from bnlab.experiments.mlp_solver.report import REFERENCE_FILE as REFERENCE_FILE
from bnlab.experiments.mlp_solver.run import Model, Solver, run

__all__ = ["SPEC", "MLPSolverConfig", "Model", "Solver", "run"]

SPEC: ExperimentSpec[MLPSolverConfig, Any] = ExperimentSpec(
    name="mlp-solver",
    title="a Model/Solver MLP with and without batch norm (seed 002)",
    seed_file="002_c1fa4b20844069e9.txt",
    summary=(
        "MNIST 784-32-32-10 ReLU, built by a Model class (tf.layers.dense, optional "
        "tf.layers.batch_normalization) and trained by a Solver (train step, batched "
        "evaluation); softmax cross-entropy; Adam 0.01; batch 32; 10 epochs of 55,000 // 32 "
        "steps, both networks on the same batches; training and validation loss and accuracy "
        "after every epoch; final test loss and accuracy."
    ),
    variants=VARIANTS,
    load_data=load_mnist_data,
    run=run,
    quick=quick,
    metrics=METRICS,
    curves=CURVES,
    claims=CLAIMS,
    notes=NOTES,
    cost_s=cost_s,
)
