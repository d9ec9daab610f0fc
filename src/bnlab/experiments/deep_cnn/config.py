"""deep-cnn's config: the frozen :class:`DeepCNNConfig`, ``quick``, the variants, and a
rough run time (:func:`cost_s`) for the scheduler.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from bnlab.experiments.base import Variant, require
from bnlab.models.deep_cnn import PLACEMENTS
from bnlab.models.init import INITIALIZERS
from bnlab.norm import available_norms

__all__ = [
    "BN_VARIANTS",
    "PLACEMENT_VARIANTS",
    "VARIANTS",
    "DeepCNNConfig",
    "cost_s",
    "quick",
]


@dataclass(frozen=True)
class DeepCNNConfig:
    """One run of seed 000. Defaults are the seed's sizes with no batch norm."""

    seed: int = 0  # fixes the initial weights and the batch order (the CLI sets 0..K-1)
    # -- network (the seed's conv_layer / fully_connected) --
    num_conv_layers: int = 19  # layer_i in range(1, 20)
    filters_per_depth: int = 4  # conv layer i has 4*i filters
    dense_units: int = 100  # the one hidden dense layer
    norm: str = "none"  # bnlab.norm registry name: "none", "bn" (bnlab), "torch-bn", ...
    placement: str = "bn-relu"  # BN position in conv layers (bnlab.models.PLACEMENTS)
    lowlevel: bool = False  # the tf.nn version: explicit gamma/beta/population tensors
    conv_init: str = "glorot-uniform"  # tf.layers default; "truncated-normal" for tf.nn
    conv_init_std: float = 0.05  # the tf.nn version's tf.truncated_normal stddev
    bn_eps: float = 1e-3  # TF's batch-norm epsilon (PyTorch's default is 1e-5)
    bn_decay: float = 0.99  # TF decay = weight of the old value; PyTorch momentum 0.01
    # -- training (the seed's train()) --
    learning_rate: float = 0.002  # tf.train.AdamOptimizer(0.002)
    adam_eps: float = 1e-8  # TF1 AdamOptimizer default epsilon
    batch_size: int = 64  # images per training batch
    num_batches: int = 800  # optimizer steps
    # -- evaluation (the seed's schedule, in batch indices batch_i = 0..799) --
    validate_every: int = 100  # full validation set when batch_i % 100 == 0
    train_acc_every: int = 25  # the training batch, inference mode, elif batch_i % 25 == 0
    single_image_count: int = 100  # first N test images fed one at a time at the end
    eval_batch_size: int = 1000  # chunk size for evaluation (memory only; same result)
    # -- engine (speed only: the same model and update rule; docs/performance.md) --
    channels_last: bool = True  # NHWC weights and activations: oneDNN's faster conv layout
    fused_adam: bool = True  # torch.optim.Adam(fused=True): one kernel for all parameters
    num_threads: int = 1  # intra-op threads, fixed so that a run's numbers never depend on
    # how many runs share the machine (bnlab reproduce --jobs)
    checkpoint_every: int = 100  # steps between checkpoints (resume point)
    log_every: int = 25  # steps between metric writes (one host sync per chunk)

    def __post_init__(self) -> None:
        # Every field, so a bad value stops `--set` before the data load, not the model
        # builder or the optimizer after it; the eps, interval, batch-size and thread
        # fields are also checked by name in base.check_config.
        require(
            self,
            at_least_one=(
                "num_conv_layers",
                "filters_per_depth",
                "dense_units",
                "batch_size",
                "num_batches",
                "validate_every",
                "train_acc_every",
                "single_image_count",
                "eval_batch_size",
                "num_threads",
                "checkpoint_every",
                "log_every",
            ),
            positive=("conv_init_std", "bn_eps", "learning_rate", "adam_eps"),
            fraction=("bn_decay",),
            choices={
                "norm": tuple(available_norms()),
                "placement": tuple(PLACEMENTS),
                "conv_init": INITIALIZERS,
            },
        )
        if self.lowlevel and self.norm != "bn":
            raise ValueError(
                f"DeepCNNConfig.lowlevel builds its own batch norm and needs norm 'bn'; got "
                f"{self.norm!r}"
            )


def quick(config: DeepCNNConfig) -> DeepCNNConfig:
    """Tiny step counts for ``--quick``: the full network, 12 batches of 32, 10 single images."""
    return dataclasses.replace(
        config,
        batch_size=32,
        num_batches=12,
        validate_every=5,
        train_acc_every=2,
        single_image_count=10,
        checkpoint_every=5,
        log_every=5,
    )


# -- variants ---------------------------------------------------------------------------
_BASE = DeepCNNConfig()
_BN = dataclasses.replace(_BASE, norm="bn", placement="bn-relu")
VARIANTS: dict[str, Variant[DeepCNNConfig]] = {
    "no-bn": Variant(_BASE, "no batch norm: conv (bias) + ReLU, dense (bias) + ReLU"),
    "bn": Variant(_BN, "tf.layers batch norm: conv (no bias), BN, ReLU; dense (no bias), BN, ReLU"),
    "bn-lowlevel": Variant(
        dataclasses.replace(_BN, lowlevel=True, conv_init="truncated-normal"),
        "tf.nn batch norm: explicit gamma, beta, population mean/variance; "
        "truncated-normal(0.05) conv weights",
    ),
    "bias-bn-relu": Variant(
        dataclasses.replace(_BN, placement="bias-bn-relu"), "alternate: conv with bias, BN, ReLU"
    ),
    "bias-relu-bn": Variant(
        dataclasses.replace(_BN, placement="bias-relu-bn"),
        "alternate: conv with bias, ReLU, then BN",
    ),
    "relu-bn": Variant(
        dataclasses.replace(_BN, placement="relu-bn"), "alternate: conv without bias, ReLU, then BN"
    ),
}
BN_VARIANTS = ("bn", "bn-lowlevel", "bias-bn-relu", "bias-relu-bn", "relu-bn")
PLACEMENT_VARIANTS = ("bias-bn-relu", "bias-relu-bn", "relu-bn")


def cost_s(config: DeepCNNConfig) -> float:
    """Rough seconds of one run on one thread of a quiet 2-core machine (measured per step:
    0.024 s without BN, 0.032 s with module BN, 0.045 s low-level; 0.85 s per full
    validation pass; 2 s fixed). An estimate only used for the scheduler's order."""
    step_s = 0.024 if config.norm == "none" else 0.045 if config.lowlevel else 0.032
    validations = -(-config.num_batches // config.validate_every) + 1  # every(n), and the end
    return 2.0 + step_s * config.num_batches + 0.85 * validations
