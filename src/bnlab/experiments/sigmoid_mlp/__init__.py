"""Experiment ``sigmoid-mlp`` (seed 001, Ioffe & Szegedy Fig. 1): a 784-100-100-10 sigmoid MLP
with and without batch norm from identical N(0, 1) weights on identical batches; then the
single-example pitfall of batch statistics at inference, and its fix with population
statistics (EMA), a saved checkpoint and a network rebuilt in inference mode.

Parts, importing only downward: ``config`` (config, ``quick``, variants, cost estimate),
``run`` (network, loss, probe statistics, ``run``), ``report`` (claims, curves, figures);
``SPEC`` here.
"""

from __future__ import annotations

from typing import Any

from bnlab.experiments.base import ExperimentSpec, load_mnist_data
from bnlab.experiments.sigmoid_mlp.config import (
    VARIANTS,
    SigmoidMLPConfig,
    cost_s,
    group_cost_s,
    quick,
)
from bnlab.experiments.sigmoid_mlp.report import CLAIMS, CURVES, METRICS, NOTES, extra_blocks
from bnlab.experiments.sigmoid_mlp.report import REFERENCE_FILE as REFERENCE_FILE
from bnlab.experiments.sigmoid_mlp.report import input_noise as input_noise
from bnlab.experiments.sigmoid_mlp.run import (
    build_model,
    probe_statistics,
    run,
    run_group,
    summed_cross_entropy,
)

__all__ = [
    "SPEC",
    "SigmoidMLPConfig",
    "build_model",
    "probe_statistics",
    "run",
    "summed_cross_entropy",
]


SPEC: ExperimentSpec[SigmoidMLPConfig, Any] = ExperimentSpec(
    name="sigmoid-mlp",
    title="batch norm on a sigmoid MLP, and population statistics at inference (seed 001)",
    seed_file="001_2a04fecd41209ff2.txt",
    summary=(
        "MNIST 784-100-100-10 with sigmoid hidden layers, identical predetermined N(0, 1) "
        "initial weights for every variant of a seed; summed softmax cross-entropy; SGD 0.01; "
        "batch 60; 40,000 steps on identical batches, with and without BN; test accuracy and "
        "the layer-2 sigmoid inputs every 50 steps. Then the first 100 test images one at a "
        "time with batch statistics, and the fixed network (population statistics by EMA, "
        "decay 0.999) trained 10,000 steps, saved, rebuilt in inference mode and restored."
    ),
    variants=VARIANTS,
    load_data=load_mnist_data,
    run=run,
    quick=quick,
    metrics=METRICS,
    curves=CURVES,
    claims=CLAIMS,
    extra_blocks=extra_blocks,
    notes=NOTES,
    cost_s=cost_s,
    run_group=run_group,
    group_cost_s=group_cost_s,
)
