"""Experiment ``deep-cnn`` (seed 000): batch norm makes a 20-layer CNN trainable in 800 batches.

The seed trains the same 19-conv + 2-dense network on MNIST without batch norm, with
``tf.layers.batch_normalization``, with a ``tf.nn`` low-level batch norm, and with three
alternate placements, and checks the first 100 test images one at a time in inference mode.

Parts, importing only downward: ``config`` (config, ``quick``, variants, cost estimate),
``run`` (network, optimizer, loss, ``run``), ``report`` (claims, curves, blocks); ``SPEC`` here.
"""

from __future__ import annotations

from typing import Any

from bnlab.experiments.base import ExperimentSpec, load_mnist_data
from bnlab.experiments.deep_cnn.config import VARIANTS, DeepCNNConfig, cost_s, quick
from bnlab.experiments.deep_cnn.report import CLAIMS, CURVES, METRICS, NOTES, extra_blocks
from bnlab.experiments.deep_cnn.report import seed_log as seed_log
from bnlab.experiments.deep_cnn.run import build_model, make_optimizer, run
from bnlab.experiments.deep_cnn.run import sigmoid_cross_entropy as sigmoid_cross_entropy

__all__ = ["SPEC", "DeepCNNConfig", "build_model", "make_optimizer", "run"]

SPEC: ExperimentSpec[DeepCNNConfig, Any] = ExperimentSpec(
    name="deep-cnn",
    title="batch norm makes a 20-layer CNN trainable (seed 000)",
    seed_file="000_b963a2cd37855486.txt",
    summary=(
        "MNIST 28x28x1 through 19 conv layers (3x3, TF 'same', 4·i filters, stride 2 when "
        "i % 3 == 0), dense 100, dense 10; mean sigmoid cross-entropy on one-hot labels; Adam "
        "0.002; 800 batches of 64. Validation every 100 batches, the training batch every 25, "
        "final validation and test accuracy, and the first 100 test images one at a time."
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
)
