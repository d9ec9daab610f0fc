"""cifar-convnet's network: the Keras ConvNet of a config and its Keras-style summary
(training builds it; the report counts its parameters when no run has finished).
"""

from __future__ import annotations

import torch

from bnlab.experiments.cifar_convnet.config import CifarConvNetConfig
from bnlab.models.cifar import LayerSummary, cifar_convnet, format_summary, summarize_model

__all__ = ["build_model", "model_summary", "parameter_totals"]


def build_model(config: CifarConvNetConfig, num_classes: int = 10) -> torch.nn.Sequential:
    """The network of ``config`` (initialized from the current torch RNG)."""
    return cifar_convnet(
        config.placement,
        filters=config.filters,
        dense_units=config.dense_units,
        num_classes=num_classes,
        dropout=config.dropout,
        norm=config.norm,
        bn_eps=config.bn_eps,
        bn_decay=config.bn_decay,
    )


def model_summary(config: CifarConvNetConfig) -> tuple[list[LayerSummary], str]:
    """The Keras-style summary of ``config``'s network: rows and text."""
    rows = summarize_model(build_model(config), (3, 32, 32))
    title = f'Model: "cifar-convnet, BN {config.placement} the activation"'
    return rows, format_summary(rows, title=title)


def parameter_totals(rows: list[LayerSummary]) -> tuple[int, int, int]:
    """``(total, trainable, non_trainable)`` parameter counts of a summary's rows."""
    trainable = sum(r.trainable for r in rows)
    frozen = sum(r.non_trainable for r in rows)
    return trainable + frozen, trainable, frozen
