"""cifar-convnet's config: the frozen :class:`CifarConvNetConfig`, ``quick``, the variants,
the record tag and artefact names that training writes and the report reads, and a rough
run time (:func:`cost_s`) for the scheduler.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from bnlab.experiments.base import Variant, require
from bnlab.norm import available_norms

__all__ = [
    "EPOCH_TAG",
    "EXAMPLES_PNG",
    "SUMMARY_JSON",
    "SUMMARY_TXT",
    "VARIANTS",
    "CifarConvNetConfig",
    "cost_s",
    "quick",
]

EPOCH_TAG = "epoch"
SUMMARY_TXT, SUMMARY_JSON, EXAMPLES_PNG = "model_summary.txt", "model_summary.json", "examples.png"


@dataclass(frozen=True)
class CifarConvNetConfig:
    """One run of seed 004. Defaults: the seed's first model (BN before the activation)."""

    seed: int = 0  # fixes the initial weights, the shuffling and the dropout masks
    # -- network (the seed's tf.keras.Sequential) --
    placement: str = "before"  # "before": conv, BN, ELU; "after": conv with ELU, then BN
    filters: tuple[int, ...] = (16, 32, 64)  # Conv2D filters of the three blocks
    dense_units: int = 512  # Dense(512, activation='elu')
    dropout: float = 0.3  # both Dropout(0.3) layers
    norm: str = "bn"  # bnlab.norm registry name for BatchNormalization()
    bn_eps: float = 1e-3  # Keras BatchNormalization epsilon
    bn_decay: float = 0.99  # Keras BatchNormalization momentum (TF decay)
    # -- training: model.compile(optimizer='adam'), model.fit(batch_size=250, epochs=10) --
    learning_rate: float = 0.001  # Keras Adam default
    adam_eps: float = 1e-7  # Keras Adam default epsilon
    batch_size: int = 250
    epochs: int = 10
    eval_batch_size: int = 250  # model.evaluate(..., batch_size=250)
    example_images: int = 6  # the seed shows the first 6 training images
    # -- engine --
    num_threads: int = 2  # intra-op threads

    def __post_init__(self) -> None:
        require(
            self,
            at_least_one=("dense_units", "batch_size", "epochs", "eval_batch_size", "num_threads"),
            at_least_zero=("example_images",),
            positive=("bn_eps", "learning_rate", "adam_eps"),
            fraction=("bn_decay",),
            choices={"norm": tuple(available_norms())},
        )
        if not self.filters or not all(
            isinstance(w, int) and not isinstance(w, bool) and w >= 1 for w in self.filters
        ):
            raise ValueError(f"CifarConvNetConfig.filters must be counts >= 1; got {self.filters}")
        if self.placement not in ("before", "after"):
            raise ValueError(
                f"CifarConvNetConfig.placement must be 'before' or 'after'; got {self.placement!r}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"CifarConvNetConfig.dropout must lie in [0, 1); got {self.dropout}")


def quick(config: CifarConvNetConfig) -> CifarConvNetConfig:
    """Tiny sizes for ``--quick``: 2 epochs of batches of 50 (use small CIFAR-format data)."""
    return dataclasses.replace(config, batch_size=50, epochs=2, eval_batch_size=100)


# -- variants ---------------------------------------------------------------------------
_BASE = CifarConvNetConfig()
VARIANTS: dict[str, Variant[CifarConvNetConfig]] = {
    "bn-before": Variant(
        _BASE, "BN before the activation: conv (no bias), BN, ELU, max-pool (x3); dense 512"
    ),
    "bn-after": Variant(
        dataclasses.replace(_BASE, placement="after"),
        "BN after the activation: conv (no bias) with ELU, BN, max-pool (x3); dense 512",
    ),
}


def cost_s(config: CifarConvNetConfig) -> float:
    """Rough seconds of one run on its 2 threads of a quiet 2-core machine, for CIFAR-10's
    50,000 training and 10,000 test images (measured: 0.32 ms per training image, 0.08 s a
    step of 250; 0.14 ms per image evaluated; 3 s for the data, summary and images). An
    estimate only used for the scheduler's order."""
    per_epoch = 50_000 * 0.32e-3 + 10_000 * 0.14e-3  # training, then the test set
    return 3.0 + config.epochs * per_epoch + 60_000 * 0.14e-3  # final train and test
