"""Experiment ``cifar-convnet`` (seed 004): the Keras ConvNet on CIFAR-10 with batch norm
before the activation and the variant with batch norm after it; Keras-style model summary
(553,850 parameters: 553,626 trainable, 224 not), example images, per-epoch curves.

Parts, importing only downward: ``config`` (config, ``quick``, variants, cost estimate),
``model`` (network and summary), then ``run`` (data, ``run``) and ``report`` (claims,
curves, blocks); ``SPEC`` here.
"""

from __future__ import annotations

from bnlab.experiments.base import ExperimentSpec
from bnlab.experiments.cifar_convnet.config import VARIANTS, CifarConvNetConfig, cost_s, quick
from bnlab.experiments.cifar_convnet.model import build_model, model_summary
from bnlab.experiments.cifar_convnet.report import CLAIMS, CURVES, METRICS, NOTES, extra_blocks
from bnlab.experiments.cifar_convnet.run import CifarData, load_data, normalize_global, run

__all__ = [
    "SPEC",
    "CifarConvNetConfig",
    "CifarData",
    "build_model",
    "load_data",
    "model_summary",
    "normalize_global",
    "run",
]

SPEC: ExperimentSpec[CifarConvNetConfig, CifarData] = ExperimentSpec(
    name="cifar-convnet",
    title="a Keras ConvNet on CIFAR-10, BN before or after the activation (seed 004)",
    seed_file="004_62ac979095509d64.txt",
    summary=(
        "CIFAR-10 normalized by the global training mean and std; [conv 3x3 same, no bias "
        "(16, 32, 64) -> BN -> ELU -> max-pool 2] x3, dropout 0.3, dense 512 ELU, dropout "
        "0.3, dense 10 softmax; Adam (Keras defaults); batch 250; 10 epochs, validated on "
        "the test set. Variant: BN after the activation."
    ),
    variants=VARIANTS,
    load_data=load_data,
    run=run,
    quick=quick,
    metrics=METRICS,
    curves=CURVES,
    claims=CLAIMS,
    extra_blocks=extra_blocks,
    notes=NOTES,
    cost_s=cost_s,
)
