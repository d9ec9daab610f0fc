"""mlp-solver's config: the frozen :class:`MLPSolverConfig`, ``quick``, the variants, the
per-epoch record tag that training writes and the report reads, and a rough run time
(:func:`cost_s`) for the scheduler.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from bnlab.experiments.base import Variant, require
from bnlab.models.mlp import ACTIVATIONS

__all__ = ["EPOCH_TAG", "VARIANTS", "MLPSolverConfig", "cost_s", "quick"]

#: Per-epoch record tag: train and validation loss and accuracy.
EPOCH_TAG = "epoch"


@dataclass(frozen=True)
class MLPSolverConfig:
    """One run of seed 002 (one of its two networks). Defaults: the seed's BN network."""

    seed: int = 0  # fixes the initial weights and the batch order (both nets see the same)
    # -- network (the seed's Model) --
    use_batchnorm: bool = True  # Model(..., use_batchnorm=True) / False
    hidden_dims: tuple[int, ...] = (32, 32)  # hidden_dims=[32, 32]
    activation: str = "relu"  # activation_fn=tf.nn.relu
    bn_eps: float = 1e-3  # tf.layers.batch_normalization default
    bn_decay: float = 0.99  # its momentum (TF decay), PyTorch momentum 0.01
    # -- training --
    learning_rate: float = 0.01  # tf.train.AdamOptimizer(0.01)
    adam_eps: float = 1e-8  # TF1 AdamOptimizer default
    batch_size: int = 32  # batch_size = 32
    epochs: int = 10  # epoch_n = 10, each of N // batch_size steps (N = 55,000: 1,718)
    train_eval_batch_size: int = 32  # the seed evaluates the training set in batches of 32
    # -- engine (speed only) --
    fused_adam: bool = True  # Adam(fused=True): one kernel per step, the same update rule
    num_threads: int = 1  # intra-op threads; one is faster for these tiny steps
    log_every: int = 859  # steps between metric writes (half an epoch of the real data)

    def __post_init__(self) -> None:
        require(
            self,
            at_least_one=(
                "batch_size",
                "epochs",
                "train_eval_batch_size",
                "num_threads",
                "log_every",
            ),
            positive=("bn_eps", "learning_rate", "adam_eps"),
            fraction=("bn_decay",),
            choices={"activation": tuple(ACTIVATIONS)},
        )
        if not self.hidden_dims or not all(
            isinstance(w, int) and not isinstance(w, bool) and w >= 1 for w in self.hidden_dims
        ):
            raise ValueError(
                f"MLPSolverConfig.hidden_dims must be widths >= 1; got {self.hidden_dims}"
            )


def quick(config: MLPSolverConfig) -> MLPSolverConfig:
    """Tiny sizes for ``--quick``: 2 epochs."""
    return dataclasses.replace(config, epochs=2, log_every=50)


# -- variants ---------------------------------------------------------------------------
VARIANTS: dict[str, Variant[MLPSolverConfig]] = {
    "bn": Variant(
        MLPSolverConfig(), "Model('batchnorm'): dense, tf.layers batch norm, ReLU (x2), dense 10"
    ),
    "no-bn": Variant(
        MLPSolverConfig(use_batchnorm=False), "Model('no_norm'): dense, ReLU (x2), dense 10"
    ),
}


def cost_s(config: MLPSolverConfig) -> float:
    """Rough seconds of one run on one thread of a quiet 2-core machine, for MNIST's 55,000
    training images (measured from ``--quick`` runs: 0.0011 s per step with BN, 0.0006 s
    without; 0.2 s per epoch-end evaluation of the training set). An estimate only used for
    the scheduler's order."""
    step_s = 0.0011 if config.use_batchnorm else 0.0006
    steps_per_epoch = 55_000 // config.batch_size
    return 0.5 + config.epochs * (step_s * steps_per_epoch + 0.2)
